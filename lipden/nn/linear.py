"""A 1-Lipschitz fully connected layer whose arguments mirror ``nn.Linear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipden.nn.constrained import ConstrainedLayer
from lipden.nn.orthogonal import bjorck_orthonormalize


class BjorckLinear(ConstrainedLayer[Tensor]):
    """Fully connected layer ``y = W x + b`` with W Björck-orthonormalized (rows or columns).

    Every singular value of W is in [0, 1] at any iteration count, and 1 up to round-off
    once converged: the layer is 1-Lipschitz, and gradient-norm preserving when square.

    Args mirror ``nn.Linear``. Input (B, in_features), output (B, out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bjorck_iters: int = 15,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bjorck_iters = bjorck_iters
        self.raw_weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.orthogonal_(self.raw_weight)

    def training_weight(self) -> Tensor:
        return bjorck_orthonormalize(self.raw_weight, self.bjorck_iters)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"BjorckLinear: expected last dimension {self.in_features}, got {tuple(x.shape)}"
            )
        return F.linear(x, self.constrained_weight(), self.bias)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:-1], self.out_features)

    def lipschitz_certificate(self, input_shape: tuple[int, ...] | None = None) -> float:
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(self.inference_weight().double(), ord=2))

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (eval-mode weight)."""
        weight = self.inference_weight().detach()
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=weight.device, dtype=weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                assert linear.bias is not None  # built with bias=True
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
