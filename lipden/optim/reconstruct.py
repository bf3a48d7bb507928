"""``reconstruct(y, physics, denoiser, method)``: a convergent PnP / RED solve with its evidence."""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lipden.certify.bounds import CertificationError, lipschitz_upper_bound
from lipden.metrics import psnr_per_image
from lipden.optim.anderson import AndersonAccelerator
from lipden.optim.base import (
    ConvergenceConditionError,
    averagedness,
    canonical_method,
    conditions,
    default_parameters,
    fixed_point_projection,
    make_step,
    parameter_names,
)

#: A certified bound up to this much above 1 is Bjorck / float round-off: the solver then
#: uses N / bound, which is exactly 1-Lipschitz (a relative change of at most 1e-3).
ROUNDOFF_LIPSCHITZ_SLACK = 1e-3


class SolverError(RuntimeError):
    """The iteration produced NaN/inf or diverged."""


class GuaranteeWarning(UserWarning):
    """The solve runs without the convergence guarantee (``guarantee=False``)."""


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


def _certified_denoiser_bound(denoiser: nn.Module, shape: tuple[int, ...]) -> float | None:
    if getattr(denoiser, "is_lipschitz_constrained", True) is False:
        return None
    certificate = getattr(denoiser, "lipschitz_certificate", None)
    try:
        if certificate is not None:
            return float(certificate(shape))
        return lipschitz_upper_bound(denoiser, shape)
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
    residual, would then hold only to about 1e-3 (measured on an H100: relative residual
    increases of 4e-3 with TF32, none without).
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
    y: Tensor,
    physics,
    denoiser: nn.Module,
    method: str = "pnp-fbs",
    *,
    x0: Tensor | None = None,
    x_true: Tensor | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
    guarantee: bool = True,
    lipschitz_sq: float | None = None,
    denoiser_sigma: float | None = None,
    progress: bool = False,
    tile: int | None = None,
    accelerate: int = 0,
    **params: float,
) -> ReconstructionResult:
    """Solve ``y = A x + n`` by PnP-FBS, PnP-DRS (ADMM) or RED with a 1-Lipschitz denoiser.

    Args:
        y: measurements, as ``physics.A`` produces them (batched).
        physics: a deepinv ``LinearPhysics`` (A, A_adjoint, prox_l2); ``physics.lipschitz_sq``
            (exact ||A^T A||, set by ``problems``) is used, else ``lipschitz_sq``, else a
            power-iteration estimate with a warning.
        denoiser: N, called as ``N(x, sigma)`` on (B, C, H, W); its certified Lipschitz bound
            is computed for this image size (``lipschitz_certificate`` or
            ``lipden.lipschitz_upper_bound``).
        method: ``pnp-fbs`` (params step, strength, relaxation), ``pnp-drs`` / ``pnp-admm``
            (step, strength, relaxation) or ``red`` (weight, step); ``pnp-fbs`` and ``red``
            also take box bounds ``lower`` / ``upper`` (projection after each step, e.g.
            ``lower=0, upper=1`` for images in [0, 1]); see ``lipden.optim.base.conditions`` for
            each theorem and its exact hypotheses.
        x0: warm start (default ``A^T y``: the zero-filled image for MRI).
        x_true: ground truth, for a per-iteration PSNR.
        tol: each image stops (and is frozen) at its first iteration with
            ||z_{k+1} - z_k|| <= tol ||z_{k+1}||; the solve ends when every image has stopped.
        guarantee: if True (default), refuse to run when the hypotheses fail (including an
            uncertified or > 1-Lipschitz denoiser); if False, run anyway with a warning.
        tile: apply the denoiser in ``tile`` x ``tile`` blocks (``lipden.denoise_tiled``: the
            same function, so the same iterates and guarantee) to bound the memory of large
            images: about 3 x channels x (tile + 16)^2 x 4 bytes instead of 3 x channels x H x W
            x 4 bytes per image, plus a few image-sized buffers (iterate, gradient, measurement).
        accelerate: Anderson memory m (0, the default: the plain iteration z_{k+1} = T z_k).
            With m >= 1 each pass proposes an Anderson extrapolation from the last m pairs
            (z, T z), projected onto the box when there is one (it holds every fixed point),
            and keeps it only if it passes a safeguard (``lipden.optim.anderson``: it lowers
            the residual ||T z - z|| by a fixed fraction and the accepted steps stay within a
            finite length budget), else takes the plain step. Under the method's theorem (T
            averaged) the iterates still converge to a fixed point of T and the residuals are
            still non-increasing; a pass costs one evaluation of T, two when its proposal is
            rejected (``evaluations_per_image``).

    Returns a :class:`ReconstructionResult`. Raises ``ConvergenceConditionError`` for
    parameters outside the theorem (with ``guarantee=True``), ``SolverError`` on NaN/inf or
    divergence, ``ValueError`` on malformed input.
    """
    started = time.perf_counter()
    method = canonical_method(method)
    if not isinstance(y, Tensor) or not torch.isfinite(y).all():
        raise ValueError("y must be a finite tensor")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got {max_iter} and {tol}")
    if isinstance(accelerate, bool) or not isinstance(accelerate, int) or accelerate < 0:
        raise ValueError(f"accelerate must be an Anderson memory (integer >= 0), got {accelerate!r}")
    unknown = set(params) - set(parameter_names(method))
    if unknown:
        raise ValueError(f"unknown parameters for {method}: {sorted(unknown)}; valid: {parameter_names(method)}")
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
    notes: list[str] = []
    L, note = _lipschitz_sq(physics, start, lipschitz_sq)
    if note:
        notes.append(note)
        warnings.warn(note, stacklevel=2)
    if not L > 0:
        raise ValueError(f"||A^T A|| must be > 0, got {L}")
    chosen = {**default_parameters(method, L, params), **{k: float(v) for k, v in params.items()}}
    if any(not math.isfinite(v) for v in chosen.values()):
        raise ValueError(f"parameters must be finite numbers, got {chosen}")

    bound = _certified_denoiser_bound(denoiser, (1, 1, *start.shape[-2:]))
    scale = 1.0
    if bound is not None and 1 < bound <= 1 + ROUNDOFF_LIPSCHITZ_SLACK:
        scale, notes_bound = bound, f"denoiser certified at {bound:.7f}; using N/{bound:.7f}, exactly 1-Lipschitz"
        notes.append(notes_bound)
        bound = 1.0
    check = conditions(method, chosen, L, bound)
    if not check.holds:
        message = f"{method}: no convergence guarantee: " + "; ".join(check.violations)
        if guarantee:
            raise (CertificationError if bound is None or bound > 1 else ConvergenceConditionError)(
                message + " (pass guarantee=False to run anyway)"
            )
        warnings.warn(message, GuaranteeWarning, stacklevel=2)
        notes.append(message)

    sigma = denoiser_sigma if denoiser_sigma is not None else getattr(getattr(denoiser, "config", None), "sigma", None)

    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")

    def denoise(v: Tensor) -> Tensor:
        if tile is not None:
            from lipden.models.tiling import denoise_tiled

            out = denoise_tiled(denoiser, v, sigma, tile=tile)
        else:
            out = denoiser(v, sigma) if sigma is not None else denoiser(v)
        return out / scale if scale != 1.0 else out

    measured = [y]  # the measurements of the images still iterating

    def gradient(x: Tensor) -> Tensor:
        return physics.A_adjoint(physics.A(x) - measured[0])

    def prox(z: Tensor, gamma: float) -> Tensor:
        return physics.prox_l2(z, measured[0], gamma)

    step, estimate, initial = make_step(method, chosen, denoise, gradient, prox)
    z = initial(start)
    residuals: list[Tensor] = []
    relative: list[Tensor] = []
    psnrs: list[Tensor] = []
    roundoff = 2e-6 if z.dtype == torch.float32 else 1e-13
    max_increase, monotone, converged = 0.0, True, False
    batch = z.shape[0]
    running = torch.ones(batch, dtype=torch.bool, device=z.device)
    stopped_at = torch.full((batch,), max_iter, dtype=torch.long)
    evaluations = torch.zeros(batch, dtype=torch.long)
    # Iterate only the running images when the physics has no per-image parameters.
    sub_batches = batch > 1 and _acts_per_image(physics, start, y)

    def apply_step(v: Tensor, which: Tensor) -> Tensor:
        """T(v) for the images in ``which`` (B,) bool; the other images keep ``v``."""
        evaluations[which.cpu()] += 1
        if bool(which.all()):
            return step(v)
        if sub_batches:
            index = which.nonzero().squeeze(1)
            measured[0] = y[index]
            out = v.clone()
            out[index] = step(v[index])
            measured[0] = y
            return out
        return torch.where(_per_image(which, v), step(v), v)

    anderson = AndersonAccelerator(accelerate, fixed_point_projection(method, chosen)) if accelerate else None
    t_z = apply_step(z, running) if anderson is not None else None
    bar = tqdm(range(max_iter), desc=method, disable=not progress, leave=False)
    with torch.no_grad():
        for k in bar:
            if anderson is None or t_z is None:
                z_next = t_z_k = apply_step(z, running)
            else:
                t_z_k, (z_next, t_z) = t_z, _anderson_step(anderson, z, t_z, running, tol, apply_step)
            if not torch.isfinite(z_next).all():
                raise SolverError(f"{method}: the iterate became NaN/inf after {k + 1} iterations")
            r = (t_z_k - z).flatten(1).norm(dim=1)
            norm = t_z_k.flatten(1).norm(dim=1).clamp_min(1e-12)
            if residuals:
                previous = residuals[-1]
                live = running & ~torch.isnan(previous)
                ratio = float(((r - previous) / previous.clamp_min(1e-30))[live].max())
                max_increase = max(max_increase, ratio)
                if bool((r > previous + roundoff * norm)[live].any()):
                    monotone = False
                if float((r / residuals[0].clamp_min(1e-30))[live].max()) > 1e4:
                    raise SolverError(f"{method}: diverging (residual grew 1e4-fold)")
            nan = torch.full_like(r, float("nan"))
            residuals.append(torch.where(running, r, nan))
            relative.append(torch.where(running, r / norm, nan))
            z = z_next
            if x_true is not None:
                psnrs.append(psnr_per_image(estimate(z), x_true))
            done_now = running & (relative[-1] <= tol)
            stopped_at[done_now.cpu()] = k + 1
            running &= ~done_now
            bar.set_postfix(rel=f"{float(relative[-1].nan_to_num(0.0).max()):.2e}", running=int(running.sum()))
            if not bool(running.any()):
                converged = True
                break
        x = estimate(z)
    if check.holds and not monotone:
        notes.append("the residual increased beyond round-off although the theorem says it cannot")
        warnings.warn(f"{method}: {notes[-1]}", stacklevel=2)
    return ReconstructionResult(
        x=x,
        iterations=len(residuals),
        residuals=torch.stack(residuals),
        relative_residuals=torch.stack(relative),
        converged=converged,
        method=method,
        parameters=chosen,
        guaranteed=check.holds,
        theorem=check.theorem,
        denoiser_lipschitz=bound if scale == 1.0 else scale,
        lipschitz_sq=L,
        max_residual_increase=max(max_increase, 0.0),
        monotone=monotone,
        seconds=time.perf_counter() - started,
        psnr=torch.stack(psnrs) if psnrs else None,
        averagedness=averagedness(method, chosen, L),
        notes=notes,
        iterations_per_image=stopped_at.clamp_max(len(residuals)),
        evaluations_per_image=evaluations,
        accelerated=accelerate,
    )


def _anderson_step(
    anderson: AndersonAccelerator, z: Tensor, t_z: Tensor, running: Tensor, tol: float,
    apply_step: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """One safeguarded Anderson pass from z_k, T z_k: returns z_{k+1} and T z_{k+1}.

    Images that stop at z_k (relative residual <= tol) or stopped before keep the plain
    ``z_{k+1} = T z_k`` (resp. z_k) and get no new evaluation of T.
    """
    relative = (t_z - z).flatten(1).norm(dim=1) / t_z.flatten(1).norm(dim=1).clamp_min(1e-12)
    continuing = running & (relative > tol)
    proposal = anderson.propose(z, t_z)
    trying = continuing & anderson.ready()  # not waiting after a rejection
    z_next = torch.where(_per_image(running, z), t_z, z)
    accepted = torch.zeros_like(continuing)
    t_proposal = z_next
    if proposal is not None and bool(trying.any()):
        t_proposal = apply_step(proposal, trying)
        accepted = anderson.accept(z, t_z, proposal, t_proposal, trying)
        z_next = torch.where(_per_image(accepted, z), proposal, z_next)
    plain = continuing & ~accepted
    t_plain = apply_step(z_next, plain) if bool(plain.any()) else z_next
    return z_next, torch.where(_per_image(accepted, z), t_proposal, t_plain)


def _per_image(mask: Tensor, like: Tensor) -> Tensor:
    """A (B,) mask shaped to broadcast over ``like`` (B, C, H, W)."""
    return mask.view(-1, *[1] * (like.dim() - 1))


def _acts_per_image(physics, x: Tensor, y: Tensor) -> bool:
    """True when A applied to one image gives that image's measurement shape (shared physics)."""
    try:
        with torch.no_grad():
            return tuple(physics.A(x[:1]).shape) == (1, *y.shape[1:])
    except (RuntimeError, ValueError, IndexError):
        return False
