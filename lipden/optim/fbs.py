"""PnP-FBS: plug-and-play forward-backward splitting with a 1-Lipschitz denoiser.

Iteration on images x (B, C, H, W)::

    v      = x - gamma grad f(x)                    (data_step: a gradient step on f)
    d      = P_C((1 - theta) v + theta N(v))        (prior_step: D = (1 - theta) Id + theta N, then the box)
    x_next = x + lam (d - x)                        (relaxation)

Theorem (hypotheses checked by :meth:`FBSParams.hypotheses`): let Lip(N) <= 1, 0 < gamma <= 2/L
(L = ||A^T A||) and 0 < theta <= 1. D is theta-averaged; Id - gamma grad f is (gamma L / 2)-averaged
for gamma < 2/L (Baillon-Haddad), nonexpansive at gamma = 2/L. When theta < 1 and gamma < 2/L their
composition T is alpha-averaged with alpha = (a1 + a2 - 2 a1 a2) / (1 - a1 a2), a1 = theta,
a2 = gamma L / 2 (Combettes & Yamada 2015, Prop. 2.4), i.e. T = (1 - alpha) Id + alpha R with R
nonexpansive; the relaxed step is (1 - lam alpha) Id + lam alpha R and converges for lam in
(0, 1/alpha) (over-relaxation beyond 1 is allowed and speeds the solve up). Otherwise T is only
nonexpansive and lam in (0, 1) converges (Krasnosel'skii-Mann). With box bounds the step is
P_C o T, C = {lower <= x <= upper}: P_C is 1/2-averaged, so P_C o T is 1/(2 - alpha)-averaged by
the same rule, lam in (0, 2 - alpha), and every limit lies in C.
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
    relax,
)


def fbs_averagedness(strength: float, half_step_l: float, projected: bool = False) -> float:
    """Averagedness of [P_C o] D o (Id - gamma grad f), with D = (1 - strength) Id + strength N
    and ``half_step_l`` = gamma L / 2; P_C (a box projection) is 1/2-averaged. The relaxation
    near the largest this allows is ``lipden.optim.base.fbs_fast_relaxation``."""
    return composed_averagedness(strength, half_step_l, *((0.5,) if projected else ()))


@dataclass(frozen=True)
class FBSParams(Params):
    """gamma = ``step`` (in (0, 2/L]), theta = ``strength`` (in (0, 1]), lam = ``relaxation``
    (in (0, 1/alpha)), and the optional box ``lower`` <= x <= ``upper``."""

    step: float
    strength: float = 0.5
    relaxation: float = 1.0
    lower: float | None = None
    upper: float | None = None

    @classmethod
    def defaults(cls, lipschitz_sq: float, given: Mapping[str, float] | None = None) -> dict[str, float]:
        """step 1/L, strength 1/2, relaxation 1."""
        return {"step": 1.0 / lipschitz_sq, "strength": 0.5, "relaxation": 1.0}

    def averagedness(self, lipschitz_sq: float) -> float:
        """lam alpha: the relaxed step is (1 - lam alpha) Id + lam alpha R."""
        projected = self.box() is not None
        return self.relaxation * fbs_averagedness(self.strength, self.step * lipschitz_sq / 2, projected)

    def hypotheses(self, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
        """Lip(N) <= 1, 0 < gamma <= 2/L, 0 < theta <= 1, 0 < lam < 1/alpha (module docstring)."""
        violations = denoiser_violations(denoiser_lipschitz)
        L, projected = float(lipschitz_sq), self.box() is not None
        gamma, theta, lam = self.step, self.strength, self.relaxation
        if not 0 < gamma <= 2 / L:
            violations.append(f"step {gamma:.6g} is outside (0, 2/L] = (0, {2 / L:.6g}]")
        if not 0 < theta <= 1:
            violations.append(f"strength {theta:.6g} is outside (0, 1]")
        alpha = fbs_averagedness(theta, gamma * L / 2, projected)
        if not 0 < lam < 1 / alpha:
            violations.append(
                f"relaxation {lam:.6g} must be in (0, 1/alpha) = (0, {1 / alpha:.6g})"
                + (" (T is only nonexpansive when strength = 1 or step = 2/L)" if alpha >= 1 else
                   f" (T is {alpha:.4g}-averaged)")
            )
        theorem = (
            "PnP-FBS: D(x - gamma grad f) with D averaged and gamma in (0, 2/L) is an averaged "
            "operator; its (relaxed) fixed-point iteration converges (Krasnosel'skii-Mann)"
            + ("; the projection onto the box keeps it averaged" if projected else "")
        )
        return Conditions(not violations, theorem, tuple(violations))


@register
@dataclass(frozen=True)
class PnPFBS(Splitting[FBSParams]):
    """PnP-FBS on images x (B, C, H, W): the iterate is the image; ``estimate`` projects it onto
    the box (an over-relaxed iterate may step outside it, its limit does not)."""

    name: ClassVar[str] = "pnp-fbs"
    params_type: ClassVar[type[Params]] = FBSParams

    def data_step(self, x: Tensor) -> Tensor:
        """x - gamma grad f(x): (gamma L / 2)-averaged for gamma < 2/L."""
        return x - self.params.step * self.data.gradient(x)

    def prior_step(self, v: Tensor) -> Tensor:
        """P_C((1 - theta) v + theta N(v)): theta-averaged D, then the box projection."""
        theta = self.params.strength
        return self.project((1 - theta) * v + theta * self.denoise(v))

    def step(self, z: Tensor) -> Tensor:
        """x + lam (P_C D (x - gamma grad f(x)) - x)."""
        return relax(z, self.prior_step(self.data_step(z)), self.params.relaxation)
