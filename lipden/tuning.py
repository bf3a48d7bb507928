"""``tune``: coarse-to-fine search of solver parameters (and of the shipped prior) on tuning images."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .baselines import tv_reconstruct
from .pretrained import load_denoiser
from .reconstruction import psnr_per_image, reconstruct
from .solvers import (
    box_bounds,
    canonical_method,
    conditions,
    default_parameters,
    fbs_fast_relaxation,
)

#: Coarse grids; step for pnp-fbs is in units of 1/L (rescaled per problem).
COARSE_GRIDS: dict[str, list[dict]] = {
    # low strengths: the optima of manual grids at convergence lie at 0.005 (MRI x8, box),
    # 0.015-0.025 (MRI x4, box) and 0.07 (Gaussian deblurring)
    "pnp-fbs": [{"step": s, "strength": t} for s in (1.0, 1.99) for t in (0.005, 0.015, 0.03, 0.07, 0.15, 0.4, 0.8)],
    "pnp-drs": [{"step": s, "strength": 0.5} for s in (0.3, 1.0, 3.0, 10.0)],
    "red": [{"weight": w} for w in (0.01, 0.03, 0.1, 0.3)],
    "tv": [{"weight": w} for w in (1e-3, 3e-3, 1e-2, 3e-2)],
}
REFINE_FACTORS = (0.6, 1.6)
#: Stop rule of every trial solve by default: the one the benchmark's test rows use. Trials cut
#: short move the optimum (measured on MRI x8 TV: 0.02 at 150 iterations, 0.01 at convergence).
TRIAL_MAX_ITER = 1000
TRIAL_TOL = 1e-5


@dataclass
class TuneResult:
    """Best parameters (``model`` + solver parameters, ready for ``reconstruct``) and the trials."""

    problem: str
    method: str
    parameters: dict
    psnr: float
    trials: list[dict] = field(default_factory=list)


def _batches(images: Sequence[Tensor]) -> list[tuple[list[int], Tensor]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[tuple(image.shape)].append(index)
    return [(idx, torch.cat([images[i] for i in idx])) for idx in groups.values()]


def _measure(problem, batch: Tensor, indices: list[int], seed: int) -> Tensor:
    return torch.cat([problem.measure(batch[k : k + 1], seed + i) for k, i in enumerate(indices)])


def evaluate_parameters(
    problem, images: Sequence[Tensor], method: str, parameters: dict, *, max_iter: int = TRIAL_MAX_ITER,
    tol: float = TRIAL_TOL, seed: int = 0, denoisers: dict | None = None, guarantee: bool = True,
    device: str | torch.device = "cpu", accelerate: int = 0,
) -> float:
    """Mean PSNR of ``method`` with ``parameters`` (incl. ``model`` unless TV) over ``images``.

    ``denoisers`` caches loaded models by name (loading verifies and certifies them).
    ``guarantee=False`` lets an uncertified prior run (see ``reconstruct``). The solves run
    on ``device`` (images, measurements and denoisers are moved there); ``accelerate`` is
    ``reconstruct``'s Anderson memory (0: plain iteration).
    """
    params = dict(parameters)
    model_name = params.pop("model", None)
    denoisers = {} if denoisers is None else denoisers
    if method != "tv" and model_name not in denoisers:
        denoisers[model_name] = load_denoiser(model_name, device=device)
    scores = []
    for indices, cpu_batch in _batches(images):
        batch = cpu_batch.to(device)
        physics = problem.physics(batch.shape, device)
        y = _measure(problem, batch, indices, seed)
        if method == "tv":
            x, _ = tv_reconstruct(y, physics, params["weight"], max_iter=max_iter, tol=tol)
        else:
            x = reconstruct(y, physics, denoisers[model_name], method, max_iter=max_iter, tol=tol,
                            guarantee=guarantee, accelerate=accelerate, **params).x
        scores += psnr_per_image(x, batch).tolist()
    return sum(scores) / len(scores)


def _valid(method: str, params: dict, lipschitz_sq: float) -> bool:
    if method == "tv":
        return params["weight"] > 0
    full = {**default_parameters(method, lipschitz_sq, params), **params}
    return conditions(method, full, lipschitz_sq, 1.0).holds


def tune(
    problem, images: Sequence[Tensor], denoiser_names: Sequence[str] | None, method: str, *,
    max_iter: int = TRIAL_MAX_ITER, tol: float = TRIAL_TOL, seed: int = 0, progress: bool = True,
    guarantee: bool = True, fixed: dict | None = None, device: str | torch.device = "cpu",
    accelerate: int = 0,
) -> TuneResult:
    """Maximise the mean PSNR over ``images`` ((1, C, H, W) tensors in [0, 1]).

    Pass 1 tries the coarse grid of ``method`` for every denoiser name; pass 2 scales
    each numeric parameter of the best trial by 0.6 and 1.6 in turn, keeping only values
    that satisfy the method's convergence conditions. For PnP-FBS the relaxation is not
    searched: each trial uses ``fbs_fast_relaxation`` (0.95 / alpha), which leaves the fixed
    point unchanged and usually reaches it in fewer iterations. ``method="tv"`` tunes the TV weight
    (no denoiser). ``fixed`` parameters (e.g. the box bounds ``{"lower": 0.0}``) go into every
    trial unsearched; the trials run on ``device``. Each trial solve stops like the solve it tunes
    for (``max_iter``, ``tol``; by default the benchmark's 1000 iterations and 1e-5): a
    truncated trial measures a different estimator, and its optimum differs. ``accelerate``:
    the Anderson memory of the trial solves (``reconstruct``; TV ignores it). The result's
    ``parameters`` can be passed to ``reconstruct`` as
    ``reconstruct(y, physics, load_denoiser(p.pop("model")), method, **p)``.
    """
    method = method if method == "tv" else canonical_method(method)
    if not images:
        raise ValueError("no tuning images")
    names = [None] if method == "tv" else list(denoiser_names or [])
    if not names:
        raise ValueError("give at least one denoiser name")
    L = problem.lipschitz_sq(images[0].shape)
    fixed = dict(fixed or {})
    projected = box_bounds(fixed) is not None
    scale = (lambda p: {**p, "step": p["step"] / L}) if method == "pnp-fbs" else (lambda p: dict(p))
    candidates = [
        {**({"model": n} if n else {}), **scale(g), **fixed} for n in names for g in COARSE_GRIDS[method]
    ]
    trials: list[dict] = []
    seen: set[str] = set()
    denoisers: dict = {}
    bar = tqdm(desc=f"tune {method}", disable=not progress, leave=False)

    def run(candidate: dict) -> None:
        if method == "pnp-fbs":
            candidate["relaxation"] = fbs_fast_relaxation(candidate["step"], candidate["strength"], L,
                                                          projected=projected)
        key = json.dumps(candidate, sort_keys=True)
        if key in seen or not _valid(method, {k: v for k, v in candidate.items() if k != "model"}, L):
            return
        seen.add(key)
        score = evaluate_parameters(problem, images, method, candidate, max_iter=max_iter, tol=tol, seed=seed,
                                    denoisers=denoisers, guarantee=guarantee, device=device,
                                    accelerate=0 if method == "tv" else accelerate)
        trials.append({**candidate, "psnr": score})
        bar.update(1)
        bar.set_postfix(best=f"{max(t['psnr'] for t in trials):.2f}")

    for candidate in candidates:
        run(candidate)
    best = max(trials, key=lambda t: t["psnr"])
    searched = [k for k, v in best.items()
                if k not in ("model", "psnr", "relaxation", *fixed) and isinstance(v, float)]
    for name in searched:
        for factor in REFINE_FACTORS:
            candidate = {k: v for k, v in best.items() if k != "psnr"}
            candidate[name] = candidate[name] * factor
            if name == "strength" and method == "pnp-fbs":
                candidate[name] = min(candidate[name], 1.0)
            run(candidate)
        best = max(trials, key=lambda t: t["psnr"])
    bar.close()
    parameters = {k: v for k, v in best.items() if k != "psnr"}
    return TuneResult(problem.name, method, parameters, best["psnr"], trials)


def store_tuned(result: TuneResult, path: str | Path, note: str, key: str | None = None,
                max_iter: int | None = None, accelerate: int = 0) -> None:
    """Record a tuning result in the JSON table of tuned defaults (atomic rewrite).

    ``key`` defaults to the method; the benchmark stores baseline priors as ``method:family``
    and box-constrained runs as ``method:box``. ``max_iter``: an iteration cap the test solves
    must use too (when the trials needed more than the benchmark's 1000); ``accelerate``: the
    Anderson memory the trials used (recorded when > 0, the test solves then use it too).
    """
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else {}
    entry = {"parameters": result.parameters, "tuning_psnr": round(result.psnr, 4), "tuned_on": note}
    if max_iter is not None:
        entry["max_iter"] = max_iter
    if accelerate:
        entry["accelerate"] = accelerate
    table.setdefault(result.problem, {})[key or result.method] = entry
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuned-")
    with os.fdopen(fd, "w") as handle:
        json.dump(table, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
