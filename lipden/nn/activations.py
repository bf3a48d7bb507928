"""1-Lipschitz activations, all built as ``Activation(num_channels, **kwargs)``.

Every class here is 1-Lipschitz as a map on (B, C, *spatial) tensors (Euclidean norm):
channel-wise ones because each scalar function has slopes in [-1, 1]; GroupSort because
sorting is a permutation on each region where the order is fixed and is continuous;
HouseHolder because it is the identity or a reflection on each half-space and continuous.
``lipschitz_certificate(input_shape)`` returns the exact constant from the current parameters
and ``output_shape(input_shape)`` the (unchanged) shape, for :mod:`lipden.certify`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipden.nn.splines import LinearSpline


def _check_channels(x: Tensor, num_channels: int | None, name: str) -> None:
    if x.dim() < 2 or x.shape[1] != num_channels:
        raise ValueError(
            f"{name}: expected input of shape (B, {num_channels}, ...), got {tuple(x.shape)}"
        )


class Activation(nn.Module):
    """Base of the activations below: output shape = input shape, Lipschitz constant 1 unless
    a subclass says otherwise. ``num_channels`` is accepted by all for a uniform constructor."""

    def __init__(self, num_channels: int | None = None) -> None:
        super().__init__()
        self.num_channels = num_channels

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def lipschitz_certificate(self, input_shape: tuple[int, ...] | None = None) -> float:
        return 1.0


class ReLU(Activation):
    """max(x, 0), 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


class AbsoluteValue(Activation):
    """|x|, 1-Lipschitz and gradient-norm preserving."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(x)


class ClippedPReLU(Activation):
    """Per-channel PReLU ``max(x, 0) + a_c min(x, 0)`` with ``a_c`` clipped to [-1, 1].

    The clip is applied in every forward pass, so the raw slope parameter is unconstrained.
    """

    def __init__(self, num_channels: int, init: float = 0.25) -> None:
        super().__init__(num_channels)
        self.weight = nn.Parameter(torch.full((num_channels,), float(init)))

    def negative_slope(self) -> Tensor:
        return self.weight.clamp(-1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        _check_channels(x, self.num_channels, "ClippedPReLU")
        a = self.negative_slope().view(-1, *([1] * (x.dim() - 2)))
        return torch.where(x >= 0, x, a * x)

    def lipschitz_certificate(self, input_shape: tuple[int, ...] | None = None) -> float:
        return max(1.0, float(self.negative_slope().detach().abs().max()))


class GroupSort(Activation):
    """Sorts consecutive groups of ``group_size`` channels (descending).

    ``group_size=2`` is MaxMin: channels (2i, 2i+1) become (max, min).
    """

    def __init__(self, num_channels: int, group_size: int = 2) -> None:
        super().__init__(num_channels)
        if group_size < 1 or num_channels % group_size != 0:
            raise ValueError(
                f"GroupSort: num_channels {num_channels} must be a multiple of group_size {group_size}"
            )
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        _check_channels(x, self.num_channels, "GroupSort")
        b, c, *spatial = x.shape
        grouped = x.reshape(b, c // self.group_size, self.group_size, *spatial)
        if self.group_size == 2:
            first, second = grouped.unbind(dim=2)
            out = torch.stack([torch.maximum(first, second), torch.minimum(first, second)], dim=2)
        else:
            out = grouped.sort(dim=2, descending=True).values
        return out.reshape(x.shape)


class HouseHolder(Activation):
    """Order-1 HouseHolder activation (Singla, Singla & Feizi, ICLR 2022).

    Channels are paired as (z1, z2) = (first half, second half). With a learned unit vector
    ``v_c = (cos theta_c, sin theta_c)`` per pair, ``z -> z`` if ``v^T z > 0`` and
    ``z -> (I - 2 v v^T) z`` otherwise. Both pieces are orthogonal and agree on the hyperplane
    ``v^T z = 0``, so the map is continuous, 1-Lipschitz and gradient-norm preserving without
    any rescaling.
    """

    def __init__(self, num_channels: int, init_angle: float = math.pi / 2) -> None:
        super().__init__(num_channels)
        if num_channels % 2 != 0:
            raise ValueError(f"HouseHolder: num_channels must be even, got {num_channels}")
        self.theta = nn.Parameter(torch.full((num_channels // 2,), float(init_angle)))

    def forward(self, x: Tensor) -> Tensor:
        _check_channels(x, self.num_channels, "HouseHolder")
        z1, z2 = x.chunk(2, dim=1)
        shape = (-1, *([1] * (x.dim() - 2)))
        v1 = torch.cos(self.theta).view(shape)
        v2 = torch.sin(self.theta).view(shape)
        projection = z1 * v1 + z2 * v2
        reflect = (projection < 0).to(x.dtype) * (2 * projection)
        return torch.cat([z1 - reflect * v1, z2 - reflect * v2], dim=1)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "spline": LinearSpline,
    "relu": ReLU,
    "absolute_value": AbsoluteValue,
    "prelu": ClippedPReLU,
    "groupsort": GroupSort,
    "householder": HouseHolder,
}
ACTIVATION_ALIASES = {"maxmin": "groupsort", "abs": "absolute_value"}


def make_activation(name: str, num_channels: int, **kwargs) -> nn.Module:
    """Build a 1-Lipschitz activation by name for ``num_channels`` channels.

    Names: ``spline``, ``relu``, ``absolute_value``, ``prelu``, ``groupsort`` (alias
    ``maxmin``: group size 2), ``householder``. Keyword arguments go to the constructor.
    """
    key = ACTIVATION_ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)} (alias: maxmin)"
        )
    return ACTIVATIONS[key](num_channels, **kwargs)
