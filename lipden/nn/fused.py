"""A faster training forward for conv-spline chains under bfloat16 autocast on the CPU.

In a chain ``conv, spline, conv, ..., spline, conv`` of circular 'same' convolutions run in
bfloat16 (autocast) with float32 splines between them, each spline reads a bfloat16 conv
output, computes in float32, and its output is padded circularly and rounded to bfloat16 for
the next convolution: three passes over memory (cast up, pad, cast down) around the spline's
own. :func:`fused_chain` runs the same arithmetic with the native kernel
(:mod:`lipden.nn._native`) doing spline, rounding and padding in one pass, and the backward
(pad fold, spline backward, rounding) in one pass: the outputs and gradients equal those of
the unfused chain. Only for training: eval mode keeps the float32 path the certificate is
computed for.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipden.nn.conv_ops import circular_pad
from lipden.nn.layers import LipschitzConv2d
from lipden.nn.precision import autocast_disabled
from lipden.nn.splines import LinearSpline, native_spline_module


class _SplinePad(torch.autograd.Function):
    """``circular_pad(bfloat16(spline(float(x))))`` for bfloat16 x (B, C, H, W); returns
    (B, C, H + 2 ph, W + 2 pw) bfloat16, channels-last (as is the input gradient). Tables are
    float32 (C, K - 1), index scale (C,)."""

    @staticmethod
    def forward(ctx, x: Tensor, index_scale: Tensor, index_shift: float, intercepts: Tensor,  # type: ignore[override]
                slopes: Tensor, ph: int, pw: int, module: Any) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, index_scale, intercepts, slopes)
        ctx.settings = (index_shift, ph, pw, module)
        return module.spline_pad_forward(x, index_scale, index_shift, intercepts, slopes, ph, pw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, index_scale, intercepts, slopes = ctx.saved_tensors
        index_shift, ph, pw, module = ctx.settings
        grad_x, grad_a, grad_s = module.spline_pad_backward(
            x, grad_out.contiguous(memory_format=torch.channels_last), index_scale, index_shift, intercepts, slopes, ph, pw
        )
        return grad_x, None, None, grad_a, grad_s, None, None, None


def spline_circular_pad(x: Tensor, spline: LinearSpline, pad: int) -> Tensor:
    """``circular_pad(spline(x.float()), pad, pad).bfloat16()`` in one native pass, differentiable.

    x: (B, C, H, W) bfloat16 on the CPU (made channels-last), C = ``spline.num_activations``,
    ``pad <= H, W``; returns (B, C, H + 2 pad, W + 2 pad) bfloat16, channels-last. Needs the
    native backend (``set_spline_backend("native")``).
    """
    module = native_spline_module()
    if module is None:
        raise ValueError("spline_circular_pad needs the native spline kernel (set_spline_backend('native'))")
    if x.dtype != torch.bfloat16 or x.dim() != 4 or x.shape[1] != spline.num_activations:
        raise ValueError(f"spline_circular_pad: expected a bfloat16 (B, {spline.num_activations}, H, W) activation, "
                         f"got {x.dtype} {tuple(x.shape)}")
    with autocast_disabled("cpu"):
        tables = spline.constrained_weight()
    return _SplinePad.apply(x, tables.index_scale, tables.index_shift, tables.intercepts, tables.slopes, pad, pad,
                            module)


def _chain(body: nn.Module) -> list[nn.Module] | None:
    """The layers of ``body`` if it is conv, spline, conv, ..., conv with circular convs."""
    layers = list(body.children()) if isinstance(body, nn.Sequential) else []
    if len(layers) < 3 or len(layers) % 2 == 0:
        return None
    convs, splines = layers[0::2], layers[1::2]
    if not all(isinstance(c, LipschitzConv2d) and c.padding_mode == "circular" for c in convs):
        return None
    if not all(isinstance(s, LinearSpline) for s in splines):
        return None
    return layers


def fused_chain_applies(body: nn.Module, x: Tensor) -> bool:
    """Whether :func:`fused_chain` runs ``body`` on ``x``: a training-mode conv-spline chain
    (:func:`_chain`) on a float32 CPU input, under CPU bfloat16 autocast, with the native
    spline kernel selected and built (``set_spline_backend("native")``)."""
    if not body.training or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    if native_spline_module() is None or _chain(body) is None:
        return False
    return all(p.dtype == torch.float32 for p in body.parameters())


def fused_chain(body: nn.Module, x: Tensor) -> Tensor:
    """``body(x)`` for a chain accepted by :func:`fused_chain_applies`, with each spline's
    activation, rounding and the next convolution's circular padding in one native pass.
    Returns the last convolution's bfloat16 output, as ``body(x)`` under autocast does."""
    layers = _chain(body)
    if layers is None:  # a missing native kernel is refused by spline_circular_pad
        raise ValueError("fused_chain needs a conv-spline chain of circular convolutions")
    first = layers[0]
    assert isinstance(first, LipschitzConv2d)
    pad = first.kernel_size // 2
    # channels-last from the first convolution on: oneDNN's faster layout, kept through the chain
    h = F.conv2d(circular_pad(x, pad, pad).contiguous(memory_format=torch.channels_last), first.constrained_weight(),
                 first.bias)
    for spline, conv in zip(layers[1::2], layers[2::2], strict=True):
        assert isinstance(conv, LipschitzConv2d) and isinstance(spline, LinearSpline)
        padded = spline_circular_pad(h, spline, conv.kernel_size // 2)
        h = F.conv2d(padded, conv.constrained_weight(), conv.bias)
    return h
