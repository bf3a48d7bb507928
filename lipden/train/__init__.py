"""Training of denoisers on image patches, and publishing to weights/."""
