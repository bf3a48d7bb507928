"""Functional convolution operators and their exact spectra.

Conventions: kernels are (C_out, C_in, k_h, k_w) with odd sizes, applied as PyTorch's
cross-correlation with 'same' padding ``k // 2`` (stride 1), circular or zero boundary.
Images are (B, C, H, W).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

PaddingMode = Literal["circular", "zeros"]
PADDING_MODES: tuple[PaddingMode, ...] = ("circular", "zeros")


def check_padding_mode(padding_mode: str) -> PaddingMode:
    """Raise ValueError unless ``padding_mode`` is supported; return it, narrowed."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode  # narrowed to PaddingMode by the membership test


def _same_padding(kernel: Tensor) -> tuple[int, int]:
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sizes must be odd for 'same' padding, got {(kh, kw)}")
    return kh // 2, kw // 2


class _CircularPad(torch.autograd.Function):
    """Circular padding whose backward folds the pad strips back with thin in-place adds.

    Same values as ``F.pad(x, ..., mode="circular")``; its backward costs one copy of the
    gradient instead of a zero-filled buffer plus strided copies.
    """

    @staticmethod
    def forward(ctx, x: Tensor, ph: int, pw: int) -> Tensor:  # type: ignore[override]
        ctx.pads = (ph, pw)
        return F.pad(x, (pw, pw, ph, ph), mode="circular")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        ph, pw = ctx.pads
        h, w = g.shape[-2] - 2 * ph, g.shape[-1] - 2 * pw
        gx = g[..., ph : ph + h, pw : pw + w].clone()
        if pw:
            gx[..., :, :pw] += g[..., ph : ph + h, w + pw :]
            gx[..., :, w - pw :] += g[..., ph : ph + h, :pw]
        if ph:
            gx[..., :ph, :] += g[..., h + ph :, pw : pw + w]
            gx[..., h - ph :, :] += g[..., :ph, pw : pw + w]
        if ph and pw:
            gx[..., h - ph :, w - pw :] += g[..., :ph, :pw]
            gx[..., h - ph :, :pw] += g[..., :ph, w + pw :]
            gx[..., :ph, w - pw :] += g[..., h + ph :, :pw]
            gx[..., :ph, :pw] += g[..., h + ph :, w + pw :]
        return gx, None, None


def circular_pad(x: Tensor, ph: int, pw: int) -> Tensor:
    """Pad (B, C, H, W) circularly by ph rows and pw columns on each side (ph <= H, pw <= W)."""
    if ph > x.shape[-2] or pw > x.shape[-1]:
        raise ValueError(
            f"image {tuple(x.shape[-2:])} is smaller than the circular padding {(ph, pw)}"
        )
    return _CircularPad.apply(x, ph, pw)


def conv2d_same(x: Tensor, kernel: Tensor, bias: Tensor | None, padding_mode: str) -> Tensor:
    """'Same'-size, stride-1 cross-correlation with circular or zero padding."""
    ph, pw = _same_padding(kernel)
    if padding_mode == "circular":
        if ph or pw:
            x = circular_pad(x, ph, pw)
        return F.conv2d(x, kernel, bias)
    return F.conv2d(x, kernel, bias, padding=(ph, pw))


def conv2d_same_adjoint(y: Tensor, kernel: Tensor, padding_mode: str) -> Tensor:
    """Adjoint of ``conv2d_same(., kernel, None, padding_mode)`` (exact, no bias)."""
    ph, pw = _same_padding(kernel)
    if padding_mode == "circular":
        flipped = kernel.transpose(0, 1).flip(-1, -2)
        return conv2d_same(y, flipped, None, "circular")
    return F.conv_transpose2d(y, kernel, padding=(ph, pw))


def compose_kernels(first: Tensor, second: Tensor) -> Tensor:
    """Kernel of ``conv(conv(x, first), second)`` on the infinite grid (cross-correlation).

    first: ([G,] C_mid, C_in, a_h, a_w), second: ([G,] C_out, C_mid, b_h, b_w);
    returns ([G,] C_out, C_in, a_h + b_h - 1, a_w + b_w - 1). With a leading batch of G
    pairs, all G compositions run as one grouped convolution.
    """
    if first.dim() == 4:
        return compose_kernels(first[None], second[None])[0]
    g, c_mid, c_in, ah, aw = first.shape
    c_out, bh, bw = second.shape[1], second.shape[-2], second.shape[-1]
    inputs = first.permute(2, 0, 1, 3, 4).reshape(c_in, g * c_mid, ah, aw)
    weight = second.flip(-1, -2).reshape(g * c_out, c_mid, bh, bw)
    out = F.conv2d(inputs, weight, padding=(bh - 1, bw - 1), groups=g)
    return out.reshape(c_in, g, c_out, *out.shape[-2:]).permute(1, 2, 0, 3, 4)


def kernel_frequency_response(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Transfer matrices of the circular convolution on an H x W grid.

    Returns (H, W // 2 + 1, C_out, C_in) complex: the non-redundant half of the DFT grid
    (a real kernel has conjugate-symmetric response, so the other half has the same
    singular values). Taps wrap modulo the grid when the kernel exceeds it.
    """
    h, w = size
    c_out, c_in, kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    wrapped = kernel.new_zeros(c_out, c_in, h, w)
    for i in range(kh):
        for j in range(kw):
            wrapped[:, :, (i - ph) % h, (j - pw) % w] += kernel[:, :, i, j]
    response = torch.fft.rfft2(wrapped)
    return response.permute(2, 3, 0, 1).contiguous()


def circular_conv_singular_values(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """All singular values (descending, with multiplicity) of the circular convolution.

    Computed in float64 from the kernel's DFT; exact up to round-off. Size (H*W*min(C)).
    """
    h, w = size
    response = kernel_frequency_response(kernel.detach().double(), size)
    values = []
    for col in range(response.shape[1]):
        # Columns 0 and W/2 (if W even) are self-conjugate; others stand for two columns.
        multiplicity = 1 if col == 0 or (w % 2 == 0 and col == w // 2) else 2
        sv = torch.linalg.svdvals(response[:, col])
        values.extend([sv] * multiplicity)
    return torch.cat([v.reshape(-1) for v in values]).sort(descending=True).values


def circular_conv_norm(kernel: Tensor, size: tuple[int, int], chunk: int = 2048) -> float:
    """Exact spectral norm of the circular convolution on an H x W grid (float64)."""
    response = kernel_frequency_response(kernel.detach().double(), size)
    matrices = response.reshape(-1, *response.shape[-2:])
    if matrices.shape[-1] > matrices.shape[-2]:
        matrices = matrices.transpose(-1, -2)
    best = 0.0
    for start in range(0, matrices.shape[0], chunk):
        block = matrices[start : start + chunk]
        gram = block.mH @ block
        top = torch.linalg.eigvalsh(gram)[..., -1].max().clamp(min=0)
        best = max(best, math.sqrt(float(top)))
    return best


def trig_grid_factor(degree: int, grid: int) -> float:
    """Ehlich-Zeller constant: sup |p| <= factor * max over the grid of |p|.

    Holds for every real trigonometric polynomial p of the given degree sampled on
    ``grid`` equispaced points, ``grid > 2 * degree``; factor = 1 / cos(pi degree / grid).
    """
    if grid <= 2 * degree:
        raise ValueError(f"grid ({grid}) must exceed twice the degree ({degree})")
    return 1.0 / math.cos(math.pi * degree / grid)


def convolution_norm_bound_any_size(kernel: Tensor, grid: int = 64) -> float:
    """Certified bound of the convolution's norm that holds for every image size.

    The circular convolution on any H x W grid has norm max_w ||K(w)|| over the DFT
    frequencies w of that grid, and a zero-padded one is a restriction of the convolution
    on l2(Z^2), whose norm is sup_w ||K(w)||; both are <= sup over all w. With
    G(w) = K(w)^H K(w), a Hermitian trigonometric polynomial of degree k - 1 per axis,
    for every unit u and shift c, u^H (G(w) - cI) u is a real trigonometric polynomial, so
    ``sup_w lambda_max(G) <= c + f * max_grid ||G(w_j) - cI||`` with f the product of the
    per-axis Ehlich-Zeller constants. c = 1 makes it tight for orthogonal convolutions
    (G ~ I); c = 0 and the midpoint of the spectrum are tried too.
    """
    weight = kernel.detach().double()
    kh, kw = weight.shape[-2:]
    factor = trig_grid_factor(kh - 1, grid) * trig_grid_factor(kw - 1, grid)
    response = kernel_frequency_response(weight, (grid, grid))
    matrices = response.reshape(-1, *response.shape[-2:])
    if matrices.shape[-1] > matrices.shape[-2]:
        matrices = matrices.transpose(-1, -2)
    eigenvalues = torch.linalg.eigvalsh(matrices.mH @ matrices)
    top, bottom = float(eigenvalues[..., -1].max()), float(eigenvalues[..., 0].min())
    best = math.inf
    for shift in (1.0, 0.0, (top + bottom) / 2):
        deviation = max(abs(top - shift), abs(bottom - shift))
        best = min(best, shift + factor * deviation)
    return math.sqrt(max(best, 0.0))


EXACT_NORM_MAX_PIXELS = 96 * 96


def conv_operator_norm_bound(kernel: Tensor, size: tuple[int, int], padding_mode: str) -> float:
    """Certified upper bound of the norm of the 'same' convolution on an H x W image.

    Circular padding: the exact norm. Zero padding: for any M >= H + k_h - 1 (same for W)
    the zero-padded operator equals crop o (circular convolution on an M grid) o
    zero-embedding, and crop and embedding are contractions, so the exact norm of that
    circular convolution bounds it; the smallest over a few grids (the tight one and the
    next power of two) is returned. Above ``EXACT_NORM_MAX_PIXELS`` the exact norm costs
    one SVD per frequency, so the size-independent ``convolution_norm_bound_any_size``
    (itself certified, and within ~1e-5 of exact for orthogonal kernels) is used instead;
    below, the exact grid norms are used alone (they never exceed the any-size bound).
    """
    check_padding_mode(padding_mode)
    if size[0] * size[1] > EXACT_NORM_MAX_PIXELS:
        return convolution_norm_bound_any_size(kernel)
    if padding_mode == "circular":
        return circular_conv_norm(kernel, size)
    kh, kw = kernel.shape[-2:]
    h, w = size[0] + kh - 1, size[1] + kw - 1
    grids = {(h, w), (1 << (h - 1).bit_length(), 1 << (w - 1).bit_length())}
    return min(circular_conv_norm(kernel, grid) for grid in grids)
