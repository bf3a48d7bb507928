"""1-Lipschitz linear layers with signatures that mirror ``nn.Conv2d`` and ``nn.Linear``.

- :class:`OrthoConv2d`: orthogonal convolution (BCOP, Li et al. 2019). With circular padding
  and C_in == C_out the operator is orthogonal; with C_in != C_out it is an isometry or a
  co-isometry (all singular values 1). With zero padding it is 1-Lipschitz.
- :class:`SpectralNormConv2d`: a free kernel divided by the norm of the actual convolution
  operator (not of the reshaped kernel), estimated by power iteration.
- :func:`make_conv`: the factory that builds one of them (or a plain ``nn.Conv2d``) by name.

All take and return (B, C, H, W) (stride 1, 'same' size). The fully connected
:class:`~lipden.nn.linear.BjorckLinear` is in :mod:`lipden.nn.linear`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypedDict, cast

import torch
from torch import Tensor, nn

from lipden.nn.constrained import ConstrainedLayer
from lipden.nn.conv_ops import (
    EXACT_NORM_MAX_PIXELS,
    PaddingMode,
    check_padding_mode,
    conv2d_same,
    conv2d_same_adjoint,
    conv_operator_norm_bound,
)
from lipden.nn.orthogonal import bcop_kernels
from lipden.nn.precision import autocast_disabled


class _Factory(TypedDict):
    """``device`` and ``dtype`` keyword arguments of the tensor factories (``torch.empty`` ...)."""

    device: torch.device | str | None
    dtype: torch.dtype | None


def _square_odd_kernel(kernel_size: int | tuple[int, int]) -> int:
    if isinstance(kernel_size, tuple):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise ValueError(f"kernel_size must be square, got {kernel_size}")
        kernel_size = kernel_size[0]
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return int(kernel_size)


def _check_conv_args(stride: int, padding: str | int, kernel_size: int) -> None:
    if stride != 1:
        raise ValueError(f"only stride=1 is supported, got {stride}")
    if padding not in ("same", kernel_size // 2):
        raise ValueError(f"only 'same' padding (= {kernel_size // 2}) is supported, got {padding!r}")


def _check_input(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected input of shape (B, {channels}, H, W), got {tuple(x.shape)}")


class LipschitzConv2d(ConstrainedLayer[Tensor]):
    """Base of the 1-Lipschitz convolutions: a stride-1 'same' conv with nn.Conv2d's attribute
    names, whose weight a subclass constrains; forward, certificate, output shape and export."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding_mode: PaddingMode
    bias: nn.Parameter | None  # registered by subclasses after their weights (checkpoint order)

    def _init_conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int,
        padding: str | int,
        bias: bool,
        padding_mode: str,
        factory: _Factory,
    ) -> None:
        """Validate the nn.Conv2d-like arguments and set the attributes shared by all convs."""
        kernel_size = _square_odd_kernel(kernel_size)
        _check_conv_args(stride, padding, kernel_size)
        valid_padding_mode = check_padding_mode(padding_mode)
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding_mode = valid_padding_mode

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, type(self).__name__)
        return conv2d_same(x, self.constrained_weight(), self.bias, self.padding_mode)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(B, out_channels, H, W) for (B, in_channels, H, W): stride 1, 'same' padding."""
        return (input_shape[0], self.out_channels, *input_shape[2:])

    def lipschitz_certificate(self, input_shape: tuple[int, ...]) -> float:
        """Certified upper bound of the layer's Lipschitz constant on (B, C, H, W) inputs.

        Computed from the eval-mode weight; memoized until the parameters change.
        """
        size = (input_shape[-2], input_shape[-1])
        # above EXACT_NORM_MAX_PIXELS the bound is the same for every size: one cache entry
        key = (self._state_key(), size if size[0] * size[1] <= EXACT_NORM_MAX_PIXELS else "any size")
        cached = getattr(self, "_certificate_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():  # eval mode: the cached weight the forward pass uses
            weight = self.inference_weight() if self.training else self.constrained_weight()
        bound = conv_operator_norm_bound(weight, size, self.padding_mode)
        self._certificate_cache = (key, bound)
        return bound

    def to_conv2d(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` computing the same function (eval-mode weight)."""
        weight = self.inference_weight().detach()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            padding=self.kernel_size // 2,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                assert conv.bias is not None  # built with bias=True
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, padding_mode={self.padding_mode!r}"
        )


class OrthoConv2d(LipschitzConv2d):
    """Orthogonal convolution by block convolution orthogonal parameterization (BCOP).

    With ``c = max(C_in, C_out)``, the c x c kernel is
    ``H * [P_1, I - P_1] * ... * [P_{k-1}, I - P_{k-1}] * [R_1; I - R_1] * ...`` where ``*`` is
    kernel composition, H is Björck-orthonormal and each P = Q Q^T (R likewise) is a
    symmetric projector from a Björck-orthonormal Q (c x c/2). Each 1x2 / 2x1 block has a
    unitary symbol ``P + (I - P) e^{-i w}`` at every frequency, so the composed kernel is
    paraunitary: the circular convolution is orthogonal at every image size. The
    (C_out, C_in) kernel is the top-left block, so all its singular values are 1.
    Even before Björck converges, H and P have norms <= 1 and the symbol stays a
    contraction, so the layer is 1-Lipschitz at any iteration count.

    Args mirror ``nn.Conv2d``; only stride 1 and 'same' padding are supported.
    padding_mode: ``"circular"`` (orthogonal; the paper's choice) or ``"zeros"``.
    bjorck_iters: Björck iterations for every matrix, in training and in eval.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: str | int = "same",
        bias: bool = True,
        padding_mode: str = "circular",
        bjorck_iters: int = 15,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: _Factory = {"device": device, "dtype": dtype}
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, bias, padding_mode, factory)
        self.bjorck_iters = bjorck_iters
        channels = max(in_channels, out_channels)
        self.channels = channels
        rank = max(1, channels // 2)
        self.orthogonal_matrix = nn.Parameter(torch.empty(channels, channels, **factory))
        self.projector_matrices = nn.Parameter(
            torch.empty(2 * (self.kernel_size - 1), channels, rank, **factory)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.orthogonal_matrix)
        for matrix in self.projector_matrices:
            nn.init.orthogonal_(matrix)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def training_weight(self) -> Tensor:
        kernel = bcop_kernels(self.orthogonal_matrix[None], self.projector_matrices[None], self.kernel_size, self.bjorck_iters)
        return kernel[0, : self.out_channels, : self.in_channels]

    def _batch_key(self) -> tuple:
        """Layers with equal keys have their weights computed in one batched pass."""
        p = self.orthogonal_matrix
        return (self.channels, self.projector_matrices.shape, self.kernel_size, self.bjorck_iters, p.dtype, p.device)


def batched_training_weights(layers: list[OrthoConv2d]) -> list[Tensor]:
    """``[layer.training_weight() for layer in layers]``, with the layers of equal shape
    (and Björck iterations, dtype, device) computed together: one batched pass per group
    (the same arithmetic, batched; equal up to float round-off)."""
    groups: dict[tuple, list[int]] = {}
    for index, layer in enumerate(layers):
        groups.setdefault(layer._batch_key(), []).append(index)
    weights: list[Tensor | None] = [None] * len(layers)
    for indices in groups.values():
        first = layers[indices[0]]
        kernels = bcop_kernels(
            torch.stack([layers[i].orthogonal_matrix for i in indices]),
            torch.stack([layers[i].projector_matrices for i in indices]),
            first.kernel_size, first.bjorck_iters,
        )
        for position, i in enumerate(indices):
            weights[i] = kernels[position, : layers[i].out_channels, : layers[i].in_channels]
    return [w for w in weights if w is not None]


@contextmanager
def shared_training_weights(module: nn.Module) -> Iterator[None]:
    """Within this block, the training-mode :class:`OrthoConv2d` layers of ``module`` use
    weights computed together by :func:`batched_training_weights` (once, before the block)
    instead of one parametrisation pass each. Outside training mode it does nothing."""
    layers = [m for m in module.modules() if isinstance(m, OrthoConv2d) and m.training]
    if len(layers) < 2:
        yield
        return
    with autocast_disabled(layers[0].orthogonal_matrix.device.type):
        weights = batched_training_weights(layers)
    for layer, weight in zip(layers, weights, strict=True):
        layer.shared_weight = weight
    try:
        yield
    finally:
        for layer in layers:
            layer.shared_weight = None


class SpectralNormConv2d(LipschitzConv2d):
    """Convolution with its kernel divided by the spectral norm of the convolution operator.

    The norm ``||A||`` of the actual padded convolution on a ``power_iteration_size`` image
    is estimated by power iteration with a persistent vector: ``power_iterations`` steps per
    training forward pass (the gradient flows through ``||A u||`` as in Miyato et al.), and
    iterated to convergence (relative change < ``eval_tolerance``) for the cached eval
    weight. The layer is then 1-Lipschitz up to the power-iteration accuracy on images of
    that size, and for circular padding on sizes dividing it, for zero padding on smaller
    sizes; ``lipschitz_certificate`` gives the certified value for any size.

    Args mirror ``nn.Conv2d``; only stride 1 and 'same' padding are supported.
    """

    power_vector: Tensor  # buffer (registered in __init__), (1, C_in, size, size), unit norm

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: str | int = "same",
        bias: bool = True,
        padding_mode: str = "zeros",
        power_iterations: int = 1,
        power_iteration_size: int = 64,
        eval_tolerance: float = 1e-9,
        eval_max_iterations: int = 2000,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: _Factory = {"device": device, "dtype": dtype}
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, bias, padding_mode, factory)
        if power_iterations < 0:
            raise ValueError(f"power_iterations must be >= 0, got {power_iterations}")
        self.power_iterations = power_iterations
        self.eval_tolerance = eval_tolerance
        self.eval_max_iterations = eval_max_iterations
        k = self.kernel_size
        self.raw_weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k, **factory))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        size = power_iteration_size
        self.register_buffer("power_vector", torch.randn(1, in_channels, size, size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.raw_weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        with torch.no_grad():
            self.power_vector.normal_()
            self.power_vector /= self.power_vector.norm()

    def _power_step(self, u: Tensor, kernel: Tensor) -> Tensor:
        u = conv2d_same_adjoint(conv2d_same(u, kernel, None, self.padding_mode), kernel, self.padding_mode)
        return u / u.norm().clamp(min=torch.finfo(u.dtype).tiny)

    def _normalized(self, kernel: Tensor, u: Tensor) -> Tensor:
        sigma = conv2d_same(u, kernel, None, self.padding_mode).norm()
        return kernel / sigma

    def training_weight(self) -> Tensor:
        kernel = self.raw_weight
        with torch.no_grad():
            u = self.power_vector
            for _ in range(self.power_iterations):
                u = self._power_step(u, kernel)
            if self.training:
                self.power_vector.copy_(u)
        return self._normalized(kernel, u)

    def inference_weight(self) -> Tensor:
        kernel = self.raw_weight
        with torch.no_grad():
            u = self.power_vector.clone()
            previous = 0.0
            for _ in range(self.eval_max_iterations):
                u = self._power_step(u, kernel)
                sigma = float(conv2d_same(u, kernel, None, self.padding_mode).norm())
                if abs(sigma - previous) <= self.eval_tolerance * sigma:
                    break
                previous = sigma
        return self._normalized(kernel, u)


CONV_KINDS = ("ortho", "spectral", "free")


def make_conv(
    kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
    padding_mode: str = "circular",
) -> nn.Module:
    """A stride-1 'same' convolution by kind: ``"ortho"`` (:class:`OrthoConv2d`), ``"spectral"``
    (:class:`SpectralNormConv2d`), both 1-Lipschitz, or ``"free"`` (a plain, unconstrained
    ``nn.Conv2d``, for baselines). Raises ValueError for an unknown kind or impossible settings."""
    if kind == "ortho":
        return OrthoConv2d(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
    if kind == "spectral":
        return SpectralNormConv2d(in_channels, out_channels, kernel_size, bias=bias, padding_mode=padding_mode)
    if kind != "free":
        raise ValueError(f"unknown convolution kind {kind!r}; choose from {', '.join(CONV_KINDS)}")
    # nn.Conv2d validates padding_mode itself (any of its four modes is allowed here)
    mode = cast(Literal["zeros", "reflect", "replicate", "circular"], padding_mode)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, padding_mode=mode)
