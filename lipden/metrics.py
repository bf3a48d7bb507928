"""Image quality: PSNR (data range 1) and SSIM of estimates against references in [0, 1]."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def psnr(estimate: Tensor, reference: Tensor) -> float:
    """PSNR in dB (data range 1) of the estimate clipped to [0, 1], over all its pixels."""
    mse = float((estimate.clamp(0, 1) - reference).pow(2).mean())
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def psnr_per_image(estimate: Tensor, reference: Tensor) -> Tensor:
    """(B,) PSNR in dB (data range 1) of the clipped estimate, one value per image of a batch."""
    mse = (estimate.clamp(0, 1) - reference).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-20))


def ssim(estimate: Tensor, reference: Tensor, window: str = "uniform") -> float | None:
    """Mean SSIM over channels of (C, H, W) or (H, W) images, data range 1, the estimate
    clipped to [0, 1] (scikit-image); None for images under 3 pixels a side.

    ``window="uniform"``: a 7x7 mean (or the largest odd side below), as the reconstruction
    tables report; ``"gaussian"``: the Gaussian window of Wang et al. (2004), sigma 1.5,
    population covariances, as the denoising tables report.
    """
    from skimage.metrics import structural_similarity

    if window not in ("uniform", "gaussian"):
        raise ValueError(f"window must be 'uniform' or 'gaussian', got {window!r}")
    side = min(estimate.shape[-2:])
    if side < 3:
        return None
    a = estimate.detach().cpu().clamp(0, 1).reshape(-1, *estimate.shape[-2:])
    b = reference.detach().cpu().reshape(-1, *reference.shape[-2:])
    if window == "gaussian":
        options: dict = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
        a, b = a.double(), b.double()
    else:
        options = {"win_size": min(7, side if side % 2 else side - 1)}
    return float(np.mean([structural_similarity(a[c].numpy(), b[c].numpy(), data_range=1.0, **options)
                          for c in range(a.shape[0])]))
