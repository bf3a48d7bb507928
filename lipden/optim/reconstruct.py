"""``reconstruct(y, physics, denoiser, method)``: a convergent PnP / RED solve with its evidence.

The one-call entry point: it resolves ||A^T A||, certifies the denoiser for the image size
(through :class:`lipden.models.protocol.LipschitzCertified`), builds the method from
:data:`METHODS` with typed parameters, refuses a solve outside the method's theorem (unless
``guarantee=False``), runs :func:`lipden.optim.runner.run` and returns a
:class:`ReconstructionResult`.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lipden.certify.bounds import CertificationError, lipschitz_upper_bound
from lipden.models.protocol import ConstrainedDenoiser, LipschitzCertified, NoiseLevelTrained
from lipden.models.tiling import denoise_tiled
from lipden.optim.anderson import AndersonConfig
from lipden.optim.base import (
    METHODS,
    Conditions,
    ConvergenceConditionError,
    GuaranteeWarning,
    SolverError,
    canonical_method,
    default_parameters,
    parameter_names,
)
from lipden.optim.data import LeastSquares, Operator
from lipden.optim.runner import run

__all__ = ["METHODS", "ROUNDOFF_LIPSCHITZ_SLACK", "ConvergenceConditionError", "GuaranteeWarning",
           "ReconstructionResult", "SolverError", "certified_lipschitz", "reconstruct"]

#: A certified bound up to this much above 1 is Bjorck / float round-off: the solver then
#: uses N / bound, which is exactly 1-Lipschitz (a relative change of at most 1e-3).
ROUNDOFF_LIPSCHITZ_SLACK = 1e-3


@dataclass
class ReconstructionResult:
    """Outcome of :func:`reconstruct`.

    Each image stops at its own first iteration with relative residual <= ``tol`` and is
    frozen from then on, so its result does not depend on the other images of the batch.

    ``x``: (B, C, H, W) estimate (not clipped). ``residuals``: (K, B) fixed-point residuals
    ||z_{k+1} - z_k|| (z is x for FBS/RED, the DRS variable for DRS), NaN after the image
    stopped; ``relative_residuals`` divides by ||z_{k+1}||. ``iterations``: K, the largest
    ``iterations_per_image`` (B,). ``converged``: every image reached ``tol``. ``psnr``:
    (K, B) per-iteration PSNR (dB, clipped estimate) when a ground truth was given (constant
    after an image stopped). ``max_residual_increase``: the largest relative increase
    r_{k+1}/r_k - 1 observed (0 if the sequence is non-increasing); ``monotone``: no increase
    beyond round-off. ``evaluations_per_image``: (B,) evaluations of the iteration map T:
    the iterations, plus the rejected Anderson proposals when ``accelerated`` (the Anderson
    memory) is > 0 (plus one if the cap was reached). ``residuals`` are ||T z_k - z_k||,
    which equals ||z_{k+1} - z_k|| for the plain iteration.
    """

    x: Tensor
    iterations: int
    residuals: Tensor
    relative_residuals: Tensor
    converged: bool
    method: str
    parameters: dict
    guaranteed: bool
    theorem: str
    denoiser_lipschitz: float | None
    lipschitz_sq: float
    max_residual_increase: float
    monotone: bool
    seconds: float
    iterations_per_image: Tensor
    evaluations_per_image: Tensor
    psnr: Tensor | None = None
    averagedness: float | None = None
    accelerated: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def final_relative_residuals(self) -> Tensor:
        """(B,) each image's relative residual at its last iteration."""
        last = (self.iterations_per_image - 1).to(self.relative_residuals.device)
        return self.relative_residuals.gather(0, last[None]).squeeze(0)


def certified_lipschitz(denoiser: nn.Module, input_shape: tuple[int, ...]) -> float | None:
    """The certified Lipschitz bound of ``denoiser`` on inputs of ``input_shape``, or None.

    A :class:`LipschitzCertified` denoiser states it (``lipschitz_certificate``); any other module
    is bounded by :func:`lipschitz_upper_bound` (a walk over supported layers). None when the
    denoiser declares itself unconstrained (``is_lipschitz_constrained`` False: its bound is not
    meant to be used) or cannot be certified.
    """
    if isinstance(denoiser, ConstrainedDenoiser) and not denoiser.is_lipschitz_constrained:
        return None
    try:
        if isinstance(denoiser, LipschitzCertified):
            return float(denoiser.lipschitz_certificate(input_shape))
        return lipschitz_upper_bound(denoiser, input_shape)
    except CertificationError:
        return None


def _lipschitz_sq(physics, x0: Tensor, given: float | None) -> tuple[float, str | None]:
    if given is not None:
        return float(given), None
    value = getattr(physics, "lipschitz_sq", None)
    if value is not None:
        return float(value), None
    estimate = float(physics.compute_norm(torch.randn_like(x0), max_iter=200, tol=1e-6, verbose=False))
    return 1.01 * estimate, (
        f"||A^T A|| estimated by power iteration ({estimate:.6g}, used with a 1% margin); "
        "pass lipschitz_sq= for a certified value"
    )


def _without_tf32(solve: Callable[..., ReconstructionResult]) -> Callable[..., ReconstructionResult]:
    """Run the solve with float32 (not TF32) CUDA convolutions and matrix products.

    TF32 keeps 10 mantissa bits: the denoiser's 1-Lipschitz property, hence the monotone
    residual, would then hold only to about 1e-3 relative, and the residual could rise.
    """

    @functools.wraps(solve)
    def wrapped(*args, **kwargs) -> ReconstructionResult:
        previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return solve(*args, **kwargs)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous

    return wrapped


@_without_tf32
def reconstruct(
    y: Tensor, physics, denoiser: nn.Module, method: str = "pnp-fbs", *, x0: Tensor | None = None,
    x_true: Tensor | None = None, max_iter: int = 500, tol: float = 1e-5, guarantee: bool = True,
    lipschitz_sq: float | None = None, denoiser_sigma: float | None = None, progress: bool = False,
    tile: int | None = None, accelerate: int = 0, **params: float,
) -> ReconstructionResult:
    """Solve ``y = A x + n`` by PnP-FBS, PnP-DRS (ADMM) or RED with a 1-Lipschitz denoiser.

    Args:
        y: measurements, as ``physics.A`` produces them (batched).
        physics: a deepinv ``LinearPhysics`` (A, A_adjoint, prox_l2); ``physics.lipschitz_sq``
            (exact ||A^T A||, set by ``problems``) is used, else ``lipschitz_sq``, else a
            power-iteration estimate with a warning.
        denoiser: N, called as ``N(x, sigma)`` on (B, C, H, W); its certified Lipschitz bound
            is computed for this image size (:func:`certified_lipschitz`).
        method: ``pnp-fbs`` (params step, strength, relaxation), ``pnp-drs`` / ``pnp-admm``
            (step, strength, relaxation) or ``red`` (weight, step); ``pnp-fbs`` and ``red``
            also take box bounds ``lower`` / ``upper`` (projection after each step, e.g.
            ``lower=0, upper=1`` for images in [0, 1]); ``lipden.optim.fbs``, ``drs`` and ``red``
            state each theorem and its exact hypotheses.
        x0: warm start (default ``A^T y``: the zero-filled image for MRI).
        x_true: ground truth, for a per-iteration PSNR.
        tol: each image stops (and is frozen) at its first iteration with
            ||z_{k+1} - z_k|| <= tol ||z_{k+1}||; the solve ends when every image has stopped.
        guarantee: if True (default), refuse to run when the hypotheses fail (including an
            uncertified or > 1-Lipschitz denoiser); if False, run anyway with a warning.
        tile: apply the denoiser in ``tile`` x ``tile`` blocks (``lipden.models.tiling.denoise_tiled``: the
            same function, so the same iterates and guarantee) to bound the memory of large
            images: about 3 x channels x (tile + 16)^2 x 4 bytes instead of 3 x channels x H x W
            x 4 bytes per image, plus a few image-sized buffers (iterate, gradient, measurement).
        accelerate: Anderson memory m (0, the default: the plain iteration z_{k+1} = T z_k).
            With m >= 1 each pass proposes an Anderson extrapolation from the last m pairs
            (z, T z), projected onto the box when there is one, and keeps it only if it passes a
            safeguard (``lipden.optim.anderson``), else takes the plain step. Under the method's
            theorem the iterates still converge to a fixed point of T and the residuals are
            still non-increasing; a pass costs one evaluation of T, two when its proposal is
            rejected (``evaluations_per_image``).

    Returns a :class:`ReconstructionResult`. Raises (with ``guarantee=True``)
    ``CertificationError`` when the denoiser has no certified bound <= 1 and
    ``ConvergenceConditionError`` for parameters outside the theorem; ``SolverError`` on NaN/inf
    or divergence, ``ValueError`` on malformed input.
    """
    started = time.perf_counter()
    method = canonical_method(method)
    _check_arguments(y, max_iter, tol, accelerate, method, params)
    start = _initial_estimate(y, physics, denoiser, x0, x_true)
    notes: list[str] = []
    L = _resolve_lipschitz_sq(physics, start, lipschitz_sq, notes)
    chosen = {**default_parameters(method, L, params), **{k: float(v) for k, v in params.items()}}
    method_type = METHODS[method]
    typed = method_type.params_type(**chosen)  # ValueError: a value not finite, or lower >= upper
    bound, scale = _certify(denoiser, start.shape, notes)
    check = typed.hypotheses(L, bound)
    _enforce(check, method, bound, guarantee, notes)
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    data = LeastSquares(physics.A, physics.A_adjoint, physics.prox_l2, y, L)
    solver = method_type(typed, data, _denoiser_map(denoiser, denoiser_sigma, tile, scale))
    record = run(solver, start, max_iter=max_iter, tol=tol, x_true=x_true, progress=progress,
                 anderson=AndersonConfig(memory=accelerate) if accelerate else None,
                 split_batches=start.shape[0] > 1 and _acts_per_image(physics, start, y))
    if check.holds and not record.monotone:
        notes.append("the residual increased beyond round-off although the theorem says it cannot")
        warnings.warn(f"{method}: {notes[-1]}", stacklevel=3)
    return ReconstructionResult(
        x=record.x, iterations=record.iterations, residuals=record.residuals,
        relative_residuals=record.relative_residuals, converged=record.converged, method=method,
        parameters=chosen, guaranteed=check.holds, theorem=check.theorem,
        denoiser_lipschitz=bound if scale == 1.0 else scale, lipschitz_sq=L,
        max_residual_increase=record.max_residual_increase, monotone=record.monotone,
        seconds=time.perf_counter() - started, psnr=record.psnr, averagedness=typed.averagedness(L), notes=notes,
        iterations_per_image=record.iterations_per_image, evaluations_per_image=record.evaluations_per_image,
        accelerated=accelerate,
    )


def _check_arguments(y: Tensor, max_iter: int, tol: float, accelerate: int, method: str, params: dict) -> None:
    if not isinstance(y, Tensor) or not torch.isfinite(y).all():
        raise ValueError("y must be a finite tensor")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got {max_iter} and {tol}")
    if isinstance(accelerate, bool) or not isinstance(accelerate, int) or accelerate < 0:
        raise ValueError(f"accelerate must be an Anderson memory (integer >= 0), got {accelerate!r}")
    unknown = set(params) - set(parameter_names(method))
    if unknown:
        raise ValueError(f"unknown parameters for {method}: {sorted(unknown)}; valid: {parameter_names(method)}")


def _initial_estimate(y: Tensor, physics, denoiser: nn.Module, x0: Tensor | None, x_true: Tensor | None) -> Tensor:
    """x0, or A^T y: a finite (B, C, H, W) tensor of the denoiser's dtype (ValueError otherwise)."""
    with torch.no_grad():
        start = physics.A_adjoint(y) if x0 is None else x0
    if start.dim() != 4:
        raise ValueError(f"the image estimate must be (B, C, H, W), got shape {tuple(start.shape)}")
    if not torch.isfinite(start).all():
        raise ValueError("the initial estimate x0 contains NaN or inf values")
    model_dtype = next(iter(denoiser.parameters()), start).dtype
    if start.dtype != model_dtype:
        raise ValueError(f"the image estimate is {start.dtype} but the denoiser is {model_dtype}: "
                         "convert the measurements (or the denoiser) to one dtype")
    if x_true is not None and x_true.shape != start.shape:
        raise ValueError(f"x_true has shape {tuple(x_true.shape)}, the estimate {tuple(start.shape)}")
    return start


def _resolve_lipschitz_sq(physics, start: Tensor, given: float | None, notes: list[str]) -> float:
    L, note = _lipschitz_sq(physics, start, given)
    if note:
        notes.append(note)
        warnings.warn(note, stacklevel=4)
    if not L > 0:
        raise ValueError(f"||A^T A|| must be > 0, got {L}")
    return L


def _certify(denoiser: nn.Module, shape: torch.Size, notes: list[str]) -> tuple[float | None, float]:
    """(bound, scale): the certified bound for single images of ``shape``'s size, and the factor
    the denoiser's output is divided by (a bound within round-off above 1: N / bound, bound 1)."""
    bound = certified_lipschitz(denoiser, (1, 1, *shape[-2:]))
    if bound is not None and 1 < bound <= 1 + ROUNDOFF_LIPSCHITZ_SLACK:
        notes.append(f"denoiser certified at {bound:.7f}; using N/{bound:.7f}, exactly 1-Lipschitz")
        return 1.0, bound
    return bound, 1.0


def _enforce(check: Conditions, method: str, bound: float | None, guarantee: bool, notes: list[str]) -> None:
    """Refuse a solve outside the theorem (CertificationError when the denoiser lacks a bound <= 1,
    else ConvergenceConditionError), or with ``guarantee=False`` warn (GuaranteeWarning) and note it."""
    if check.holds:
        return
    message = f"{method}: no convergence guarantee: " + "; ".join(check.violations)
    if guarantee:
        raise (CertificationError if bound is None or bound > 1 else ConvergenceConditionError)(
            message + " (pass guarantee=False to run anyway)"
        )
    warnings.warn(message, GuaranteeWarning, stacklevel=4)
    notes.append(message)


def _denoiser_map(denoiser: nn.Module, sigma: float | None, tile: int | None, scale: float) -> Operator:
    """v -> N(v, sigma) / scale (in ``tile`` blocks when given); sigma defaults to the model's."""
    if sigma is None and isinstance(denoiser, NoiseLevelTrained):
        sigma = denoiser.trained_sigma

    def denoise(v: Tensor) -> Tensor:
        if tile is not None:
            out = denoise_tiled(denoiser, v, sigma, tile=tile)
        else:
            out = denoiser(v, sigma) if sigma is not None else denoiser(v)
        return out / scale if scale != 1.0 else out

    return denoise


def _acts_per_image(physics, x: Tensor, y: Tensor) -> bool:
    """True when A applied to one image gives that image's measurement shape (shared physics)."""
    try:
        with torch.no_grad():
            return tuple(physics.A(x[:1]).shape) == (1, *y.shape[1:])
    except (RuntimeError, ValueError, IndexError):
        return False
