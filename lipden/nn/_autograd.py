"""The linear spline's kernels and custom autograd Functions (private to :mod:`lipden.nn`).

A spline with per-channel tables is evaluated as ``y = intercepts[c, k(x)] + x * slopes[c, k(x)]``
with ``k(x)`` the grid interval of ``x``; the backward pass sums gradients per table entry.
Two backends: eager (default) and ``torch.compile``-fused forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-channel vector (C,) to broadcast against x of shape (B, C, *spatial)."""
    return t.view(t.shape[0], *([1] * (x.dim() - 2)))


def _interval_index(
    x: Tensor, index_scale: Tensor, index_shift: float, num_intervals: int
) -> Tensor:
    """Flat int32 index ``c * num_intervals + k`` of the grid interval k holding each entry.

    Entries outside the grid use the boundary intervals (linear extension); NaN maps to 0 so
    the lookup stays in bounds (the output is NaN anyway because it is linear in x).
    """
    u = torch.addcmul(x.new_full((), index_shift), x, _channel_view(index_scale, x))
    u.floor_().clamp_(0, num_intervals - 1).nan_to_num_(0.0)
    idx = u.to(torch.int32)
    offsets = torch.arange(x.shape[1], device=x.device, dtype=torch.int32) * num_intervals
    idx += _channel_view(offsets, x)
    return idx.view(-1)


def _eager_forward(x: Tensor, index_scale: Tensor, index_shift: float, intercepts: Tensor, slopes: Tensor) -> Tensor:
    idx = _interval_index(x, index_scale, index_shift, slopes.shape[1])
    a = intercepts.reshape(-1).index_select(0, idx).view_as(x)
    s = slopes.reshape(-1).index_select(0, idx).view_as(x)
    return a.addcmul_(x, s)


def _eager_backward(
    x: Tensor, grad_out: Tensor, index_scale: Tensor, index_shift: float, intercepts: Tensor, slopes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    idx = _interval_index(x, index_scale, index_shift, slopes.shape[1])
    grad_x = slopes.reshape(-1).index_select(0, idx).view_as(x).mul_(grad_out)
    grad_a = _table_sums(idx, grad_out.view(-1), slopes.numel())
    grad_s = _table_sums(idx, (grad_out * x).view(-1), slopes.numel())
    return grad_x, grad_a.to(intercepts.dtype).view_as(intercepts), grad_s.to(slopes.dtype).view_as(slopes)


def _table_sums(idx: Tensor, values: Tensor, size: int) -> Tensor:
    """``out[j] = sum of values[idx == j]`` for j < size.

    ``bincount`` on the CPU (fastest there); on a GPU ``index_add_`` into a buffer of known
    size, because CUDA ``bincount`` reads the index range back to the host (two device
    synchronisations per call, which stall a training step).
    """
    if idx.device.type == "cpu":
        return torch.bincount(idx, weights=values, minlength=size)
    return values.new_zeros(size).index_add_(0, idx, values)


def _fused_index(x: Tensor, index_scale: Tensor, index_shift: float, num_intervals: int) -> Tensor:
    shape = (1, -1, *([1] * (x.dim() - 2)))
    u = torch.floor(x * index_scale.view(shape) + index_shift)
    local = torch.nan_to_num(torch.clamp(u, 0, num_intervals - 1), nan=0.0).to(torch.int64)
    offsets = torch.arange(x.shape[1], device=x.device).view(shape) * num_intervals
    return local + offsets


def _fused_forward(x, index_scale, index_shift, intercepts, slopes):
    idx = _fused_index(x, index_scale, index_shift, slopes.shape[1])
    return intercepts.reshape(-1)[idx] + x * slopes.reshape(-1)[idx]


_BACKEND = {"name": "eager"}
_COMPILED: dict[str, object] = {}


SPLINE_BACKENDS = ("eager", "compiled", "native")


def set_spline_backend(name: str) -> None:
    """Choose how spline kernels run: ``"eager"`` (default), ``"compiled"`` or ``"native"``.

    ``"compiled"`` fuses the forward pass (index computation and table lookups) with
    ``torch.compile``: one pass over memory instead of several; the first call compiles,
    which takes seconds. The backward pass stays eager: its table reductions
    (``bincount``) beat the compiled scatter-add on CPU.
    ``"native"`` runs float32/float64 CPU tensors through a hand-written C++ kernel
    (:mod:`lipden.nn._native`: one pass forward, one backward, table gradients summed in
    float64), built with the machine's compiler on first use; other tensors, or a machine
    where it cannot be built, take the eager path. Its forward and input gradient equal the
    eager ones; its table gradients are the more accurate float64 sums.
    """
    if name not in SPLINE_BACKENDS:
        raise ValueError(f"spline backend must be one of {', '.join(SPLINE_BACKENDS)}, got {name!r}")
    if name == "compiled" and "forward" not in _COMPILED:
        _COMPILED["forward"] = torch.compile(_fused_forward, dynamic=True)
    if name == "native":
        from lipden.nn._native import native_kernels

        module = native_kernels()
        if module is not None:
            _COMPILED["native"] = module
    _BACKEND["name"] = name


def get_spline_backend() -> str:
    return _BACKEND["name"]


@contextlib.contextmanager
def spline_backend(name: str) -> Iterator[None]:
    """Run the block with the spline backend ``name`` (see :func:`set_spline_backend`), then
    restore the one selected before."""
    previous = _BACKEND["name"]
    set_spline_backend(name)
    try:
        yield
    finally:
        set_spline_backend(previous)


def native_spline_module() -> Any | None:
    """The built native kernel module while the ``"native"`` backend is selected, else None."""
    return _COMPILED.get("native") if _BACKEND["name"] == "native" else None


def _kernels(x: Tensor):
    module = native_spline_module()
    if module is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return module.spline_forward, module.spline_backward
    if _BACKEND["name"] == "compiled":
        return _COMPILED["forward"], _eager_backward
    return _eager_forward, _eager_backward


class LinearSplineFunction(torch.autograd.Function):
    """y = intercepts[c, k(x)] + x * slopes[c, k(x)], with k(x) the grid interval of x.

    Memory-lean: only the input and the two small tables are saved for backward (the
    interval index is recomputed), instead of fractions plus an int64 index per entry.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        index_scale: Tensor,
        index_shift: float,
        intercepts: Tensor,
        slopes: Tensor,
    ) -> Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, index_scale, intercepts, slopes)
        ctx.index_shift = index_shift
        forward, _ = _kernels(x)
        return forward(x, index_scale, index_shift, intercepts, slopes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, index_scale, intercepts, slopes = ctx.saved_tensors
        _, backward = _kernels(x)
        grad_x, grad_a, grad_s = backward(
            x, grad_out.contiguous(), index_scale, ctx.index_shift, intercepts, slopes
        )
        return grad_x, None, None, grad_a, grad_s


class InwardClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` whose gradient also reaches an out-of-range entry when a descent
    step moves it back towards the range (plain clamp gives it zero gradient forever)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float | None, hi: float | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bounds = (lo, hi)
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        outward = torch.zeros_like(x, dtype=torch.bool)
        if hi is not None:
            outward |= (x > hi) & (grad < 0)  # x - lr * grad would move further above hi
        if lo is not None:
            outward |= (x < lo) & (grad > 0)
        return grad.masked_fill(outward, 0.0), None, None
