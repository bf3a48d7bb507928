"""PnP-DRS (= PnP-ADMM): plug-and-play Douglas-Rachford splitting with a 1-Lipschitz denoiser.

Iteration on the Douglas-Rachford variable z (B, C, H, W), which is not an image::

    x      = prox_{gamma f}(z)                           (data_step; x is the image estimate)
    r      = 2 x - z                                     (R_f z, R_f = 2 prox_{gamma f} - Id)
    z_next = (1 - lam) z + lam ((1 - 2 theta) r + 2 theta N(r))   (prior_step R_D, relaxation)

Theorem (hypotheses checked by :meth:`DRSParams.hypotheses`): R_f is nonexpansive for any
gamma > 0 (f convex, its prox firmly nonexpansive). With Lip(N) <= 1 and 0 < theta <= 1/2,
D = (1 - theta) Id + theta N is firmly nonexpansive, so R_D = 2 D - Id = (1 - 2 theta) Id +
2 theta N is nonexpansive, hence R_D R_f too; its relaxation with lam in (0, 1) is lam-averaged
and converges (Krasnosel'skii-Mann; lam = 1/2 is classical Douglas-Rachford). ADMM on the same
splitting is this iteration in other variables. A box constraint does not apply: z is no image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from lipden.optim.base import Conditions, Params, Splitting, denoiser_violations, register, relax
from lipden.optim.data import Operator


@dataclass(frozen=True)
class DRSParams(Params):
    """gamma = ``step`` (the prox parameter, > 0), theta = ``strength`` (in (0, 1/2]),
    lam = ``relaxation`` (in (0, 1))."""

    step: float = 1.0
    strength: float = 0.5
    relaxation: float = 0.5

    @classmethod
    def defaults(cls, lipschitz_sq: float, given: Mapping[str, float] | None = None) -> dict[str, float]:
        """step 1, strength 1/2, relaxation 1/2 (classical Douglas-Rachford)."""
        return {"step": 1.0, "strength": 0.5, "relaxation": 0.5}

    def averagedness(self, lipschitz_sq: float) -> float:
        """lam: the iteration is (1 - lam) Id + lam R_D R_f."""
        return self.relaxation

    def hypotheses(self, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
        """Lip(N) <= 1, gamma > 0, 0 < theta <= 1/2, 0 < lam < 1 (module docstring)."""
        violations = denoiser_violations(denoiser_lipschitz)
        gamma, theta, lam = self.step, self.strength, self.relaxation
        if not gamma > 0:
            violations.append(f"step (prox parameter) {gamma:.6g} must be > 0")
        if not 0 < theta <= 0.5:
            violations.append(f"strength {theta:.6g} is outside (0, 1/2] (D must be firmly nonexpansive)")
        if not 0 < lam < 1:
            violations.append(f"relaxation {lam:.6g} is outside (0, 1)")
        theorem = (
            "PnP-DRS: R_D R_f is nonexpansive when D is firmly nonexpansive; its relaxed "
            "iteration converges (Krasnosel'skii-Mann)"
        )
        return Conditions(not violations, theorem, tuple(violations))


@register
@dataclass(frozen=True)
class PnPDRS(Splitting[DRSParams]):
    """PnP-DRS / PnP-ADMM: the iterate z is the Douglas-Rachford variable; the image estimate is
    x = prox_{gamma f}(z). No set holding the fixed points is known (no Anderson projection)."""

    name: ClassVar[str] = "pnp-drs"
    params_type: ClassVar[type[Params]] = DRSParams

    def data_step(self, z: Tensor) -> Tensor:
        """prox_{gamma f}(z) (firmly nonexpansive)."""
        return self.data.prox(z, self.params.step)

    def prior_step(self, r: Tensor) -> Tensor:
        """R_D r = (1 - 2 theta) r + 2 theta N(r): nonexpansive for theta <= 1/2."""
        theta = self.params.strength
        return (1 - 2 * theta) * r + 2 * theta * self.denoise(r)

    def step(self, z: Tensor) -> Tensor:
        """(1 - lam) z + lam R_D R_f z."""
        return relax(z, self.prior_step(2 * self.data_step(z) - z), self.params.relaxation, convex=True)

    def estimate(self, z: Tensor) -> Tensor:
        """x = prox_{gamma f}(z)."""
        return self.data_step(z)

    def fixed_point_projection(self) -> Operator | None:
        return None
