"""The denoiser, its checkpoints and the pretrained registry."""
