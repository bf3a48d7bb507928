"""RED: regularization by denoising with a 1-Lipschitz denoiser, as a (projected) gradient-type step.

Iteration on images x (B, C, H, W)::

    x_next = P_C(x - tau (grad f(x) + mu (x - N(x))))    (data_step: grad f; prior_step: mu (Id - N))

Theorem (hypotheses checked by :meth:`REDParams.hypotheses`): grad f is 1/L-cocoercive
(Baillon-Haddad, L = ||A^T A||) and, if Lip(N) <= 1, Id - N is 1/2-cocoercive, so their sum
B = grad f + mu (Id - N) is 1/(L + 2 mu)-cocoercive and Id - tau B is averaged for mu > 0 and
0 < tau < 2 / (L + 2 mu): the iteration converges to a zero of B (a RED fixed point) when one
exists. N need not be a gradient. With box bounds the step is P_C o (Id - tau B), still averaged:
it converges to a solution in C of the variational inequality <B x, y - x> >= 0 for all y in C,
when one exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from lipden.optim.base import (
    Conditions,
    Params,
    Splitting,
    composed_averagedness,
    denoiser_violations,
    register,
)


@dataclass(frozen=True)
class REDParams(Params):
    """mu = ``weight`` (> 0), tau = ``step`` (in (0, 2/(L + 2 mu))), the optional box
    ``lower`` <= x <= ``upper``."""

    weight: float
    step: float
    lower: float | None = None
    upper: float | None = None

    @classmethod
    def defaults(cls, lipschitz_sq: float, given: Mapping[str, float] | None = None) -> dict[str, float]:
        """weight mu = 1 (or the given one) and step 1.8/(L + 2 mu): inside the bound 2/(L + 2 mu)
        whatever mu is."""
        weight = float((given or {}).get("weight", 1.0))
        return {"weight": weight, "step": 1.8 / (lipschitz_sq + 2.0 * weight)}

    def averagedness(self, lipschitz_sq: float) -> float:
        """tau / (2 beta) with beta = 1/(L + 2 mu) (composed with the 1/2-averaged P_C on a box)."""
        beta = 1 / (lipschitz_sq + 2 * self.weight)
        alpha = self.step / (2 * beta)
        return composed_averagedness(alpha, 0.5) if self.box() is not None else alpha

    def hypotheses(self, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
        """Lip(N) <= 1, mu > 0, 0 < tau < 2/(L + 2 mu) (module docstring)."""
        violations = denoiser_violations(denoiser_lipschitz)
        L, mu, tau = float(lipschitz_sq), self.weight, self.step
        if not mu > 0:
            violations.append(f"weight {mu:.6g} must be > 0")
        elif not 0 < tau < 2 / (L + 2 * mu):
            violations.append(f"step {tau:.6g} is outside (0, 2/(L + 2 weight)) = (0, {2 / (L + 2 * mu):.6g})")
        theorem = (
            "RED: grad f + mu (Id - N) is 1/(L + 2 mu)-cocoercive, so the gradient-type step "
            "with tau < 2/(L + 2 mu) is averaged and converges"
            + (" (projected onto the box: still averaged)" if self.box() is not None else "")
        )
        return Conditions(not violations, theorem, tuple(violations))


@register
@dataclass(frozen=True)
class RED(Splitting[REDParams]):
    """RED on images x (B, C, H, W): the iterate is the image (inside the box when there is one)."""

    name: ClassVar[str] = "red"
    params_type: ClassVar[type[Params]] = REDParams

    def data_step(self, x: Tensor) -> Tensor:
        """grad f(x) (1/L-cocoercive)."""
        return self.data.gradient(x)

    def prior_step(self, x: Tensor) -> Tensor:
        """mu (x - N(x)): 1/(2 mu)-cocoercive when Lip(N) <= 1."""
        return self.params.weight * (x - self.denoise(x))

    def step(self, z: Tensor) -> Tensor:
        """P_C(x - tau (grad f(x) + mu (x - N(x))))."""
        return self.project(z - self.params.step * (self.data_step(z) + self.prior_step(z)))
