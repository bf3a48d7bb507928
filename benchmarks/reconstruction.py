"""Deblurring and MRI benchmark: learned 1-Lipschitz priors vs TV and the no-prior baseline.

For each problem and row (a method with a prior family), the parameters come from
``problems/tuned_defaults.json`` (written by ``python cli.py tune ... --write`` on the
tuning images); a pair without a stored entry is tuned here, on the tuning images only,
before the test images are touched. Each (problem, row) result is cached as its own JSON
file under ``OUTPUT/runs/``, so a long CPU run can be interrupted and resumed, and subsets
(``problems``, ``rows``, ``stride``) can be run separately; the summary table and the
figures are rebuilt from every cached result of the same test set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from lipden.io import read_image, write_image
from lipden.metrics import psnr_per_image, ssim
from lipden.models.pretrained import denoiser_card, list_denoisers, load_denoiser
from lipden.nn.splines import set_spline_backend
from lipden.optim.base import default_parameters, fbs_fast_relaxation
from lipden.optim.baselines import TV_INNER_ITERATIONS, TV_INNER_TOL, tv_reconstruct
from lipden.optim.reconstruct import reconstruct
from lipden.optim.tuning import TRIAL_MAX_ITER, TRIAL_TOL, batches_by_shape, defaults_key, tune
from problems import dev_set, problem_from_name

from .common import WRITTEN, device_name, machine, table_cell, write_results, write_text_atomic


class Setup(TypedDict):
    """Problems and (dataset, start, stop) image ranges of a benchmark, full and quick."""

    problems: list[str]
    quick_problems: list[str]
    test: tuple[str, int, int]
    quick_test: tuple[str, int, int]
    tune: tuple[str, int, int]
    quick_tune: tuple[str, int, int]


SETUPS: dict[str, Setup] = {
    "mri": {
        "problems": ["mri-random-x4-cf0.08-noise0.002", "mri-random-x8-cf0.04-noise0.002",
                     "mri-equispaced-x4-cf0.08-noise0.002", "mri-equispaced-x8-cf0.04-noise0.002"],
        "quick_problems": ["mri-random-x4-cf0.08-noise0.002"],
        "test": ("mri_colin27", 8, 40), "quick_test": ("mri_colin27", 8, 9),
        "tune": ("mri_colin27", 0, 8), "quick_tune": ("mri_colin27", 0, 2),
    },
    "deblur": {
        "problems": ["deblur-gaussian1.6-noise0.01", "deblur-motion31-seed1-noise0.01",
                     "deblur-uniform9-noise0.01", "deblur-motion31-seed2-noise0.01",
                     "deblur-gaussian1.6-noise0.03", "deblur-motion31-seed1-noise0.03",
                     "deblur-uniform9-noise0.03", "deblur-motion31-seed2-noise0.03"],
        "quick_problems": ["deblur-gaussian1.6-noise0.01"],
        "test": ("bsd68", 0, 10), "quick_test": ("bsd68", 0, 1),
        "tune": ("set12", 0, 12), "quick_tune": ("set12", 0, 2),
    },
}


@dataclass(frozen=True)
class Row:
    """A benchmark row: ``method`` (a solver, ``tv`` or ``baseline``) with a prior ``family``."""

    label: str
    method: str
    family: str | None = None
    guarantee: bool = True
    bounds: tuple[float, float] | None = None  # box constraint lower <= x <= upper (projected)

    def models(self) -> list[str]:
        """Shipped denoisers of this family (``spline`` -> spline-sigma5, spline-sigma15, ...)."""
        if self.family is None:
            return []
        return [name for name in list_denoisers() if name.split("-sigma")[0] == self.family]

    def defaults_key(self) -> str:
        """Key of the stored defaults: the method for the spline prior, ``method:family`` otherwise,
        with ``:box`` appended for a box-constrained row."""
        return defaults_key(self.method, self.family, self.bounds is not None)

    def fixed(self) -> dict:
        """Parameters every trial and solve of this row gets unsearched (the box bounds)."""
        return {} if self.bounds is None else {"lower": self.bounds[0], "upper": self.bounds[1]}


ROWS: dict[str, Row] = {
    "baseline": Row("zero-filled / A^T y", "baseline"),
    "tv": Row("TV (FISTA)", "tv"),
    "fbs-spline": Row("PnP-FBS, spline prior", "pnp-fbs", "spline"),
    "fbs-spline-box": Row("PnP-FBS, spline prior, box [0, 1]", "pnp-fbs", "spline", bounds=(0.0, 1.0)),
    "drs-spline": Row("PnP-DRS, spline prior", "pnp-drs", "spline"),
    "red-spline": Row("RED, spline prior", "red", "spline"),
    "fbs-relu": Row("PnP-FBS, 1-Lipschitz ReLU prior", "pnp-fbs", "relu"),
    "fbs-absolute_value": Row("PnP-FBS, 1-Lipschitz |x| prior", "pnp-fbs", "absolute_value"),
    "fbs-groupsort": Row("PnP-FBS, 1-Lipschitz GroupSort prior", "pnp-fbs", "groupsort"),
    "fbs-householder": Row("PnP-FBS, 1-Lipschitz HouseHolder prior", "pnp-fbs", "householder"),
    "fbs-free": Row("PnP-FBS, unconstrained CNN (NO guarantee)", "pnp-fbs", "free", guarantee=False),
}
QUICK_ROWS = ("baseline", "tv", "fbs-spline", "fbs-relu")


def _parameters(problem, row: Row, tuning_images: list[Tensor], max_iter: int, tol: float, quick: bool,
                device: str = "cpu") -> tuple[dict, str]:
    """Stored parameters, else tuned now with the test solves' own stop rule (``max_iter``, ``tol``)."""
    stored = problem.default_parameters(row.defaults_key())
    if stored and (row.method == "tv" or stored.get("model") in row.models()):
        return stored, "stored (problems/tuned_defaults.json)"
    if quick:  # no tuning in quick mode: the solver's safe defaults and the lowest-sigma model
        L = problem.lipschitz_sq(tuning_images[0].shape)
        defaults = {"weight": 3e-3} if row.method == "tv" else default_parameters(row.method, L) | row.fixed()
        if row.bounds is not None and row.method == "pnp-fbs":
            defaults["relaxation"] = min(defaults["relaxation"], fbs_fast_relaxation(
                defaults["step"], defaults["strength"], L, projected=True))
        models = sorted(row.models(), key=lambda m: float(m.split("-sigma")[1]))
        return ({"model": models[0]} if models else {}) | defaults, "UNTUNED safe defaults (quick mode)"
    result = tune(problem, tuning_images, row.models(), row.method, max_iter=max_iter, tol=tol, progress=False,
                  guarantee=row.guarantee, fixed=row.fixed(), device=device)
    return result.parameters, (f"tuned now ({len(result.trials)} trials, cap {max_iter} iterations, tol {tol:g}, "
                               f"on {device_name(device)}; "
                               f"best tuning PSNR {result.psnr:.2f} dB)")


def _iteration_cap(problem, row: Row, max_iter: int, quick: bool) -> int:
    """The common cap, or the larger one stored with the row's tuned entry (a weak prior
    converges slowly); quick runs keep their own small cap."""
    return max_iter if quick else max(max_iter, problem.default_iteration_cap(row.defaults_key()) or 0)


def _chunks(images: list[Tensor], chunk: int) -> list[tuple[list[int], Tensor]]:
    """Batches of at most ``chunk`` same-shape images (0: one batch per shape), in test order."""
    out = []
    for indices, batch in batches_by_shape(images):
        size = chunk or len(indices)
        out += [(indices[s : s + size], batch[s : s + size]) for s in range(0, len(indices), size)]
    return out


def _load_progress(checkpoint: Path | None, key: dict) -> dict | None:
    """The saved progress of this row when it was made with the same ``key`` (parameters, cap,
    tolerance, acceleration, test set), else None (progress of another setup is not reused)."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    try:
        state = json.loads(checkpoint.read_text())
    except (OSError, ValueError):  # unreadable or not JSON: start again
        print(f"{checkpoint}: unreadable saved progress; starting the row again")
        return None
    if state.get("key") != json.loads(json.dumps(key)):
        print(f"{checkpoint}: saved progress is of another setup; starting the row again")
        return None
    return state


def _timing(runs: list[dict]) -> tuple[str, int | None]:
    """Device and thread count of a row solved in one or more runs (a resumed row may mix them)."""
    setups = {(r["device"], r["torch_threads"]) for r in runs}
    if len(setups) == 1:
        return setups.pop()
    parts = [f"{r['device']}, {r['torch_threads']} thread(s): {r['images']} images" for r in runs]
    return "mixed: " + "; ".join(parts), None


def _solve_row(problem, row: Row, parameters: dict, images: list[Tensor], max_iter: int, tol: float,
               device: str, progress: bool = False, accelerate: int = 0, *, chunk: int = 0,
               checkpoint: Path | None = None, key: dict | None = None,
               seeds: list[int] | None = None) -> tuple[dict, Tensor]:
    """Solve every test image (batched by shape); per-image metrics and image 0's result.

    ``accelerate``: Anderson memory of the PnP / RED solves (0: plain iteration). ``chunk``:
    at most this many images per batched solve (0: one solve per image shape). Every image
    stops at its own first iteration below ``tol`` and Anderson mixes within an image only,
    (TV solves each image on its own), so the per-image results do not depend on the batching.
    ``seeds``: the noise seed of each image (default its position), its index in the full test
    set, so that a subset solved directly sees the noise of the full run. With ``checkpoint`` (a JSON path),
    the progress is saved after every batch, image 0's result beside it as ``.png``, and a
    later call with the same ``key`` resumes after the last saved batch."""
    params = dict(parameters)
    model = params.pop("model", None)
    denoiser = load_denoiser(model, device=device) if model else None
    n = len(images)
    key = {} if key is None else key
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state = _load_progress(checkpoint, key) or {
        "key": key, "per_image": {k: [None] * n for k in ("psnr", "ssim", "iterations", "converged")},
        "increases": [], "monotone": [], "curves_image0": {}, "runs": []}
    per = state["per_image"]
    run_log: dict = {"device": device_name(device), "torch_threads": torch.get_num_threads(), "images": 0,
                     "seconds": 0.0}
    state["runs"].append(run_log)
    first_png = None if checkpoint is None else checkpoint.with_suffix(".png")
    first = None
    seeds = list(range(n)) if seeds is None else seeds
    for indices, batch in _chunks(images, chunk):
        todo = [k for k, i in enumerate(indices) if per["psnr"][i] is None]
        if not todo:
            continue  # solved in an earlier run (with another chunk, a batch may be partly solved)
        indices, batch = [indices[k] for k in todo], batch[todo]
        started = time.perf_counter()
        truth = batch.to(device)
        physics = problem.physics(truth.shape, device)
        y = torch.cat([problem.measure(images[i].to(device), seed=seeds[i]) for i in indices])
        if row.method == "baseline":
            x = problem.baseline(y, truth.shape)
            its: list = [0] * len(indices)
            conv = [True] * len(indices)
        elif row.method == "tv":
            x, counts = tv_reconstruct(y, physics, params["weight"], max_iter=max_iter, tol=tol)
            its = [int(k) for k in counts]
            conv = [k < max_iter for k in its]
        else:
            result = reconstruct(y, physics, denoiser, row.method, max_iter=max_iter, tol=tol, x_true=truth,
                                 guarantee=row.guarantee, progress=progress, accelerate=accelerate, **params)
            x = result.x
            # each image stops at its first iteration below tol (frozen after)
            conv = (result.final_relative_residuals <= tol).tolist()
            its = [int(k) if ok else None for k, ok in zip(result.iterations_per_image, conv, strict=True)]
            state["increases"].append(result.max_residual_increase)
            state["monotone"].append(result.monotone)
            if 0 in indices:
                b = indices.index(0)
                own = int(result.iterations_per_image[b])
                assert result.psnr is not None  # x_true was given
                state["curves_image0"] = {
                    "psnr": [round(float(v), 4) for v in result.psnr[:own, b]],
                    "relative_residual": [float(v) for v in result.relative_residuals[:own, b]]}
        scores = psnr_per_image(x, truth).tolist()
        for b, i in enumerate(indices):
            per["psnr"][i], per["ssim"][i] = scores[b], ssim(x[b].cpu(), truth[b].cpu())
            per["iterations"][i], per["converged"][i] = its[b], conv[b]
            if i == 0:
                first = x[b : b + 1].detach().clamp(0, 1).cpu()
                if first_png is not None:
                    write_image(first_png, first[0], force=True)
        run_log["seconds"] += time.perf_counter() - started
        run_log["images"] += len(indices)
        if checkpoint is not None:
            write_text_atomic(checkpoint, json.dumps(state) + "\n")
    if first is None:  # image 0 was solved in an earlier run
        assert first_png is not None
        first = read_image(first_png)[0][None]
    runs = [r for r in state["runs"] if r["images"]]
    device_label, threads = _timing(runs)
    counted = [k for k in per["iterations"] if k is not None]
    increases, monotone = state["increases"], state["monotone"]
    summary = {
        "label": row.label, "method": row.method, "family": row.family, "guarantee": row.guarantee,
        "psnr": float(np.mean(per["psnr"])), "ssim": float(np.mean(per["ssim"])),
        "iterations_mean": float(np.mean(counted)) if counted else None,
        "converged_all": all(per["converged"]),
        "max_residual_increase": max(increases) if increases else None,
        "monotone_all": all(monotone) if monotone else None,
        "seconds_per_image": sum(r["seconds"] for r in runs) / n, "device": device_label, "torch_threads": threads,
        "per_image": per, "curves_image0": state["curves_image0"],
    }
    if len(runs) > 1:
        summary["runs"] = runs  # solved over several runs (resumed after an interruption)
    return summary, first


def _seconds(row: dict) -> str:
    """Seconds per image, with the device when it was not the CPU (rows without one ran on CPU),
    else with the row's own torch thread count when it was recorded (rows of one table may
    come from runs with different thread counts, the machine line names only the last run's)."""
    device = row.get("device", "cpu")
    if not device.startswith("cpu"):
        return f"{row['seconds_per_image']:.1f} ({device})"
    threads = row.get("torch_threads")
    suffix = "" if threads is None else f" ({threads} thread{'s' if threads > 1 else ''})"
    return f"{row['seconds_per_image']:.1f}{suffix}"


def _stem(kind: str, stride: int, quick: bool) -> str:
    """Name of a run's result files and cache folder: ``mri``, ``mri-stride4``, ``mri-quick``..."""
    return f"{kind}{f'-stride{stride}' if stride > 1 else ''}{'-quick' if quick else ''}"


def _subset_of(full: dict, stride: int, source: str) -> dict:
    """The row of every ``stride``-th test image, taken from the full test set's cached row.

    Each image is solved independently (batched solves freeze every image at its own
    stopping iteration), so these per-image results are what a subset run computes. The
    residual-monotonicity fields and the time per image stay those of the full run.
    """
    per = {k: v[::stride] for k, v in full["per_image"].items()}
    counted = [k for k in per["iterations"] if k is not None]
    return full | {
        "psnr": float(np.mean(per["psnr"])), "ssim": float(np.mean(per["ssim"])),
        "iterations_mean": float(np.mean(counted)) if counted else None,
        "converged_all": all(per["converged"]), "per_image": per,
        "parameters_source": f"{full.get('parameters_source', '')}; images taken from {source}",
    }


def _figures(folder: Path, stem: str, problem_name: str, rows: dict, run_dir: Path, truth: Tensor) -> list[str]:
    """A grid of image-0 reconstructions and the PSNR / residual curves; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.io import imread

    panels = [("ground truth", truth[0, 0].numpy(), None)]
    for row_id, row in rows.items():
        png = run_dir / f"{row_id}.png"
        if png.is_file():
            panels.append((row["label"], imread(png) / 255.0, row["per_image"]["psnr"][0]))
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, image, score) in zip(axes.flat, panels, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(label if score is None else f"{label}\n{score:.2f} dB", fontsize=8)
    fig.suptitle(problem_name, fontsize=10)
    names = [f"{stem}-{problem_name}.png"]
    _save(fig, folder / names[0])
    curves = {rows[r]["label"]: rows[r]["curves_image0"] for r in rows if rows[r].get("curves_image0")}
    if curves:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for label, curve in curves.items():
            left.plot(range(1, len(curve["psnr"]) + 1), curve["psnr"], label=label)
            right.semilogy(range(1, len(curve["relative_residual"]) + 1), curve["relative_residual"], label=label)
        left.set(xlabel="iteration", ylabel="PSNR (dB)", title="PSNR, test image 0")
        right.set(xlabel="iteration", ylabel="||z_{k+1} - z_k|| / ||z_{k+1}||", title="fixed-point residual")
        left.legend(fontsize=7)
        names.append(f"{stem}-{problem_name}-curves.png")
        _save(fig, folder / names[1])
    return names


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".png") as handle:
        fig.savefig(handle.name, dpi=110, bbox_inches="tight")
    os.replace(handle.name, path)
    WRITTEN.append(path)
    plt.close(fig)


def run(
    kind: str, quick: bool = False, output: str = "results", *, problems: list[str] | None = None,
    rows: list[str] | None = None, stride: int = 1, device: str = "cpu", force: bool = False,
    compile_spline: bool = False, progress: bool = False, chunk: int = 8,
) -> dict:
    """Run (or resume) the ``kind`` ("mri" or "deblur") benchmark and rebuild its summary.

    ``problems`` / ``rows`` restrict what is computed now (the summary still shows every
    cached row of the same test set); ``stride`` keeps every stride-th test image (a subset,
    labelled as such), taken from the full run's cached rows where they exist, and taken
    again when a full row is newer than the subset's; ``force`` recomputes cached rows (a
    subset row is then taken again, not solved, when its full row exists); ``compile_spline`` runs the spline
    activations through ``torch.compile`` (same function, faster on CPU); ``progress``
    shows a bar per solve. ``chunk``: at most this many test images per batched solve
    (0: all images of a shape at once); a row's progress is saved after every batch under
    ``runs/`` as ``ROW.partial.json`` and an interrupted row resumes there (``force`` starts
    it again); the per-image results do not depend on ``chunk``.
    """
    if compile_spline:
        set_spline_backend("compiled")
    setup = SETUPS[kind]
    max_iter, tol = (60, 1e-4) if quick else (TRIAL_MAX_ITER, TRIAL_TOL)  # the full run tunes and tests alike
    unknown = sorted(set(rows or []) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if stride < 1:
        raise ValueError("stride must be >= 1")
    if chunk < 0:
        raise ValueError("chunk must be >= 0 (0: one batch per image shape)")
    dataset, start, stop = setup["quick_test"] if quick else setup["test"]
    test_indices = list(range(start, stop, stride))
    test_spec = f"{dataset}[{start}:{stop}" + (f":{stride}]" if stride > 1 else "]")
    test_images = dev_set(dataset, test_indices)
    tune_set, tune_start, tune_stop = setup["quick_tune"] if quick else setup["tune"]
    tuning_images = dev_set(tune_set, slice(tune_start, tune_stop))
    stem = _stem(kind, stride, quick)
    folder = Path(output)
    runs = folder / "runs" / stem
    problem_names = problems or (setup["quick_problems"] if quick else setup["problems"])
    row_ids = rows or list(QUICK_ROWS if quick else ROWS)

    for name in problem_names:
        problem = problem_from_name(name)
        for row_id in row_ids:
            row = ROWS[row_id]
            target = runs / name / f"{row_id}.json"
            full = folder / "runs" / _stem(kind, 1, quick) / name / f"{row_id}.json"
            derive = stride > 1 and full.is_file()  # the subset's images were all solved there
            stale = derive and target.is_file() and full.stat().st_mtime_ns > target.stat().st_mtime_ns
            if target.is_file() and not force and not stale:
                continue
            if row.family is not None and not row.models():
                print(f"skip {name} / {row_id}: no shipped {row.family} model")
                continue
            if derive:
                summary = _subset_of(json.loads(full.read_text()), stride, str(full))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(full.with_suffix(".png"), runs / name / f"{row_id}.png")
                write_text_atomic(target, json.dumps(summary, indent=1) + "\n")
                print(f"{name} / {row.label}: {summary['psnr']:.2f} dB (every {stride}-th image of the full run)")
                continue
            cap = _iteration_cap(problem, row, max_iter, quick)
            parameters, source = ({}, "none") if row.method == "baseline" else _parameters(
                problem, row, tuning_images, cap, tol, quick, device)
            accelerate = 0 if quick else problem.default_acceleration(row.defaults_key())
            checkpoint = runs / name / f"{row_id}.partial.json"
            if force:
                checkpoint.unlink(missing_ok=True)
                checkpoint.with_suffix(".png").unlink(missing_ok=True)
            weights = denoiser_card(parameters["model"])["sha256"] if "model" in parameters else None
            key = {"row": row_id, "problem": name, "test_set": test_spec, "parameters": parameters,
                   "weights_sha256": weights, "max_iter": cap, "tol": tol, "accelerate": accelerate}
            summary, first = _solve_row(problem, row, parameters, test_images, cap, tol, device, progress, accelerate,
                                        chunk=chunk, checkpoint=checkpoint, key=key,
                                        seeds=[i - start for i in test_indices])
            summary.update(parameters=parameters, parameters_source=source, problem=name, max_iter=cap,
                           accelerate=accelerate)
            if row.method == "tv":
                summary["tv_prox"] = {"inner_iterations": TV_INNER_ITERATIONS, "inner_tol": TV_INNER_TOL}
            target.parent.mkdir(parents=True, exist_ok=True)
            write_image(runs / name / f"{row_id}.png", first[0], force=True)
            write_text_atomic(target, json.dumps(summary, indent=1) + "\n")
            checkpoint.unlink(missing_ok=True)
            checkpoint.with_suffix(".png").unlink(missing_ok=True)
            WRITTEN[:] = [p for p in WRITTEN if p != checkpoint]  # progress files are not results
            print(f"{name} / {row.label}: {summary['psnr']:.2f} dB, {summary['iterations_mean']} iterations, "
                  f"converged {summary['converged_all']}")

    results: dict = {"machine": machine(), "quick": quick, "max_iter": max_iter, "tol": tol,
                     "device": device, "test_set": test_spec,
                     "tuning_set": f"{tune_set}[{tune_start}:{tune_stop}]", "problems": {}}
    subset_note = f" (SUBSET: every {stride}-th test image)" if stride > 1 else ""
    lines = [f"# {kind} reconstruction benchmark{' (QUICK: subsets, fewer iterations)' if quick else ''}{subset_note}",
             "", f"Test images: {test_spec}; parameters tuned on {results['tuning_set']} (see each row's source); "
             f"stop at relative residual {tol:g} or {max_iter} iterations (unless a row states its own cap); rows computed now on {device_name(device)}, others as their s/image column says (CPU when it names no GPU, with the row's torch thread count when recorded). Machine: {results['machine']}.",
             "PSNR / SSIM are means over the test images (estimates clipped to [0, 1]); iterations: mean first "
             "iteration at which the image's relative residual reached the tolerance (each image stops there); "
             "residual non-increasing: no increase beyond float round-off (2e-6 of the iterate's norm), the "
             "largest relative increase r_{k+1}/r_k - 1 is shown beside it.", ""]
    for name in setup["problems"]:
        run_dir = runs / name
        cached = {r: json.loads((run_dir / f"{r}.json").read_text()) for r in ROWS if (run_dir / f"{r}.json").is_file()}
        if not cached:
            continue
        results["problems"][name] = cached
        lines += [f"## {name}", "", "| method | PSNR (dB) | SSIM | iterations | converged | residual non-increasing "
                  "| max relative residual increase | s/image | prior and parameters |", "|---|---|---|---|---|---|---|---|---|"]
        for row in cached.values():
            its = "-" if row["iterations_mean"] is None else f"{row['iterations_mean']:.0f}"
            inc = "-" if row["max_residual_increase"] is None else f"{row['max_residual_increase']:.1e}"
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["parameters"].items())
            if row.get("max_iter", max_iter) != max_iter:
                params += f" (cap {row['max_iter']} iterations)"
            if row.get("accelerate"):
                params += f" (Anderson memory {row['accelerate']}: iterations count passes)"
            mono = "-" if row["monotone_all"] is None else str(row["monotone_all"])
            lines.append(f"| {table_cell(row['label'])} | {row['psnr']:.2f} | {row['ssim']:.4f} | {its} | {row['converged_all']} "
                         f"| {mono} | {inc} | {_seconds(row)} | {params} |")
        truth = test_images[0]
        figures = _figures(folder, stem, name, cached, run_dir, truth)
        lines += ["", *[f"![{f}]({f})" for f in figures], ""]
    solve_seconds = sum(row["seconds_per_image"] * len(row["per_image"]["psnr"])
                        for cached in results["problems"].values() for row in cached.values())
    results["solve_seconds_all_rows"] = solve_seconds
    lines.append(f"Solve time of every row above: {solve_seconds / 3600:.2f} h (each row's seconds per image "
                 "times its images, on the row's own device and thread count; tuning not included).")
    write_results(output, stem, results, "\n".join(lines) + "\n")
    return results
