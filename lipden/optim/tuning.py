"""``tune``: coarse-to-fine search of solver parameters (and of the shipped prior) on tuning images."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lipden.io import atomic_write_text
from lipden.metrics import psnr_per_image
from lipden.models.checkpoint import sha256_of
from lipden.models.pretrained import denoiser_card, load_denoiser
from lipden.optim.base import (
    box_bounds,
    canonical_method,
    conditions,
    default_parameters,
    fbs_fast_relaxation,
    parameter_names,
)
from lipden.optim.baselines import tv_reconstruct
from lipden.optim.reconstruct import reconstruct

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


def batches_by_shape(images: Sequence[Tensor]) -> list[tuple[list[int], Tensor]]:
    """Group (1, C, H, W) images of equal shape: a list of (their indices, their (B, C, H, W) batch)."""
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

    ``denoisers`` caches loaded models by name (loading verifies their sha256).
    ``guarantee=False`` lets an uncertified prior run (see ``reconstruct``). The solves run
    on ``device`` (images, measurements and denoisers are moved there); ``accelerate`` is
    ``reconstruct``'s Anderson memory (0: plain iteration).
    """
    return _evaluate(problem, images, method, parameters, max_iter=max_iter, tol=tol, seed=seed,
                     denoisers=denoisers, guarantee=guarantee, device=device, accelerate=accelerate)[0]


def _evaluate(
    problem, images: Sequence[Tensor], method: str, parameters: dict, *, max_iter: int, tol: float, seed: int,
    denoisers: dict | None, guarantee: bool, device: str | torch.device, accelerate: int,
) -> tuple[float, bool]:
    """``evaluate_parameters`` and whether every solve reached ``tol`` within ``max_iter``."""
    params = dict(parameters)
    model_name = params.pop("model", None)
    denoisers = {} if denoisers is None else denoisers
    if method != "tv" and model_name not in denoisers:
        denoisers[model_name] = load_denoiser(model_name, device=device)
    scores, converged = [], True
    for indices, cpu_batch in batches_by_shape(images):
        batch = cpu_batch.to(device)
        physics = problem.physics(batch.shape, device)
        y = _measure(problem, batch, indices, seed)
        if method == "tv":
            x, iterations = tv_reconstruct(y, physics, params["weight"], max_iter=max_iter, tol=tol)
            converged &= bool((iterations < max_iter).all())
        else:
            result = reconstruct(y, physics, denoisers[model_name], method, max_iter=max_iter, tol=tol,
                                 guarantee=guarantee, accelerate=accelerate, **params)
            x, converged = result.x, converged and result.converged
        scores += psnr_per_image(x, batch).tolist()
    return sum(scores) / len(scores), bool(converged)


def _best(trials: list[dict]) -> dict:
    """The trial of highest mean PSNR among those whose solves all converged (among all if none did)."""
    return max([t for t in trials if t["converged"]] or trials,
               key=lambda t: -math.inf if math.isnan(t["psnr"]) else t["psnr"])


def _valid(method: str, params: dict, lipschitz_sq: float) -> bool:
    if method == "tv":
        return params["weight"] > 0
    full = {**default_parameters(method, lipschitz_sq, params), **params}
    return conditions(method, full, lipschitz_sq, 1.0).holds


def check_grid(method: str, grid: Mapping[str, Sequence[float]], fixed: Mapping[str, float] | None = None) -> None:
    """ValueError unless ``grid`` and ``fixed`` name parameters of ``method`` (not ``model``), the
    grid's each with values and none both searched and fixed."""
    method = method if method == "tv" else canonical_method(method)
    known = ("weight",) if method == "tv" else parameter_names(method)
    for name in fixed or {}:
        if name not in known:
            raise ValueError(f"{method} has no parameter {name!r} to fix (it has {', '.join(known)})")
    for name, values in grid.items():
        if name not in known:
            raise ValueError(f"{method} has no parameter {name!r} to search (it has {', '.join(known)})")
        if name in (fixed or {}):
            raise ValueError(f"{name!r} is both searched and fixed")
        if not values:
            raise ValueError(f"no values to try for {name!r}")


def tune(
    problem, images: Sequence[Tensor], denoiser_names: Sequence[str] | None, method: str, *,
    max_iter: int = TRIAL_MAX_ITER, tol: float = TRIAL_TOL, seed: int = 0, progress: bool = True,
    guarantee: bool = True, fixed: dict | None = None, device: str | torch.device = "cpu",
    accelerate: int = 0, grid: Mapping[str, Sequence[float]] | None = None, extend: int = 0,
) -> TuneResult:
    """Maximise the mean PSNR over ``images`` ((1, C, H, W) tensors in [0, 1]).

    Coarse-to-fine (no ``grid``): pass 1 tries the coarse grid of ``method`` for every
    denoiser name; pass 2 scales each numeric parameter of the best trial by 0.6 and 1.6 in
    turn, keeping only values that satisfy the method's convergence conditions.

    Given ``grid`` ({name: values}, values as ``reconstruct`` takes them): every denoiser name
    times the Cartesian product of the values, nothing else, except that a one-parameter grid
    is extended past an edge optimum up to ``extend`` times per denoiser, by the grid's
    geometric ratio (max / min) ** (1 / (n - 1)) (a strength stays <= 1). This is the
    protocol of the stored benchmark defaults (a short grid run to convergence).

    Trials whose solves did not all converge (relative residual ``tol`` within ``max_iter``)
    are chosen only when no trial converged. For PnP-FBS without a given relaxation, each
    trial uses ``fbs_fast_relaxation`` (0.95 / alpha), which leaves the fixed point unchanged
    and usually reaches it in fewer iterations. ``method="tv"`` tunes the TV weight (no
    denoiser). ``fixed`` parameters (e.g. the box bounds ``{"lower": 0.0}``) go into every
    trial unsearched; the trials run on ``device``. Each trial solve stops like the solve it
    tunes for (``max_iter``, ``tol``; by default the benchmark's 1000 iterations and 1e-5): a
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
    fixed = dict(fixed or {})
    if grid is not None:
        check_grid(method, grid, fixed)
    solve = functools.partial(_evaluate, problem, images, method, max_iter=max_iter, tol=tol, seed=seed,
                              denoisers={}, guarantee=guarantee, device=device,
                              accelerate=0 if method == "tv" else accelerate)
    trials = _Trials(method, problem.lipschitz_sq(images[0].shape), fixed, grid, solve, progress)
    points = _grid_points(method, grid, trials.lipschitz_sq)
    for name in names:
        for point in points:
            trials.run({**({"model": name} if name else {}), **point, **fixed})
    if not trials.done:
        raise ValueError(f"no candidate satisfies the convergence conditions of {method}")
    if grid is None:
        _refine(trials, fixed)
    elif len(grid) == 1 and extend > 0:
        _extend_edges(trials.done, trials.run, trials.valid, names, grid, extend)
    trials.bar.close()
    best = _best(trials.done)
    parameters = {k: v for k, v in best.items() if k not in ("psnr", "converged")}
    return TuneResult(problem.name, method, parameters, best["psnr"], trials.done)


def _grid_points(method: str, grid: Mapping[str, Sequence[float]] | None, lipschitz_sq: float) -> list[dict]:
    """The points of ``grid`` (its Cartesian product), or the coarse grid of ``method`` (whose
    PnP-FBS step is in units of 1/L)."""
    if grid is not None:
        return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if method == "pnp-fbs":
        return [{**p, "step": p["step"] / lipschitz_sq} for p in COARSE_GRIDS[method]]
    return [dict(p) for p in COARSE_GRIDS[method]]


class _Trials:
    """The trials of one tune: each candidate (a dict of ``model`` and parameters) is completed
    (PnP-FBS's fast relaxation), checked against the method's theorem, solved once, recorded."""

    def __init__(self, method: str, lipschitz_sq: float, fixed: dict, grid: Mapping | None,
                 solve: Callable[..., tuple[float, bool]], progress: bool) -> None:
        self.method, self.lipschitz_sq, self.solve = method, lipschitz_sq, solve
        self.projected = box_bounds(fixed) is not None
        self.fast_relaxation = method == "pnp-fbs" and "relaxation" not in {*fixed, *(grid or {})}
        self.done: list[dict] = []
        self.seen: set[str] = set()
        self.bar = tqdm(desc=f"tune {method}", disable=not progress, leave=False)

    def prepare(self, candidate: dict) -> dict:
        """Add PnP-FBS's fast relaxation (step / strength left out take reconstruct's defaults)."""
        if self.fast_relaxation:
            effective = {**default_parameters(self.method, self.lipschitz_sq), **candidate}
            candidate["relaxation"] = fbs_fast_relaxation(effective["step"], effective["strength"],
                                                          self.lipschitz_sq, projected=self.projected)
        return candidate

    def valid(self, candidate: dict) -> bool:
        prepared = self.prepare(dict(candidate))
        return _valid(self.method, {k: v for k, v in prepared.items() if k != "model"}, self.lipschitz_sq)

    def run(self, candidate: dict) -> bool:
        """Solve a new valid candidate and record it; False when it was tried before or is invalid."""
        candidate = self.prepare(candidate)
        key = json.dumps(candidate, sort_keys=True)
        if key in self.seen or not self.valid(candidate):
            return False
        self.seen.add(key)
        score, converged = self.solve(candidate)
        self.done.append({**candidate, "psnr": score, "converged": converged})
        self.bar.update(1)
        self.bar.set_postfix(best=f"{_best(self.done)['psnr']:.2f}")
        return True


def _refine(trials: _Trials, fixed: dict) -> None:
    """Pass 2: scale each searched float parameter of the best trial by ``REFINE_FACTORS`` in turn."""
    best = _best(trials.done)
    searched = [k for k, v in best.items()
                if k not in ("model", "psnr", "converged", "relaxation", *fixed) and isinstance(v, float)]
    for name in searched:
        for factor in REFINE_FACTORS:
            candidate = {k: v for k, v in best.items() if k not in ("psnr", "converged")}
            candidate[name] = candidate[name] * factor
            if name == "strength" and trials.method == "pnp-fbs":
                candidate[name] = min(candidate[name], 1.0)
            trials.run(candidate)
        best = _best(trials.done)


def _extend_edges(trials: list[dict], run, valid, names: list, grid: Mapping[str, Sequence[float]],
                  extend: int) -> None:
    """Per denoiser, add values past the edge of a 1-D grid while the optimum sits on that edge;
    a value past the method's convergence limit (a strength above 1, a step above 2 / L...) is
    replaced by the largest valid value below it."""
    ((name, values),) = grid.items()
    low, high = min(values), max(values)
    if len(set(values)) < 2 or low <= 0:
        return
    ratio = (high / low) ** (1 / (len(set(values)) - 1))
    for model in names:
        for _ in range(extend):
            own = [t for t in trials if t.get("model") == model]
            if not own:
                break
            best, tried = _best(own), sorted({t[name] for t in own})
            if best[name] == tried[0]:
                value = tried[0] / ratio
            elif best[name] == tried[-1]:
                value = tried[-1] * ratio
            else:
                break
            candidate = {k: v for k, v in best.items() if k not in ("psnr", "converged")}
            candidate[name] = float(f"{value:.4g}")
            if candidate[name] > tried[-1] and not valid(candidate):
                limit = _largest_valid(candidate, name, tried[-1], candidate[name], valid)
                if limit is None:
                    break
                candidate[name] = limit
            if not run(candidate):
                break


def _largest_valid(candidate: dict, name: str, low: float, high: float, valid) -> float | None:
    """Bisect for the largest value of ``name`` in (low, high) that ``valid`` accepts (low is valid,
    high is not), rounded to 4 significant digits when that stays valid; None when no room is left."""
    start = low
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if valid({**candidate, name: middle}) else (low, middle)
    quantum = 10.0 ** (math.floor(math.log10(low)) - 3) if low > 0 else 0.0
    rounded = float(f"{math.floor(low / quantum) * quantum:.4g}") if quantum else low  # 4 digits, down
    value = rounded if valid({**candidate, name: rounded}) else low
    return value if value > start * (1 + 1e-6) else None


def defaults_key(method: str, family: str | None = None, boxed: bool = False) -> str:
    """Key of a method's entry in the tuned defaults: the method for the spline prior (and TV),
    ``method:family`` for another prior family, with ``:box`` for a box-constrained solve."""
    key = method if family in (None, "spline") else f"{method}:{family}"
    return key + (":box" if boxed else "")


def store_tuned(result: TuneResult, path: str | Path, note: str, key: str | None = None,
                max_iter: int | None = None, accelerate: int = 0) -> None:
    """Record a tuning result in the JSON table of tuned defaults (atomic rewrite).

    ``key`` defaults to the method (see ``defaults_key``). ``max_iter``: an iteration cap the
    test solves must use too (when the trials needed more than the benchmark's 1000);
    ``accelerate``: the Anderson memory the trials used (recorded when > 0, the test solves
    then use it too). A replaced entry's parameters and tuning PSNR are kept in the note; the
    sha256 of the prior's weights is recorded, so that an entry of a reshipped prior is told apart.
    """
    path = Path(path)
    with _exclusive(path):
        _store_locked(result, path, note, key, max_iter, accelerate)


@contextlib.contextmanager
def _exclusive(path: Path):
    """Serialise read-modify-writes of ``path`` across processes (two tunes writing at once)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: the rewrite stays atomic
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as lock:  # beside the file: every writer sees it
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _weights_sha256(model: str) -> str | None:
    """sha256 of a shipped model's weights (from its card) or of a weights file."""
    try:
        return str(denoiser_card(model)["sha256"])
    except ValueError:
        return sha256_of(model) if Path(model).is_file() else None


def _store_locked(result: TuneResult, path: Path, note: str, key: str | None, max_iter: int | None,
                  accelerate: int) -> None:
    table = json.loads(path.read_text()) if path.is_file() else {}
    old = table.get(result.problem, {}).get(key or result.method)
    if old and old.get("parameters") != result.parameters:
        note += (f" Replaces {json.dumps(old.get('parameters'), sort_keys=True)} "
                 f"(tuning PSNR {old.get('tuning_psnr')}).")
    entry = {"parameters": result.parameters, "tuning_psnr": round(result.psnr, 4), "tuned_on": note}
    if "model" in result.parameters:  # the weights tuned with: a reshipped prior makes the entry stale
        entry["weights_sha256"] = _weights_sha256(str(result.parameters["model"]))
    if max_iter is not None:
        entry["max_iter"] = max_iter
    if accelerate:
        entry["accelerate"] = accelerate
    table.setdefault(result.problem, {})[key or result.method] = entry
    atomic_write_text(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
