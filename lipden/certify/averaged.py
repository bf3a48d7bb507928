"""Averaged operators ``T = (1 - alpha) Id + alpha R``: the form the convergent solvers need,
and the check that an operator is one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from lipden.certify.bounds import float64_eval_copy, lipschitz_lower_bound, lipschitz_upper_bound


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
        return (1 - self.alpha) + self.alpha * lipschitz_upper_bound(self.inner, input_shape)


@dataclass
class AveragednessReport:
    """Whether ``T = (1 - alpha) Id + alpha R`` with R nonexpansive.

    ``lower``: measured lower bound of Lip(R) (a violation if > 1 + tol);
    ``upper``: certified upper bound of Lip(R) when R's structure is known, else None.
    ``certified``: upper is known and <= 1 + tol; ``violated``: lower > 1 + tol.
    """

    alpha: float
    lower: float
    upper: float | None
    tolerance: float

    @property
    def certified(self) -> bool:
        return self.upper is not None and self.upper <= 1 + self.tolerance

    @property
    def violated(self) -> bool:
        return self.lower > 1 + self.tolerance


def check_averaged(
    operator: Callable[[Tensor], Tensor],
    input_shape: tuple[int, ...],
    alpha: float = 0.5,
    nonexpansive_part: nn.Module | None = None,
    tolerance: float = 1e-4,
    **lower_kwargs,
) -> AveragednessReport:
    """Check that ``operator`` is alpha-averaged (alpha = 1/2: firmly nonexpansive).

    T is alpha-averaged iff ``R = (T - (1 - alpha) Id) / alpha`` is nonexpansive. R's
    Lipschitz constant is bounded from below by search (falsifies the claim when > 1);
    if ``nonexpansive_part`` (the module R) is given, or ``operator`` is an
    :class:`~lipden.certify.averaged.Averaged` with the same alpha, R's certified upper bound proves it.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if nonexpansive_part is None and isinstance(operator, Averaged) and operator.alpha == alpha:
        nonexpansive_part = operator.inner
    op = float64_eval_copy(operator) if isinstance(operator, nn.Module) else operator

    def residual_map(x: Tensor) -> Tensor:
        return (op(x) - (1 - alpha) * x) / alpha

    lower = lipschitz_lower_bound(residual_map, input_shape, **lower_kwargs)
    upper = None
    if nonexpansive_part is not None:
        upper = lipschitz_upper_bound(nonexpansive_part, input_shape)
    return AveragednessReport(alpha=alpha, lower=lower, upper=upper, tolerance=tolerance)
