"""Björck orthonormalization: a differentiable map from any matrix to an (almost) orthonormal one."""

from __future__ import annotations

import torch
from torch import Tensor


def bjorck_orthonormalize(weight: Tensor, iters: int = 25) -> Tensor:
    """Orthonormalize the columns (tall) or rows (wide) of a batch of matrices (..., m, n).

    Scales by ``sqrt(||W||_1 ||W||_inf) >= ||W||_2`` so every singular value starts in
    (0, 1], then applies the order-1 Björck iteration ``W <- 1.5 W - 0.5 W W^T W``, which maps
    each singular value s to ``1.5 s - 0.5 s^3``: values stay in [0, 1] and converge to 1
    (quadratically once close). So the result has spectral norm <= 1 after any number of
    iterations, and is orthonormal up to round-off once converged.
    """
    transpose = weight.shape[-2] < weight.shape[-1]
    w = weight.mT if transpose else weight
    norm_1 = w.abs().sum(dim=-2).amax(dim=-1)
    norm_inf = w.abs().sum(dim=-1).amax(dim=-1)
    scale = torch.sqrt(norm_1 * norm_inf).clamp(min=torch.finfo(w.dtype).tiny)
    w = w / scale[..., None, None]
    for _ in range(iters):
        w = 1.5 * w - 0.5 * (w @ (w.mT @ w))
    return w.mT if transpose else w
