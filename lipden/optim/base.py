"""Provably convergent Plug-and-Play and RED iterations with a nonexpansive denoiser N.

Data fidelity f(x) = 1/2 ||A x - y||^2, whose gradient A^T (A x - y) is L-Lipschitz with
L = ||A^T A||, and whose prox (deepinv ``physics.prox_l2``) is firmly nonexpansive.
Each method is the fixed-point iteration of an operator T that the stated theorem makes
averaged (or nonexpansive with Krasnosel'skii-Mann relaxation). For such iterations,
if T has a fixed point, x_k converges to one and the fixed-point residual
||x_{k+1} - x_k|| is non-increasing (Bauschke & Combettes, Convex Analysis and Monotone
Operator Theory, Prop. 5.16 and Thm. 5.15).

``conditions(...)`` checks the theorem's hypotheses for given parameters and says which
theorem applies; ``make_step(...)`` returns one iteration z -> T(z) and the map from the
iterate to the image estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

METHODS = ("pnp-fbs", "pnp-drs", "red")
ALIASES = {"pnp-admm": "pnp-drs", "admm": "pnp-drs", "fbs": "pnp-fbs", "drs": "pnp-drs"}

Operator = Callable[[Tensor], Tensor]


class ConvergenceConditionError(ValueError):
    """The parameters violate the hypotheses of the method's convergence theorem."""


@dataclass(frozen=True)
class Conditions:
    """The outcome of checking a method's hypotheses."""

    holds: bool
    theorem: str
    violations: tuple[str, ...] = ()


def canonical_method(method: str) -> str:
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)} (or pnp-admm)")
    return name


def default_parameters(method: str, lipschitz_sq: float, given: dict | None = None) -> dict:
    """Safe defaults: step 1/L for PnP-FBS, gamma 1 for DRS, weight mu = 1 and step 1.8/(L + 2 mu) for RED.

    The RED step depends on the weight: with a ``given`` weight mu (and no given step) the
    default step is 1.8/(L + 2 mu), inside RED's bound 2/(L + 2 mu), whatever mu is.
    """
    method = canonical_method(method)
    if method == "pnp-fbs":
        return {"step": 1.0 / lipschitz_sq, "strength": 0.5, "relaxation": 1.0}
    if method == "pnp-drs":
        return {"step": 1.0, "strength": 0.5, "relaxation": 0.5}
    weight = float((given or {}).get("weight", 1.0))
    return {"weight": weight, "step": 1.8 / (lipschitz_sq + 2.0 * weight)}


#: Optional parameters: the bounds of a box constraint lower <= x <= upper (either may be
#: left out), enforced by projecting after the denoiser (pnp-fbs) or after the step (red).
BOUND_PARAMETERS = ("lower", "upper")
_BOUNDED_METHODS = ("pnp-fbs", "red")


def parameter_names(method: str) -> tuple[str, ...]:
    """Every parameter ``method`` accepts: its defaults, plus the box bounds where supported."""
    names = tuple(default_parameters(method, 1.0))
    return names + BOUND_PARAMETERS if canonical_method(method) in _BOUNDED_METHODS else names


def box_bounds(params: dict) -> tuple[float | None, float | None] | None:
    """``(lower, upper)`` of the box constraint in ``params``, or None when there is none."""
    lower, upper = params.get("lower"), params.get("upper")
    return None if lower is None and upper is None else (lower, upper)


def fixed_point_projection(method: str, params: dict) -> Callable[[Tensor], Tensor] | None:
    """The projection onto a closed convex set that contains every fixed point of T, or None.

    With box bounds (pnp-fbs, red) every fixed point is the output of the box projection,
    hence lies in the box C, and P_C moves no point farther from any of them
    (``||P_C v - p|| <= ||v - p||`` for p in C): ``lipden.optim.anderson`` uses it on its
    extrapolations. Without bounds, or for pnp-drs (whose iterate is not an image), None.
    """
    bounds = box_bounds(params)
    if bounds is None or canonical_method(method) not in _BOUNDED_METHODS:
        return None
    lower, upper = bounds

    def project(x: Tensor) -> Tensor:
        return x.clamp(lower, upper)

    return project


def conditions(method: str, params: dict, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
    """Check the convergence theorem of ``method`` for these parameters.

    ``denoiser_lipschitz`` is a certified bound of Lip(N) (None: not certified).

    - pnp-fbs: x+ = (1 - lam) x + lam D(x - gamma grad f(x)), D = (1 - theta) Id + theta N.
      If Lip(N) <= 1, D is theta-averaged; Id - gamma grad f is (gamma L / 2)-averaged for
      0 < gamma < 2/L (Baillon-Haddad), nonexpansive at gamma = 2/L. When theta < 1 and
      gamma < 2/L their composition T is alpha-averaged with alpha = (a1 + a2 - 2 a1 a2) /
      (1 - a1 a2), a1 = theta, a2 = gamma L / 2 (Combettes & Yamada 2015, Prop. 2.4), i.e.
      T = (1 - alpha) Id + alpha R with R nonexpansive, so the relaxed step is
      (1 - lam alpha) Id + lam alpha R: it converges for lam in (0, 1/alpha) (over-relaxation
      beyond 1 is allowed and speeds the solve up). Otherwise T is only nonexpansive and
      lam in (0, 1) converges (Krasnosel'skii-Mann). With box bounds (``lower`` / ``upper``)
      the step is P_C o T, C = {lower <= x <= upper}: P_C is firmly nonexpansive (1/2-averaged),
      so P_C o T is 1/(2 - alpha)-averaged by the same composition rule, lam in (0, 2 - alpha),
      and every limit lies in C.
    - pnp-drs (= ADMM): z+ = (1 - lam) z + lam R_D R_f z, x = prox_{gamma f}(z), with
      R = 2 P - Id. R_f is nonexpansive for any gamma > 0 (f convex); R_D = (1 - 2 theta) Id
      + 2 theta N is nonexpansive iff theta <= 1/2 when Lip(N) <= 1 (D firmly nonexpansive);
      then lam in (0, 1) converges (lam = 1/2: classical Douglas-Rachford).
    - red: x+ = x - tau (grad f(x) + mu (x - N(x))). grad f is 1/L-cocoercive and, if
      Lip(N) <= 1, Id - N is 1/2-cocoercive, so their sum B is 1/(L + 2 mu)-cocoercive and
      Id - tau B is averaged for 0 < tau < 2 / (L + 2 mu): the iteration converges to a zero
      of B (a RED fixed point) when one exists. N need not be a gradient. With box bounds
      the step is P_C o (Id - tau B), still averaged: it converges to a solution in C of the
      variational inequality <B x, y - x> >= 0 for all y in C, when one exists.
    """
    method = canonical_method(method)
    violations: list[str] = []
    if denoiser_lipschitz is None:
        violations.append("the denoiser has no certified Lipschitz bound")
    elif denoiser_lipschitz > 1:
        violations.append(f"the denoiser's certified Lipschitz bound is {denoiser_lipschitz:.6g} > 1")
    L = float(lipschitz_sq)
    bounds = box_bounds(params)
    if bounds is not None:
        if method not in _BOUNDED_METHODS:
            raise ValueError(f"box bounds (lower / upper) apply to {' and '.join(_BOUNDED_METHODS)}, not {method}")
        lower, upper = bounds
        if lower is not None and upper is not None and not lower < upper:
            raise ValueError(f"need lower < upper for the box constraint, got {lower} and {upper}")
    if method == "pnp-fbs":
        gamma, theta, lam = params["step"], params["strength"], params["relaxation"]
        if not 0 < gamma <= 2 / L:
            violations.append(f"step {gamma:.6g} is outside (0, 2/L] = (0, {2 / L:.6g}]")
        if not 0 < theta <= 1:
            violations.append(f"strength {theta:.6g} is outside (0, 1]")
        alpha = _fbs_averagedness(theta, gamma * L / 2, bounds is not None)
        if not 0 < lam < 1 / alpha:
            violations.append(
                f"relaxation {lam:.6g} must be in (0, 1/alpha) = (0, {1 / alpha:.6g})"
                + (" (T is only nonexpansive when strength = 1 or step = 2/L)" if alpha >= 1 else
                   f" (T is {alpha:.4g}-averaged)")
            )
        theorem = (
            "PnP-FBS: D(x - gamma grad f) with D averaged and gamma in (0, 2/L) is an averaged "
            "operator; its (relaxed) fixed-point iteration converges (Krasnosel'skii-Mann)"
            + ("; the projection onto the box keeps it averaged" if bounds is not None else "")
        )
    elif method == "pnp-drs":
        gamma, theta, lam = params["step"], params["strength"], params["relaxation"]
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
    else:
        mu, tau = params["weight"], params["step"]
        if not mu > 0:
            violations.append(f"weight {mu:.6g} must be > 0")
        elif not 0 < tau < 2 / (L + 2 * mu):
            violations.append(f"step {tau:.6g} is outside (0, 2/(L + 2 weight)) = (0, {2 / (L + 2 * mu):.6g})")
        theorem = (
            "RED: grad f + mu (Id - N) is 1/(L + 2 mu)-cocoercive, so the gradient-type step "
            "with tau < 2/(L + 2 mu) is averaged and converges"
            + (" (projected onto the box: still averaged)" if bounds is not None else "")
        )
    return Conditions(not violations, theorem, tuple(violations))


def make_step(
    method: str, params: dict, denoise: Operator, gradient: Operator, prox: Callable[[Tensor, float], Tensor]
) -> tuple[Operator, Operator, Callable[[Tensor], Tensor]]:
    """One iteration ``z -> T(z)``, the image estimate ``x(z)``, and the initial iterate ``z0(x0)``.

    ``denoise`` is N, ``gradient`` is grad f, ``prox(z, gamma)`` is prox_{gamma f}(z).
    """
    method = canonical_method(method)
    project = fixed_point_projection(method, params) or (lambda x: x)

    if method == "pnp-fbs":
        gamma, theta, lam = params["step"], params["strength"], params["relaxation"]

        def fbs(x: Tensor) -> Tensor:
            v = x - gamma * gradient(x)
            d = project((1 - theta) * v + theta * denoise(v))
            return x + lam * (d - x)

        # An over-relaxed iterate may step outside the box; its limit (a fixed point) does not.
        return fbs, project, lambda x: x
    if method == "pnp-drs":
        gamma, theta, lam = params["step"], params["strength"], params["relaxation"]

        def drs(z: Tensor) -> Tensor:
            x = prox(z, gamma)
            r = 2 * x - z
            reflected = (1 - 2 * theta) * r + 2 * theta * denoise(r)
            return (1 - lam) * z + lam * reflected

        return drs, lambda z: prox(z, gamma), lambda x: x
    mu, tau = params["weight"], params["step"]

    def red(x: Tensor) -> Tensor:
        return project(x - tau * (gradient(x) + mu * (x - denoise(x))))

    return red, project, lambda x: x


def averagedness(method: str, params: dict, lipschitz_sq: float) -> float | None:
    """The averagedness constant alpha of T (T = (1 - alpha) Id + alpha R, R nonexpansive)."""
    method = canonical_method(method)
    L = lipschitz_sq
    projected = box_bounds(params) is not None
    if method == "pnp-fbs":
        return params["relaxation"] * _fbs_averagedness(params["strength"], params["step"] * L / 2, projected)
    if method == "pnp-drs":
        return params["relaxation"]
    beta = 1 / (L + 2 * params["weight"])
    alpha = params["step"] / (2 * beta)
    return _composed_averagedness(alpha, 0.5) if projected else alpha


def _composed_averagedness(a1: float, a2: float) -> float:
    """Averagedness of the composition of an a1- and an a2-averaged operator (Combettes & Yamada
    2015, Prop. 2.4): (a1 + a2 - 2 a1 a2) / (1 - a1 a2); 1 (only nonexpansive) unless both are < 1."""
    if not (0 < a1 < 1 and 0 < a2 < 1):
        return 1.0
    return (a1 + a2 - 2 * a1 * a2) / (1 - a1 * a2)


def _fbs_averagedness(theta: float, half_step_l: float, projected: bool = False) -> float:
    """Averagedness of [P_C o] D o (Id - gamma grad f); P_C (a box projection) is 1/2-averaged."""
    alpha = _composed_averagedness(theta, half_step_l)
    return _composed_averagedness(alpha, 0.5) if projected else alpha


def fbs_fast_relaxation(
    step: float, strength: float, lipschitz_sq: float, margin: float = 0.95, projected: bool = False
) -> float:
    """PnP-FBS relaxation ``margin / alpha``: near the largest the theorem allows (lam < 1/alpha).

    Relaxation does not move the fixed point, only the speed of reaching it: on the MRI
    tuning slices (x4, step 1/L, strength 0.15) lam = 1.8 instead of 1 cut the iterations to
    a relative residual of 1e-5 from 935 / >1000 to 652 / 793.
    """
    return margin / _fbs_averagedness(strength, step * lipschitz_sq / 2, projected)
