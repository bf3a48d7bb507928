"""Tiled denoising: the exact result of a convolutional denoiser on images too large for one pass.

An output pixel of a stack of stride-1 'same' convolutions with pointwise activations (the
lipden denoisers: ``depth`` convolutions of size k, circular padding) depends only on the
input pixels within ``radius = sum over the convolutions of dilation * (k // 2)`` of it
(8 pixels for 8 layers of 3x3). :func:`denoise_tiled` therefore cuts the image into
``tile x tile`` blocks, extends each by ``radius`` pixels of context on every side, runs
the denoiser on the extended block and keeps its centre. The context is taken the way the
network pads the full image: wrapped around the opposite border for circular padding (the
image is a torus), and cut at the image border for zero / reflect / replicate padding
(the network then pads the tile's border exactly as it pads the image's). The result is
the untiled result up to float round-off (no blending, no seams).

Memory: the network only ever sees a ``(B, C, tile + 2 radius, tile + 2 radius)`` block,
so its intermediate activations are bounded by about
``3 * B * C * channels * (tile + 2 radius)^2 * 4`` bytes (float32, no grad; the lipden
networks run each colour channel through ``channels`` feature maps): 57 MB for a 64-channel
model at tile 256 (radius 8), 0.21 GB at tile 512 (half that at 32 channels), whatever the image size,
against about 6 GB for an untiled 4096 x 4096 grayscale image. The input and the output
image themselves (``B * C * H * W * 4`` bytes each) stay where ``x`` is; pass ``device=`` to
run the tiles on another device (e.g. the image in CPU memory, the tiles on a GPU).
Tiling costs time: each tile recomputes its ``radius``-pixel border, a factor
``((tile + 2 radius) / tile)^2`` (1.07 at tile 512), plus one network call per tile.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

#: Module types whose output pixel depends on more than a fixed neighbourhood (or that
#: change the resolution): the receptive field cannot be derived from the convolutions.
_NON_LOCAL = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.modules.conv._ConvTransposeNd,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.Linear,
    nn.MultiheadAttention,
)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"expected one or two integers, got {value}")
    return int(value[0]), int(value[1])


def receptive_field(denoiser: nn.Module) -> tuple[tuple[int, int], str]:
    """``((radius_h, radius_w), padding_mode)`` of a convolutional denoiser.

    The radius is the sum of ``dilation * (kernel // 2)`` over its convolutions (exact for a
    chain, an upper bound for residual branches); the padding mode is the one all its
    convolutions share. Raises ``ValueError`` for networks this cannot describe (strided or
    transposed convolutions, pooling, global normalization, mixed padding modes, no
    convolution at all): pass ``overlap=`` and ``padding_mode=`` to :func:`denoise_tiled`.
    """
    from lipden.nn.layers import LipschitzConv2d

    radius_h = radius_w = 0
    modes: set[str] = set()
    found = False
    for name, module in denoiser.named_modules():
        label = f"{type(module).__name__} {name!r}"
        if isinstance(module, _NON_LOCAL):
            raise ValueError(f"cannot derive the receptive field of a network with {label}; pass overlap=")
        if isinstance(module, LipschitzConv2d):
            k = module.kernel_size
            radius_h += k // 2
            radius_w += k // 2
            modes.add(module.padding_mode)
            found = True
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            dh, dw = module.dilation
            if tuple(module.stride) != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
                raise ValueError(f"cannot tile a network with {label} (stride {module.stride}, kernel "
                                 f"{module.kernel_size}): only stride-1 odd-sized convolutions")
            if module.padding != (dh * (kh // 2), dw * (kw // 2)) and module.padding != "same":
                raise ValueError(f"cannot tile a network with {label}: padding {module.padding} is not 'same'")
            radius_h += dh * (kh // 2)
            radius_w += dw * (kw // 2)
            modes.add(module.padding_mode)
            found = True
        elif isinstance(module, nn.modules.conv._ConvNd):
            raise ValueError(f"cannot derive the receptive field of a network with {label}; pass overlap=")
    if not found:
        raise ValueError(f"{type(denoiser).__name__} has no convolution to derive a receptive field from; "
                         "pass overlap= and padding_mode=")
    if len(modes) != 1:
        raise ValueError(f"the convolutions mix padding modes {sorted(modes)}: pass padding_mode=")
    return (radius_h, radius_w), modes.pop()


def _context_indices(start: int, stop: int, size: int, margin: int, circular: bool,
                     device: torch.device) -> tuple[Tensor, int]:
    """Indices of rows (or columns) ``start - margin .. stop + margin`` and the offset of ``start``."""
    if stop - start >= size:  # the tile spans the whole axis: the network pads it itself
        return torch.arange(size, device=device), 0
    if circular:
        return torch.arange(start - margin, stop + margin, device=device) % size, margin
    lo, hi = max(start - margin, 0), min(stop + margin, size)
    return torch.arange(lo, hi, device=device), start - lo


def _margins(denoiser: nn.Module, overlap: int | tuple[int, int] | None,
             padding_mode: str | None) -> tuple[tuple[int, int], str]:
    """The context added on each side of a tile and the padding mode (see denoise_tiled)."""
    radius: tuple[int, int] | None
    try:
        radius, mode = receptive_field(denoiser)
    except ValueError:
        if overlap is None or padding_mode is None:
            raise
        radius, mode = None, padding_mode
    if overlap is None:
        assert radius is not None
        return radius, padding_mode or mode
    margin_h, margin_w = _pair(overlap)
    if min(margin_h, margin_w) < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if radius is not None and (margin_h < radius[0] or margin_w < radius[1]):
        raise ValueError(f"overlap {overlap} is smaller than the receptive-field radius {radius}: "
                         "the tiles would not match the untiled result")
    return (margin_h, margin_w), padding_mode or mode


def denoise_tiled(
    denoiser: nn.Module,
    x: Tensor,
    sigma: float | Tensor | None = None,
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] | None = None,
    *,
    padding_mode: str | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """``denoiser(x, sigma)`` computed tile by tile in bounded memory, equal to the untiled result.

    Args:
        denoiser: a convolutional denoiser ``forward(x, sigma)`` on (B, C, H, W) whose output
            has the input's shape, e.g. a :class:`lipden.LipschitzDenoiser`.
        x: (B, C, H, W) image(s), any size.
        sigma: passed on to the denoiser (None: called as ``denoiser(tile)``).
        tile: output block size, ``N`` or ``(N_h, N_w)``; an image that fits in one tile is
            denoised in one call.
        overlap: context added on each side of a tile (pixels). Default: the receptive-field
            radius derived from the model (:func:`receptive_field`), which makes the result
            exact; a smaller value raises ``ValueError`` when the radius is known. Required
            for networks whose receptive field cannot be derived.
        padding_mode: how the network pads: ``circular`` (context wraps around the image) or
            anything else (context stops at the image border). Default: the model's.
        device: run the tiles there (default: ``x``'s device); the result is on ``x``'s device.

    Returns the denoised (B, C, H, W) tensor. Raises ``ValueError`` on a malformed image,
    tile or overlap. See the module docstring for the memory this bounds.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected an image tensor of shape (B, C, H, W), got {shape}")
    tile_h, tile_w = _pair(tile)
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    (margin_h, margin_w), mode = _margins(denoiser, overlap, padding_mode)
    circular = mode == "circular"
    run_device = torch.device(device) if device is not None else x.device

    def run(block: Tensor) -> Tensor:
        block = block.to(run_device)
        out = denoiser(block, sigma) if sigma is not None else denoiser(block)
        if out.shape != block.shape:
            raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(block.shape)}")
        return out

    height, width = x.shape[-2:]
    if tile_h >= height and tile_w >= width:
        return run(x).to(x.device)
    result: Tensor | None = None
    for top in range(0, height, tile_h):
        bottom = min(top + tile_h, height)
        rows, dy = _context_indices(top, bottom, height, margin_h, circular, x.device)
        strip = x.index_select(-2, rows)
        for left in range(0, width, tile_w):
            right = min(left + tile_w, width)
            cols, dx = _context_indices(left, right, width, margin_w, circular, x.device)
            out = run(strip.index_select(-1, cols))
            centre = out[..., dy : dy + bottom - top, dx : dx + right - left]
            if result is None:
                result = torch.empty(x.shape, dtype=out.dtype, device=x.device)
            result[..., top:bottom, left:right] = centre
    assert result is not None
    return result


@functools.lru_cache(maxsize=256)
def pass_tiles(height: int, width: int, radius: tuple[int, int], max_pixels: int,
               call_cost_pixels: int = 2048) -> tuple[int, int]:
    """Tile ``(N_h, N_w)`` for :func:`denoise_tiled` whose context-extended blocks have at
    most ``max_pixels`` pixels where possible, chosen to minimise the pixels computed
    (context included) plus ``call_cost_pixels`` per network call. ``(height, width)`` when
    the image fits; the smallest blocks there are when no tiling meets the budget.
    """
    if height * width <= max_pixels:
        return height, width

    def extent(size: int, tile: int, margin: int) -> int:
        return size if tile >= size else min(tile + 2 * margin, size)

    best: tuple[float, int, int] | None = None
    smallest: tuple[int, int, int] | None = None
    for rows in range(1, height + 1):
        tile_h = -(-height // rows)
        if rows > 1 and tile_h == -(-height // (rows - 1)):
            continue  # same tiles as the previous row count
        extent_h = extent(height, tile_h, radius[0])
        for tile_w in {width, max(1, max_pixels // extent_h - 2 * radius[1])}:
            tile_w = min(tile_w, width)
            cols = -(-width // tile_w)
            tile_w = -(-width // cols)  # even columns
            block = extent_h * extent(width, tile_w, radius[1])
            if smallest is None or block < smallest[0]:
                smallest = (block, tile_h, tile_w)
            if block <= max_pixels:
                cost = rows * cols * (block + call_cost_pixels)
                if best is None or cost < best[0]:
                    best = (cost, tile_h, tile_w)
    if best is not None:
        return best[1], best[2]
    assert smallest is not None
    return smallest[1], smallest[2]


def run_in_bounded_passes(network: nn.Module, x: Tensor, max_pixels: int) -> Tensor:
    """``network(x)`` for a convolutional network on (B, C, H, W) images, run in passes of at
    most ``max_pixels`` pixels per input channel: several images per pass when they are
    small, one image cut into exact context-extended tiles (:func:`denoise_tiled`) when it
    is large. Same result up to float round-off.

    Why: with glibc's default allocator, a CPU tensor above its mmap threshold (at most
    32 MiB) is a fresh ``mmap`` that page-faults on first touch and is unmapped when freed,
    so a network whose activations are that large (``B x channels x H x W`` floats: 64 MiB
    for 8 images of 256 x 256 at 32 channels) pays the page faults at every layer (results/speed.md
    measures it). Passes of a few MiB reuse heap memory (:mod:`lipden.memory` is the other
    remedy, for a whole process).
    """
    planes = x.shape[0]
    height, width = x.shape[-2:]
    if planes * height * width <= max_pixels:
        return network(x)
    if height * width <= max_pixels:
        group = max_pixels // (height * width)
        return torch.cat([network(chunk) for chunk in x.split(group)])
    radius, _ = receptive_field(network)
    tile = pass_tiles(height, width, radius, max_pixels)
    return torch.cat([denoise_tiled(network, image, tile=tile) for image in x.split(1)])
