"""Inverse problems (deblurring, MRI) built on deepinv physics."""
