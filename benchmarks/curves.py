"""Learning curves of the training runs: set12 validation PSNR against patches seen and against
training wall time, read from each run's ``log.csv`` and training state (``checkpoints/<run>/``);
runs whose folder was removed keep the curve recorded before. A run started from trained weights
(``train --init-from``) counts the patches those had seen; its wall time is its own.

Writes ``learning-curves.{json,md,png}``; the figure and tables are rewritten only when a
curve changed (a figure whose content did not change is never re-committed). Wall time is the
trainer's own clock (``elapsed_s``), so it includes whatever else the machine was doing: the
table states each run's device, threads are not recorded by the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from lipden.models.checkpoint import load_tensors
from lipden.models.denoiser import is_spline
from lipden.train.config import spline_start
from lipden.train.state import patches_at, read_log

from .common import compact, save_figure, table_cell, write_results


def read_run(folder: Path) -> dict | None:
    """One run's curve and settings, or None if it has no log and state yet."""
    log, state = folder / "log.csv", folder / "train_state.safetensors"
    if not (log.is_file() and state.is_file()):
        return None
    _, metadata = load_tensors(state)
    config = metadata.get("train_config", {})
    batch = int(config.get("batch_size") or 0)
    rows = [r for r in read_log(folder) if "val_psnr" in r]  # a row a live trainer is still writing is left out
    if not rows:
        return None
    record = {
        "run": folder.name,
        "activation": config.get("activation"),
        "spline_init": spline_start(str(config.get("activation", "")), False, config.get("spline_init")),
        "sigma": config.get("sigma"),
        "channels": metadata.get("config", {}).get("channels"),
        "batch_size": batch,
        "lr_conv": config.get("lr_conv"),
        "steps_planned": config.get("steps"),
        "precision": metadata.get("precision") or ("bf16" if config.get("mixed_precision") else "float32"),
        "device": config.get("device"),
        "step": [int(r["step"]) for r in rows],
        "patches": [patches_at(metadata, int(r["step"])) for r in rows],
        "hours": [round(r["elapsed_s"] / 3600, 4) for r in rows],
        "val_psnr": [r["val_psnr"] for r in rows],
        "lr_factor": [r.get("lr_factor") for r in rows],
    }
    if metadata.get("warm_start"):
        record["warm_start_patches"] = patches_at(metadata, 0)
    return record


def _figure(path: Path, runs: list[dict]) -> None:
    """One row per noise level: PSNR against patches seen (left) and wall time (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({run["sigma"] for run in runs})
    fig, axes = plt.subplots(len(sigmas), 2, figsize=(10, 3.2 * len(sigmas)), squeeze=False)
    for row, sigma in zip(axes, sigmas, strict=True):
        chosen = [run for run in runs if run["sigma"] == sigma]
        top = max(max(run["val_psnr"]) for run in chosen)
        for run in chosen:
            label = f"{run['run']} ({run['channels']} ch, batch {run['batch_size']})"
            row[0].plot([p / 1e6 for p in run["patches"]], run["val_psnr"], label=label, lw=1.2)
            row[1].plot(run["hours"], run["val_psnr"], label=label, lw=1.2)
        for ax in row:
            ax.set_ylim(top - 2.5, top + 0.3)  # a diverging run's dips leave the frame
            ax.grid(alpha=0.3)
        row[0].set_xlabel("patches seen (millions)")
        row[1].set_xlabel("training wall time (hours)")
        row[0].set_ylabel(f"set12 PSNR at sigma {sigma:g} (dB)")
        row[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plotted = [{k: run[k] for k in ("run", "channels", "batch_size", "sigma", "patches", "hours", "val_psnr")}
               for run in runs]
    save_figure(fig, path, {"figure": "learning curves", "runs": plotted}, dpi=72)


def _markdown(runs: list[dict]) -> str:
    if not runs:
        return "# Learning curves\n\nNo training run with a log and a state in the runs folder.\n"
    lines = ["# Learning curves", "",
             "Set12 validation PSNR (sigma of the run, the standard protocol) of each training run in "
             "`checkpoints/` and of earlier runs whose folder was removed (shipped or abandoned; their curve "
             "is kept), against patches seen and the trainer's wall clock. Figure: "
             "`learning-curves.png`.", "",
             "| run | activation | sigma | channels | batch | conv lr | precision | steps | patches (M) | hours | "
             "last val PSNR | best val PSNR | gain over the last hour (dB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        hours, psnr = run["hours"], run["val_psnr"]
        recent = [p for h, p in zip(hours, psnr, strict=True) if h >= hours[-1] - 1]
        earlier = [p for h, p in zip(hours, psnr, strict=True) if h < hours[-1] - 1]
        gain = f"{max(psnr) - max(earlier):+.3f}" if earlier and recent else "-"
        precision = "bf16 convs" if run["precision"].startswith("bf16") else "fp32"
        name = run["run"] + (f" (started from weights that had seen {run['warm_start_patches'] / 1e6:.2f}M patches)"
                             if "warm_start_patches" in run else "")
        lines.append(
            f"| {table_cell(name)} | {table_cell(_activation(run))} | {run['sigma']:g} | {run['channels']} | "
            f"{run['batch_size']} | {run['lr_conv']:g} | {precision} | {run['step'][-1]} / {run['steps_planned']} | "
            f"{run['patches'][-1] / 1e6:.2f} | {hours[-1]:.2f} | {psnr[-1]:.3f} | {max(psnr):.3f} | {gain} |")
    return "\n".join(lines) + "\n"


def _activation(run: dict) -> str:
    """The activation, for a spline with the function its splines started as: the run's recorded
    start (a run recorded before the start was: the |x| every spline run started from then), or
    "from weights" for a run started from trained weights."""
    activation = str(run.get("activation"))
    start = spline_start(activation, "warm_start_patches" in run, run.get("spline_init"))
    if start is None:
        return "spline (from weights)" if is_spline(activation) else activation
    return f"spline ({'|x|' if start == 'absolute_value' else start} start)"


def run(quick: bool = False, output: str = "results", runs: str = "checkpoints") -> dict:
    """Collect every run's curve; rewrite results only if a curve changed. A run recorded
    before whose folder is gone (shipped or abandoned, its state removed) keeps its curve."""
    found = [r for r in (read_run(f) for f in sorted(Path(runs).glob("*")) if f.is_dir()) if r]
    target = Path(output) / "learning-curves.json"
    previous = json.loads(target.read_text()) if target.is_file() else {"runs": []}
    current = {run["run"] for run in found}
    kept = [run for run in previous.get("runs", [])
            if run["run"] not in current and not (Path(runs) / run["run"]).is_dir()]
    results = compact({"runs": sorted(found + kept, key=lambda run: run["run"])})
    if previous == results:
        print(f"{target}: unchanged")
        return results
    write_results(output, "learning-curves", results, _markdown(results["runs"]))
    if results["runs"]:
        _figure(Path(output) / "learning-curves.png", results["runs"])
    return results
