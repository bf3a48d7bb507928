"""Averaged operators ``T = (1 - alpha) Id + alpha R``: the form the convergent solvers need."""

from __future__ import annotations

from torch import Tensor, nn


class Averaged(nn.Module):
    """``T(x) = (1 - alpha) x + alpha R(x)``.

    If R is nonexpansive (1-Lipschitz) and ``0 < alpha < 1``, T is alpha-averaged; with
    ``alpha = 1/2`` it is firmly nonexpansive. Then its fixed-point iteration converges
    (Krasnosel'skii-Mann) and T is the kind of operator PnP proofs require.
    Shape: whatever R takes, e.g. (B, C, H, W).
    """

    def __init__(self, inner: nn.Module, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.inner = inner
        self.alpha = float(alpha)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return (1 - self.alpha) * x + self.alpha * self.inner(x, *args, **kwargs)

    def lipschitz_certificate(self, input_shape: tuple[int, ...]) -> float:
        """Certified Lipschitz bound ``(1 - alpha) + alpha Lip(R)``."""
        from lipden.certify.bounds import lipschitz_upper_bound

        return (1 - self.alpha) + self.alpha * lipschitz_upper_bound(self.inner, input_shape)
