"""What every provably convergent PnP / RED method shares.

Data fidelity f(x) = 1/2 ||A x - y||^2 (``lipden.optim.data``): its gradient A^T (A x - y) is
L-Lipschitz with L = ||A^T A|| (``lipschitz_sq``), hence 1/L-cocoercive (Baillon-Haddad), and its
prox is firmly nonexpansive. Each method (``fbs.py``, ``drs.py``, ``red.py``) is the fixed-point
iteration z_{k+1} = T(z_k) of an operator T that its theorem makes averaged, T = (1 - alpha) Id +
alpha R with R nonexpansive and alpha in (0, 1), when the denoiser N is 1-Lipschitz and the step
sizes obey the theorem's bounds. If T has a fixed point, z_k converges to one and the fixed-point
residual ||z_{k+1} - z_k|| is non-increasing (Bauschke & Combettes, Convex Analysis and Monotone
Operator Theory, Prop. 5.16 and Thm. 5.15).

This module holds the pieces written once: the :class:`Method` protocol the runner iterates, the
base :class:`Splitting` of the three method classes and :class:`Params` of their typed parameters,
:class:`Conditions` (the outcome of checking a theorem's hypotheses), the errors, the
Krasnosel'skii-Mann relaxation :func:`relax`, the box projection P_C (C = {lower <= x <= upper},
firmly nonexpansive, so 1/2-averaged) and the averagedness of a composition.

:data:`METHODS` maps each name to its class; each method module registers its class
(:func:`register`) and ``lipden.optim`` imports the three, so the table is full whenever any
module of the package is in use. Over it, the string interface: a method named by a string with
its parameters as a dict, the form ``reconstruct``, the command line and the tuned-defaults
table use (:func:`conditions`, :func:`default_parameters`, :func:`averagedness`,
:func:`parameter_names`, :func:`make_step`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from torch import Tensor

from lipden.optim.data import CallableData, DataTerm, Operator

METHOD_NAMES = ("pnp-fbs", "pnp-drs", "red")
ALIASES = {"pnp-admm": "pnp-drs", "admm": "pnp-drs", "fbs": "pnp-fbs", "drs": "pnp-drs"}
#: Optional parameters: the bounds of a box constraint lower <= x <= upper (either may be left
#: out), enforced by projecting after the denoiser (pnp-fbs) or after the step (red).
BOUND_PARAMETERS = ("lower", "upper")


class ConvergenceConditionError(ValueError):
    """The parameters violate the hypotheses of the method's convergence theorem."""


class SolverError(RuntimeError):
    """The iteration produced NaN/inf or diverged."""


class GuaranteeWarning(UserWarning):
    """The solve runs without the convergence guarantee (``guarantee=False``)."""


@dataclass(frozen=True)
class Conditions:
    """The outcome of checking a method's hypotheses: whether they hold, the theorem that then
    applies, and each violated hypothesis in words."""

    holds: bool
    theorem: str
    violations: tuple[str, ...] = ()


def canonical_method(method: str) -> str:
    """``pnp-fbs``, ``pnp-drs`` or ``red`` for a method name or alias (ValueError otherwise)."""
    name = ALIASES.get(method, method)
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)} (or pnp-admm)")
    return name


def box_bounds(params: Mapping[str, Any]) -> tuple[float | None, float | None] | None:
    """``(lower, upper)`` of the box constraint in ``params``, or None when there is none."""
    lower, upper = params.get("lower"), params.get("upper")
    return None if lower is None and upper is None else (lower, upper)


def box_projection(bounds: tuple[float | None, float | None] | None) -> Operator | None:
    """P_C, the projection onto C = {lower <= x <= upper} (a clamp; None: no box).

    P_C is firmly nonexpansive, and moves no point farther from any point of C:
    ``||P_C v - p|| <= ||v - p||`` for p in C.
    """
    if bounds is None:
        return None
    lower, upper = bounds

    def project(x: Tensor) -> Tensor:
        return x.clamp(lower, upper)

    return project


def relax(z: Tensor, t: Tensor, relaxation: float, *, convex: bool = False) -> Tensor:
    """Krasnosel'skii-Mann relaxation of a step z -> t: ``(1 - lam) z + lam t`` (a new tensor).

    For t = T z with T alpha-averaged this is (1 - lam alpha) Id + lam alpha R: again averaged,
    hence convergent, for lam in (0, 1/alpha). Computed as ``z + lam (t - z)``, or with
    ``convex=True`` as ``(1 - lam) z + lam t``: the same value up to float rounding, each kept
    for the method whose pinned outputs (tests/golden) were computed with it (PnP-FBS, PnP-DRS).
    """
    if convex:
        return (1 - relaxation) * z + relaxation * t
    return z + relaxation * (t - z)


def composed_averagedness(*alphas: float) -> float:
    """Averagedness of the composition of a1-, a2-, ...-averaged operators, folded pairwise by
    (a1 + a2 - 2 a1 a2) / (1 - a1 a2) (Combettes & Yamada 2015, Prop. 2.4); 1 (only nonexpansive)
    as soon as a factor is not in (0, 1)."""
    alpha = alphas[0]
    for a2 in alphas[1:]:
        alpha = (alpha + a2 - 2 * alpha * a2) / (1 - alpha * a2) if 0 < alpha < 1 and 0 < a2 < 1 else 1.0
    return alpha


def fbs_fast_relaxation(
    step: float, strength: float, lipschitz_sq: float, margin: float = 0.95, projected: bool = False
) -> float:
    """PnP-FBS relaxation ``margin / alpha``: near the largest the theorem allows (lam < 1/alpha),
    alpha the averagedness of [P_C o] D o (Id - gamma grad f) (``lipden.optim.fbs``).

    Relaxation does not move the fixed point, only the speed of reaching it: on the MRI
    tuning slices (x4, step 1/L, strength 0.15) lam = 1.8 instead of 1 cut the iterations to
    a relative residual of 1e-5 from 935 / >1000 to 652 / 793.
    """
    return margin / composed_averagedness(strength, step * lipschitz_sq / 2, *((0.5,) if projected else ()))


def denoiser_violations(denoiser_lipschitz: float | None) -> list[str]:
    """The hypothesis every method shares, Lip(N) <= 1, in words when it fails (None: uncertified)."""
    if denoiser_lipschitz is None:
        return ["the denoiser has no certified Lipschitz bound"]
    if denoiser_lipschitz > 1:
        return [f"the denoiser's certified Lipschitz bound is {denoiser_lipschitz:.6g} > 1"]
    return []


class Params:
    """Base of a method's typed parameters (a frozen dataclass of floats; box bounds may be None).

    Construction checks the fields themselves: every value finite, and lower < upper when both
    bounds are given (ValueError). Whether the values satisfy the convergence theorem is a
    separate question, answered by :meth:`hypotheses` (a solve may run outside it on request).
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        values = self.as_dict()
        if any(not math.isfinite(v) for v in values.values()):
            raise ValueError(f"parameters must be finite numbers, got {values}")
        bounds = self.box()
        if bounds is not None:
            lower, upper = bounds
            if lower is not None and upper is not None and not lower < upper:
                raise ValueError(f"need lower < upper for the box constraint, got {lower} and {upper}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every parameter, in the order of the fields (box bounds last)."""
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, float]:
        """The given values by name (box bounds left out when None)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}

    def box(self) -> tuple[float | None, float | None] | None:
        """``(lower, upper)`` of the box constraint, or None."""
        return box_bounds(self.as_dict())

    @classmethod
    def defaults(cls, lipschitz_sq: float, given: Mapping[str, float] | None = None) -> dict[str, float]:
        """Safe values (inside the theorem) of the parameters a solve leaves out; ``given``: the
        values it sets, where a default depends on them."""
        raise NotImplementedError

    def hypotheses(self, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
        """Check the convergence theorem for ``L = lipschitz_sq`` and a certified bound of Lip(N)."""
        raise NotImplementedError

    def averagedness(self, lipschitz_sq: float) -> float:
        """alpha with T = (1 - alpha) Id + alpha R, R nonexpansive, when Lip(N) <= 1."""
        raise NotImplementedError


class Method(Protocol):
    """A fixed-point method as the runner sees it: T, the image estimate, and per-image restriction."""

    name: ClassVar[str]

    def step(self, z: Tensor) -> Tensor:
        """T(z) for a batch of iterates (B, ...): a new tensor, z is not written."""
        ...

    def estimate(self, z: Tensor) -> Tensor:
        """The image estimate x(z) (B, C, H, W) of an iterate."""
        ...

    def fixed_point_projection(self) -> Operator | None:
        """The projection onto a closed convex set holding every fixed point of T, or None."""
        ...

    def restrict(self, index: Tensor) -> Method:
        """The same method for the images ``index`` of the batch alone (its own measurements)."""
        ...


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Splitting(Generic[P]):
    """Base of the three methods: parameters, data term f, denoiser N (a callable on (B, C, H, W)).

    Subclasses split T into ``data_step`` (through f: a gradient or prox step) and ``prior_step``
    (through N, then the box projection where there is one), and compose them in ``step``.
    """

    name: ClassVar[str]
    params_type: ClassVar[type[Params]]

    params: P
    data: DataTerm
    denoise: Operator

    def step(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor:
        """P_C x for the box C of the parameters; x itself when there is none."""
        project = box_projection(self.params.box())
        return x if project is None else project(x)

    def estimate(self, z: Tensor) -> Tensor:
        """x(z) = P_C z: every fixed point lies in C; an over-relaxed iterate may step outside."""
        return self.project(z)

    def fixed_point_projection(self) -> Operator | None:
        """P_C with box bounds (every fixed point is an output of the box projection), else None."""
        return box_projection(self.params.box())

    def restrict(self, index: Tensor) -> Splitting[P]:
        return replace(self, data=self.data.restrict(index))

    def hypotheses(self, denoiser_lipschitz: float | None) -> Conditions:
        """The theorem's hypotheses for these parameters, this f and a certified bound of Lip(N)."""
        return self.params.hypotheses(self.data.lipschitz_sq, denoiser_lipschitz)

    def averagedness(self) -> float:
        """alpha of T = (1 - alpha) Id + alpha R (R nonexpansive when Lip(N) <= 1)."""
        return self.params.averagedness(self.data.lipschitz_sq)


#: canonical name -> method class, filled by :func:`register` (``lipden.optim`` imports all three)
METHODS: dict[str, type[Splitting[Any]]] = {}

S = TypeVar("S", bound=type[Splitting[Any]])


def register(method_type: S) -> S:
    """Class decorator: enter a method class in :data:`METHODS` under its ``name``."""
    METHODS[method_type.name] = method_type
    return method_type


def method_class(method: str) -> type[Splitting[Any]]:
    """The class of a method name or alias (ValueError for an unknown one)."""
    return METHODS[canonical_method(method)]


def parameter_names(method: str) -> tuple[str, ...]:
    """Every parameter ``method`` accepts: its defaults, plus the box bounds where supported."""
    return method_class(method).params_type.names()


def default_parameters(method: str, lipschitz_sq: float, given: dict | None = None) -> dict:
    """Safe defaults: step 1/L for PnP-FBS, gamma 1 for DRS, weight mu = 1 and step 1.8/(L + 2 mu) for RED.

    The RED step depends on the weight: with a ``given`` weight mu (and no given step) the
    default step is 1.8/(L + 2 mu), inside RED's bound 2/(L + 2 mu), whatever mu is.
    """
    return method_class(method).params_type.defaults(lipschitz_sq, given)


def build_params(method: str, params: Mapping[str, Any]) -> Params:
    """The typed parameters of ``method`` from a dict (other keys are ignored); ValueError for box
    bounds on a method without them, non-finite values, or lower >= upper."""
    name = canonical_method(method)
    names = METHODS[name].params_type.names()
    if box_bounds(params) is not None and BOUND_PARAMETERS[0] not in names:
        bounded = [m for m, c in METHODS.items() if BOUND_PARAMETERS[0] in c.params_type.names()]
        raise ValueError(f"box bounds (lower / upper) apply to {' and '.join(bounded)}, not {name}")
    return METHODS[name].params_type(**{k: v for k, v in params.items() if k in names})


def conditions(method: str, params: dict, lipschitz_sq: float, denoiser_lipschitz: float | None) -> Conditions:
    """Check the convergence theorem of ``method`` for these parameters (each method's module,
    ``lipden.optim.fbs``, ``drs`` and ``red``, states it). ``denoiser_lipschitz``: a certified
    bound of Lip(N) (None: not certified)."""
    return build_params(method, params).hypotheses(lipschitz_sq, denoiser_lipschitz)


def averagedness(method: str, params: dict, lipschitz_sq: float) -> float | None:
    """The averagedness constant alpha of T (T = (1 - alpha) Id + alpha R, R nonexpansive)."""
    return build_params(method, params).averagedness(lipschitz_sq)


def fixed_point_projection(method: str, params: dict) -> Operator | None:
    """The projection onto a closed convex set that contains every fixed point of T, or None:
    P_C for a box-constrained pnp-fbs or red, None without bounds or for pnp-drs (whose iterate
    is not an image). The Anderson accelerator projects its extrapolations with it."""
    if BOUND_PARAMETERS[0] not in parameter_names(method):
        return None
    return box_projection(box_bounds(params))


def make_step(
    method: str, params: dict, denoise: Operator, gradient: Operator, prox: Callable[[Tensor, float], Tensor]
) -> tuple[Operator, Operator, Operator]:
    """One iteration ``z -> T(z)``, the image estimate ``x(z)``, and the initial iterate ``z0(x0)``.

    ``denoise`` is N, ``gradient`` is grad f, ``prox(z, gamma)`` is prox_{gamma f}(z).
    """
    built = method_class(method)(build_params(method, params), CallableData(gradient, prox), denoise)
    return built.step, built.estimate, lambda x: x
