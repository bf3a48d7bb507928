"""Orthogonal parametrizations: Björck orthonormalization (any matrix to an almost orthonormal
one), BCOP paraunitary kernels built from it, and a certified spectral-norm bound."""

from __future__ import annotations

import torch
from torch import Tensor

from lipden.nn.conv_ops import compose_kernels


def gram_spectral_bound(weight: Tensor, squarings: int = 3) -> Tensor:
    """Certified upper bound of the spectral norm of each matrix in a batch (..., m, n).

    Gram iteration (Delattre et al., 2023): with ``G = W^T W``,
    ``||W||_2 <= ||G^(2^t)||_F^(1 / 2^(t+1))``, which tightens quickly with t (for an
    orthonormal n-column matrix it is ``n^(1 / 2^(t+1))``). Rescaled at each squaring so
    nothing overflows.
    """
    w = weight if weight.shape[-2] >= weight.shape[-1] else weight.mT
    gram = w.mT @ w
    norm = torch.linalg.matrix_norm(gram).clamp(min=torch.finfo(w.dtype).tiny)
    log_scale = torch.log(norm)
    gram = gram / norm[..., None, None]
    for _ in range(squarings):
        gram = gram @ gram
        norm = torch.linalg.matrix_norm(gram).clamp(min=torch.finfo(w.dtype).tiny)
        log_scale = 2 * log_scale + torch.log(norm)
        gram = gram / norm[..., None, None]
    return torch.exp(log_scale / 2 ** (squarings + 1))


def bjorck_orthonormalize(weight: Tensor, iters: int = 15) -> Tensor:
    """Orthonormalize the columns (tall) or rows (wide) of a batch of matrices (..., m, n).

    Divides by a certified bound of the spectral norm (:func:`gram_spectral_bound`) so every
    singular value starts in (0, 1], then applies the order-1 Björck iteration
    ``W <- 1.5 W - 0.5 W W^T W``, which maps each singular value s to ``1.5 s - 0.5 s^3``:
    values stay in [0, 1] and converge to 1 (quadratically once close). So the result has
    spectral norm <= 1 after any number of iterations, and is orthonormal up to round-off
    once converged.
    """
    transpose = weight.shape[-2] < weight.shape[-1]
    w = weight.mT if transpose else weight
    w = w / gram_spectral_bound(w)[..., None, None]
    for _ in range(iters):
        w = 1.5 * w - 0.5 * (w @ (w.mT @ w))
    return w.mT if transpose else w


def bcop_kernels(orthogonal: Tensor, projectors: Tensor, kernel_size: int, bjorck_iters: int) -> Tensor:
    """Paraunitary (G, c, c, k, k) kernels from G raw parameter sets (see :class:`OrthoConv2d`).

    orthogonal: (G, c, c); projectors: (G, 2(k-1), c, r). Every matrix product is batched
    over G, so G layers cost the kernel launches of one.
    """
    g, c, k = orthogonal.shape[0], orthogonal.shape[-1], kernel_size
    kernel = bjorck_orthonormalize(orthogonal, bjorck_iters)[..., None, None]
    if k > 1:
        q = bjorck_orthonormalize(projectors, bjorck_iters)
        symmetric = q @ q.mT  # (G, 2(k-1), c, c) projectors P
        complements = torch.eye(c, device=q.device, dtype=q.dtype) - symmetric
        blocks = torch.stack([symmetric, complements], dim=-1)  # (G, 2(k-1), c, c, 2)
        for index in range(2 * (k - 1)):
            shape = (g, c, c, 1, 2) if index < k - 1 else (g, c, c, 2, 1)
            kernel = compose_kernels(kernel, blocks[:, index].reshape(shape))
    return kernel
