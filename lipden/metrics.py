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


def ssim(estimate: Tensor, reference: Tensor) -> float | None:
    """Mean SSIM over channels of (C, H, W) images (the estimate clipped to [0, 1]; scikit-image,
    window 7 or the largest odd side below); None for images under 3 pixels a side."""
    from skimage.metrics import structural_similarity

    side = min(estimate.shape[-2:])
    if side < 3:
        return None
    window = min(7, side if side % 2 else side - 1)
    a = estimate.detach().cpu().clamp(0, 1).numpy()
    b = reference.detach().cpu().numpy()
    return float(np.mean([structural_similarity(a[c], b[c], data_range=1.0, win_size=window)
                          for c in range(a.shape[0])]))
