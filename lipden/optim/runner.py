"""The iteration loop: z_{k+1} = T(z_k) for a batch, with per-image stopping, safeguarded Anderson
acceleration, the monotone-residual check, timing and the history.

The loop knows a method only through the :class:`lipden.optim.base.Method` protocol (``step``,
``estimate``, ``fixed_point_projection``, ``restrict``): it neither certifies the denoiser nor
checks the theorem (``reconstruct`` does both) and builds no result object beyond its own record.

Under the method's theorem T is averaged, so the fixed-point residual r_k = ||T z_k - z_k|| is
non-increasing (plain or safeguarded Anderson iteration alike, ``lipden.optim.anderson``): an
increase beyond float round-off is recorded (``monotone`` False), a 1e4-fold growth stops the
solve as divergent (:class:`SolverError`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lipden.metrics import psnr_per_image
from lipden.optim.anderson import AndersonAccelerator, AndersonConfig, per_image
from lipden.optim.base import Method, SolverError


@dataclass
class RunRecord:
    """What the loop saw. ``z``: the last iterate (B, ...); ``x``: its image estimate (B, C, H, W).
    ``residuals``: (K, B) ||T z_k - z_k||, NaN after an image stopped; ``relative_residuals``
    divides by ||T z_k||. ``psnr``: (K, B) PSNR (dB) of each estimate against ``x_true``, when given.
    ``iterations_per_image`` (B,): the iteration at which each image stopped (K if it did not);
    ``evaluations_per_image`` (B,): evaluations of T. ``converged``: every image stopped.
    ``max_residual_increase``: the largest r_{k+1}/r_k - 1 (0 if none); ``monotone``: no
    increase beyond round-off. ``seconds``: the loop's wall time."""

    z: Tensor
    x: Tensor
    residuals: Tensor
    relative_residuals: Tensor
    psnr: Tensor | None
    iterations_per_image: Tensor
    evaluations_per_image: Tensor
    converged: bool
    max_residual_increase: float
    monotone: bool
    seconds: float

    @property
    def iterations(self) -> int:
        return self.residuals.shape[0]


class _Evaluator:
    """T applied to the images selected by a (B,) mask, counting evaluations per image.

    ``split_batches``: T of a subset runs on that subset alone (``method.restrict``, valid when
    the operator acts on each image separately); otherwise on the whole batch, the outputs of
    the other images discarded.
    """

    def __init__(self, method: Method, batch: int, split_batches: bool) -> None:
        self.method, self.split_batches = method, split_batches
        self.count = torch.zeros(batch, dtype=torch.long)

    def __call__(self, v: Tensor, which: Tensor) -> Tensor:
        """T(v) for the images in ``which``; the other images keep ``v`` (a new tensor)."""
        self.count[which.cpu()] += 1
        if bool(which.all()):
            return self.method.step(v)
        if self.split_batches:
            index = which.nonzero().squeeze(1)
            out = v.clone()
            out[index] = self.method.restrict(index).step(v[index])
            return out
        return torch.where(per_image(which, v), self.method.step(v), v)


class _Residuals:
    """The residual history of the running images and its checks (monotone, divergence)."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.absolute: list[Tensor] = []
        self.relative: list[Tensor] = []
        self.max_increase, self.monotone = 0.0, True
        self.roundoff = 2e-6 if dtype == torch.float32 else 1e-13

    def record(self, z: Tensor, t_z: Tensor, running: Tensor) -> Tensor:
        """Append ||T z - z|| and its relative value (NaN for stopped images); return the latter."""
        r = (t_z - z).flatten(1).norm(dim=1)
        norm = t_z.flatten(1).norm(dim=1).clamp_min(1e-12)
        if self.absolute:
            previous = self.absolute[-1]
            live = running & ~torch.isnan(previous)
            ratio = float(((r - previous) / previous.clamp_min(1e-30))[live].max())
            self.max_increase = max(self.max_increase, ratio)
            if bool((r > previous + self.roundoff * norm)[live].any()):
                self.monotone = False
            if float((r / self.absolute[0].clamp_min(1e-30))[live].max()) > 1e4:
                raise SolverError(f"{self.name}: diverging (residual grew 1e4-fold)")
        nan = torch.full_like(r, float("nan"))
        self.absolute.append(torch.where(running, r, nan))
        self.relative.append(torch.where(running, r / norm, nan))
        return self.relative[-1]


def run(
    method: Method, z0: Tensor, *, max_iter: int = 500, tol: float = 1e-5, anderson: AndersonConfig | None = None,
    x_true: Tensor | None = None, split_batches: bool = False, progress: bool = False,
) -> RunRecord:
    """Iterate ``method.step`` from ``z0`` (B, ...) until every image stops, at most ``max_iter`` passes.

    Each image stops (and is frozen: no more evaluations, NaN residuals) at its first pass with
    ||T z_k - z_k|| <= tol ||T z_k||, so its result does not depend on the other images. With
    ``anderson``, each pass is a safeguarded Anderson pass (a proposal projected onto
    ``method.fixed_point_projection()`` when there is one; a rejected proposal falls back to
    T z_k). ``x_true`` (B, C, H, W): record the PSNR of each estimate. ``progress``: a tqdm bar.
    Raises :class:`SolverError` when an iterate becomes NaN/inf or the residual grows 1e4-fold.
    """
    started = time.perf_counter()
    batch = z0.shape[0]
    residuals = _Residuals(method.name, z0.dtype)
    evaluate = _Evaluator(method, batch, split_batches)
    accelerator = AndersonAccelerator(anderson, method.fixed_point_projection()) if anderson else None
    running = torch.ones(batch, dtype=torch.bool, device=z0.device)
    stopped_at = torch.full((batch,), max_iter, dtype=torch.long)
    psnrs: list[Tensor] = []
    converged, z = False, z0
    bar = tqdm(range(max_iter), desc=method.name, disable=not progress, leave=False)
    with torch.no_grad():
        t_z = evaluate(z, running) if accelerator is not None else None
        for k in bar:
            if accelerator is None or t_z is None:
                z_next = t_z_k = evaluate(z, running)
            else:
                t_z_k, (z_next, t_z) = t_z, accelerator.advance(z, t_z, running, tol, evaluate)
            if not torch.isfinite(z_next).all():
                raise SolverError(f"{method.name}: the iterate became NaN/inf after {k + 1} iterations")
            relative = residuals.record(z, t_z_k, running)
            z = z_next
            if x_true is not None:
                psnrs.append(psnr_per_image(method.estimate(z), x_true))
            done_now = running & (relative <= tol)
            stopped_at[done_now.cpu()] = k + 1
            running = running & ~done_now
            bar.set_postfix(rel=f"{float(relative.nan_to_num(0.0).max()):.2e}", running=int(running.sum()))
            if not bool(running.any()):
                converged = True
                break
        x = method.estimate(z)
    iterations = len(residuals.absolute)
    return RunRecord(
        z=z, x=x, residuals=torch.stack(residuals.absolute), relative_residuals=torch.stack(residuals.relative),
        psnr=torch.stack(psnrs) if psnrs else None, iterations_per_image=stopped_at.clamp_max(iterations),
        evaluations_per_image=evaluate.count, converged=converged,
        max_residual_increase=max(residuals.max_increase, 0.0), monotone=residuals.monotone,
        seconds=time.perf_counter() - started,
    )
