"""Learnable linear-spline activations with a slope constraint (Ducotterd et al., JMLR 2024).

One continuous piecewise-linear function per channel, on a uniform grid of ``num_knots``
knots ``t_k = -x_range + k * h`` with ``h = 2 * x_range / (num_knots - 1)``. The learned
coefficients are the values at the knots; outside ``[-x_range, x_range]`` the spline extends
linearly with its boundary slopes.

1-Lipschitz by construction: in every forward pass the slopes ``(c_{k+1} - c_k) / h`` are
clipped to ``[slope_min, slope_max]`` (default ``[-1, 1]``), re-integrated and shifted back to
the mean of the raw coefficients. The raw parameters stay unconstrained, so any optimiser
works without a projection step, and the Lipschitz constant of every channel is
``max_k |slope_k| <= max(|slope_min|, |slope_max|)``.

A learnable per-channel scaling ``alpha > 0`` evaluates ``sigma(alpha x) / alpha``: the slopes,
hence the Lipschitz constant and the second-order total variation, are unchanged, while the
knot spacing seen by the input becomes ``h / alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipden.nn._autograd import InwardClamp, LinearSplineFunction
from lipden.nn._autograd import get_spline_backend as get_spline_backend  # public here
from lipden.nn._autograd import native_spline_module as native_spline_module
from lipden.nn._autograd import set_spline_backend as set_spline_backend
from lipden.nn._autograd import spline_backend as spline_backend
from lipden.nn._native import native_kernels
from lipden.nn.constrained import ConstrainedLayer
from lipden.nn.precision import autocast_disabled


def native_kernel_available() -> bool:
    """Whether the C++ spline kernel (backend ``"native"``) runs here; builds it on first call."""
    return native_kernels() is not None


SPLINE_INITS = ("identity", "relu", "absolute_value", "maxmin", "zero")


def clip_spline_slopes(
    coefficients: Tensor, grid: float, slope_min: float | None, slope_max: float | None
) -> Tensor:
    """Projection of knot values (..., C, K) onto splines with bounded slopes.

    Clips the slopes ``diff(c) / grid`` to ``[slope_min, slope_max]``, integrates them back
    and restores each channel's mean value. ``None`` bounds leave that side free. The value
    is exactly the clipped spline (what the certificate covers). For training, a clipped
    slope still receives the gradient when descent would bring it back inside the bounds:
    with a plain clamp, a slope pushed (or initialised by round-off) just past a bound gets
    zero gradient and freezes, which left most channels of |x|-initialised splines unlearned.
    """
    if slope_min is None and slope_max is None:
        return coefficients
    slopes = InwardClamp.apply(torch.diff(coefficients, dim=-1) / grid, slope_min, slope_max)
    zero = coefficients.new_zeros(*coefficients.shape[:-1], 1)
    clipped = torch.cat([zero, torch.cumsum(slopes, dim=-1) * grid], dim=-1)
    return clipped + (coefficients.mean(dim=-1) - clipped.mean(dim=-1)).unsqueeze(-1)


@dataclass
class SplineTables:
    """Lookup tables of linear splines: on input x, channel c uses the grid interval
    ``k = clamp(floor(x * index_scale[c] + index_shift), 0, K - 2)`` and returns
    ``intercepts[c, k] + x * slopes[c, k]``.

    index_scale: (..., C), detached (the interval choice is piecewise constant);
    intercepts, slopes: (..., C, K - 1), differentiable in the coefficients and scalings.
    """

    index_scale: Tensor
    index_shift: float
    intercepts: Tensor
    slopes: Tensor

    def __getitem__(self, index: int) -> SplineTables:
        """The tables of one spline of a stacked (S, C, ...) set."""
        return SplineTables(self.index_scale[index], self.index_shift, self.intercepts[index], self.slopes[index])


def spline_tables(coefficients: Tensor, x_range: float, scaling: Tensor | None = None) -> SplineTables:
    """Tables of the splines with knot values ``coefficients`` (..., C, K) on the uniform grid
    over ``[-x_range, x_range]``, evaluated as ``spline(alpha x) / alpha`` with ``scaling``
    alpha (..., C) (None: 1). Batched over the leading dimensions."""
    num_knots = coefficients.shape[-1]
    grid = 2.0 * x_range / (num_knots - 1)
    knots = torch.linspace(-x_range, x_range, num_knots, device=coefficients.device, dtype=coefficients.dtype)
    slopes = torch.diff(coefficients, dim=-1) / grid
    intercepts = coefficients[..., :-1] - knots[:-1] * slopes
    if scaling is None:
        index_scale = coefficients.new_full(coefficients.shape[:-1], 1 / grid)
    else:
        intercepts = intercepts / scaling.unsqueeze(-1)
        index_scale = scaling.detach() / grid
    return SplineTables(index_scale, x_range / grid, intercepts, slopes)


def apply_spline_tables(x: Tensor, tables: SplineTables) -> Tensor:
    """Evaluate splines given by their (C, K - 1) ``tables`` on x of shape (B, C, *spatial)."""
    channels = tables.slopes.shape[0]
    if x.dim() < 2 or x.shape[1] != channels or tables.slopes.dim() != 2:
        raise ValueError(f"linear_spline: expected input of shape (B, {channels}, ...), got {tuple(x.shape)}")
    return LinearSplineFunction.apply(
        x, tables.index_scale.to(x.dtype), tables.index_shift, tables.intercepts.to(x.dtype), tables.slopes.to(x.dtype)
    )


def linear_spline(
    x: Tensor,
    coefficients: Tensor,
    x_range: float,
    scaling: Tensor | None = None,
) -> Tensor:
    """Functional linear spline: apply channel c's spline to ``x[:, c]``.

    Args:
        x: (B, C) or (B, C, *spatial), any real values.
        coefficients: (C, K) values at the K uniform knots over ``[-x_range, x_range]``
            (already constrained: no slope clipping happens here).
        x_range: half-width of the knot grid.
        scaling: optional (C,) positive alpha; evaluates ``spline(alpha x) / alpha``.

    Returns:
        Tensor of the shape of x.
    """
    if x.dim() < 2 or x.shape[1] != coefficients.shape[0]:
        raise ValueError(
            f"linear_spline: expected input of shape (B, {coefficients.shape[0]}, ...), "
            f"got {tuple(x.shape)}"
        )
    return apply_spline_tables(x, spline_tables(coefficients, x_range, scaling))


@dataclass
class SplineFunctions:
    """Learned functions of a :class:`LinearSpline`, in input units, ready to plot.

    knots: (C, K) knot positions ``t_k / alpha_c``; values: (C, K) spline values there;
    slopes: (C, K-1) slope on each interval (also the slope of the linear extension at the
    two ends); tv2: (C,) second-order total variation of each channel.
    """

    knots: Tensor
    values: Tensor
    slopes: Tensor
    tv2: Tensor


class LinearSpline(ConstrainedLayer[SplineTables]):
    """Learnable linear spline activation, one function per channel, slopes in a bounded set.

    With the default ``slope_min=-1, slope_max=1`` every channel is 1-Lipschitz; with
    ``slope_min=0`` every channel is also monotone (non-decreasing).

    Args:
        num_activations: number of channels C (conv mode: shared over space; linear mode:
            one per neuron).
        num_knots: number of uniform knots K (paper default for denoisers: 51).
        x_range: the knots span ``[-x_range, x_range]`` (paper default: 0.1).
        init: one of ``identity``, ``relu``, ``absolute_value``, ``maxmin`` (|x| on even
            channels, x on odd ones), ``zero``.
        slope_min, slope_max: slope bounds; ``None`` for unconstrained.
        learn_scaling: learn a per-channel input scaling alpha (initialised to 1).
        alpha_min: alpha is clamped to at least this positive value.

    Shape: input (B, C) or (B, C, *spatial); output of the same shape.
    """

    def __init__(
        self,
        num_activations: int,
        num_knots: int = 51,
        x_range: float = 0.1,
        init: str = "identity",
        slope_min: float | None = -1.0,
        slope_max: float | None = 1.0,
        learn_scaling: bool = True,
        alpha_min: float = 1e-3,
    ) -> None:
        super().__init__()
        if num_activations < 1:
            raise ValueError(f"num_activations must be >= 1, got {num_activations}")
        if num_knots < 2:
            raise ValueError(f"num_knots must be >= 2, got {num_knots}")
        if not x_range > 0:
            raise ValueError(f"x_range must be > 0, got {x_range}")
        if slope_min is not None and slope_max is not None and slope_min > slope_max:
            raise ValueError(f"slope_min {slope_min} > slope_max {slope_max}")
        if init not in SPLINE_INITS:
            raise ValueError(f"unknown spline init {init!r}; choose from {', '.join(SPLINE_INITS)}")
        if not alpha_min > 0:
            raise ValueError(f"alpha_min must be > 0, got {alpha_min}")
        self.num_activations = num_activations
        self.num_knots = num_knots
        self.x_range = float(x_range)
        self.grid = 2.0 * self.x_range / (num_knots - 1)
        self.slope_min = slope_min
        self.slope_max = slope_max
        self.init = init
        self.alpha_min = alpha_min
        self.coefficients = nn.Parameter(self._initial_coefficients(init))
        self.scaling = nn.Parameter(torch.ones(num_activations), requires_grad=learn_scaling)

    def _initial_coefficients(self, init: str) -> Tensor:
        knots = torch.linspace(-self.x_range, self.x_range, self.num_knots)
        grid = knots.expand(self.num_activations, -1).clone()
        if init == "identity":
            return grid
        if init == "relu":
            return grid.clamp(min=0)
        if init == "absolute_value":
            return grid.abs()
        if init == "maxmin":
            grid[0::2] = grid[0::2].abs()
            return grid
        return torch.zeros_like(grid)

    def knots(self) -> Tensor:
        """(K,) knot positions of the unscaled spline."""
        c = self.coefficients
        return torch.linspace(-self.x_range, self.x_range, self.num_knots, device=c.device, dtype=c.dtype)

    def alpha(self) -> Tensor:
        """(C,) effective input scaling, clamped to ``>= alpha_min``."""
        return self.scaling.clamp(min=self.alpha_min)

    def constrained_coefficients(self) -> Tensor:
        """(C, K) knot values after slope clipping (differentiable in the raw coefficients)."""
        return clip_spline_slopes(self.coefficients, self.grid, self.slope_min, self.slope_max)

    def slopes(self) -> Tensor:
        """(C, K-1) slopes of the constrained splines (unchanged by the scaling alpha)."""
        return torch.diff(self.constrained_coefficients(), dim=1) / self.grid

    def tv2(self) -> Tensor:
        """Second-order total variation summed over channels: sum of |slope jumps| (scalar)."""
        total = total_tv2([self])
        assert total is not None  # one spline given
        return total

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def lipschitz_certificate(self, input_shape: tuple[int, ...] | None = None) -> float:
        """Exact Lipschitz constant (any input shape): the largest |slope| over all channels."""
        with torch.no_grad():
            return float(self.slopes().abs().max())

    def learned_functions(self) -> SplineFunctions:
        """Knots, values, slopes and TV2 per channel, in input units (detached)."""
        with torch.no_grad():
            alpha = self.alpha().unsqueeze(1)
            coefficients = self.constrained_coefficients()
            slopes = torch.diff(coefficients, dim=1) / self.grid
            return SplineFunctions(
                knots=self.knots().unsqueeze(0) / alpha,
                values=coefficients / alpha,
                slopes=slopes,
                tv2=torch.diff(slopes, dim=1).abs().sum(dim=1),
            )

    def training_weight(self) -> SplineTables:
        """Lookup tables of the constrained, scaled splines (differentiable). In eval mode the
        layer caches them until a parameter changes (:class:`ConstrainedLayer`); in training a
        model may hand in tables computed for several splines at once (``shared_weight``)."""
        return spline_tables(self.constrained_coefficients(), self.x_range, self.alpha())

    def _group_key(self) -> tuple:
        """Splines with equal keys get their tables computed in one batched pass."""
        c = self.coefficients
        return (c.shape, self.x_range, self.slope_min, self.slope_max, self.alpha_min, c.dtype, c.device)

    def forward(self, x: Tensor) -> Tensor:
        # In float32 even under autocast: slope clipping and knot indexing need it.
        with autocast_disabled(x.device.type):
            tables = self.constrained_weight()
            return apply_spline_tables(x.to(tables.slopes.dtype), tables)

    def extra_repr(self) -> str:
        return (
            f"num_activations={self.num_activations}, num_knots={self.num_knots}, "
            f"x_range={self.x_range}, init={self.init!r}, "
            f"slopes=[{self.slope_min}, {self.slope_max}]"
        )


def _stacked(splines: list[LinearSpline]) -> tuple[LinearSpline, Tensor, Tensor]:
    """The first spline (for the shared settings), stacked (S, C, K) clipped coefficients
    and stacked (S, C) scalings of splines with equal ``_group_key``."""
    first = splines[0]
    coefficients = torch.stack([s.coefficients for s in splines])
    clipped = clip_spline_slopes(coefficients, first.grid, first.slope_min, first.slope_max)
    alpha = torch.stack([s.scaling for s in splines]).clamp(min=first.alpha_min)
    return first, clipped, alpha


def _groups(splines: Iterable[LinearSpline]) -> list[list[LinearSpline]]:
    groups: dict[tuple, list[LinearSpline]] = {}
    for spline in splines:
        groups.setdefault(spline._group_key(), []).append(spline)
    return list(groups.values())


def total_tv2(splines: Iterable[LinearSpline]) -> Tensor | None:
    """``sum(s.tv2() for s in splines)`` computed in one batched pass per group of splines of
    equal shape and settings (None if there are none)."""
    total: Tensor | None = None
    for group in _groups(splines):
        first, clipped, _ = _stacked(group)
        tv2 = torch.diff(torch.diff(clipped, dim=-1), dim=-1).abs().sum() / first.grid
        total = tv2 if total is None else total + tv2
    return total


@contextmanager
def shared_spline_tables(module: nn.Module) -> Iterator[None]:
    """Within this block, the training-mode :class:`LinearSpline` modules of ``module`` use
    tables computed together (one batched pass per group of equal shape and settings,
    before the block) instead of one pass each: the same arithmetic with a fraction of the
    kernel launches. Outside training mode it does nothing."""
    splines = [m for m in module.modules() if isinstance(m, LinearSpline) and m.training]
    if len(splines) < 2:
        yield
        return
    try:
        with autocast_disabled(splines[0].coefficients.device.type):
            for group in _groups(splines):
                first, clipped, alpha = _stacked(group)
                tables = spline_tables(clipped, first.x_range, alpha)
                for index, spline in enumerate(group):
                    spline.shared_weight = tables[index]
        yield
    finally:
        for spline in splines:
            spline.shared_weight = None
