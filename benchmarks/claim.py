"""The paper's central claim at an equal budget: at sigma 15, the learned 1-Lipschitz spline
against ReLU, |x|, GroupSort and HouseHolder, each trained with the same 1-Lipschitz network,
recipe and patch budget, each taken at its best set12 validation within that budget (the entries
of ``checkpoints/claim-sigma15``, kept by :mod:`lipden.train.comparison`).

Measured on BSD68 with the denoise benchmark's standard protocol (noise sigma/255 drawn with seed 0
per image in sorted order, metrics of the output clipped to [0, 1]): PSNR and SSIM, the certified
Lipschitz bound at the BSD68 image size, and the spline's margin over each other activation. The
claim (the spline at least :data:`MARGIN` dB above every other activation) is judged only when all
five entries are there and their budgets, recipes and networks agree; an entry whose weights did
not change keeps its last measurement.

Quick mode: the first 4 BSD68 images (``claim-quick.{json,md}``).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch

from lipden.certify.bounds import CertificationError, lipschitz_upper_bound
from lipden.io import list_images, load_grayscale
from lipden.models.pretrained import load_denoiser
from lipden.train.comparison import read_entries, unequal_settings
from lipden.train.config import DEFAULT_DATA
from lipden.train.data import noisy_versions

from .common import compact, machine, table_cell, write_results
from .denoise import PROTOCOL, score_denoiser

ACTIVATIONS = ("spline", "relu", "absolute_value", "groupsort", "householder")
LABELS = {"spline": "learned spline", "relu": "ReLU", "absolute_value": "|x|", "groupsort": "GroupSort",
          "householder": "HouseHolder"}
MARGIN = 0.3  # dB: the spline's required lead over every other activation
QUICK_IMAGES = 4


def _measure(record: dict, clean: list, sigma: float) -> dict:
    """BSD68 PSNR / SSIM and the certified bound of one entry (its weights checked against the sha256
    of its record, the ``.json`` beside them, as ``load_denoiser`` checks a file's card)."""
    started = time.perf_counter()
    model: torch.nn.Module = load_denoiser(record["weights"])
    scores = score_denoiser(partial(model, sigma=sigma / 255), clean, noisy_versions(clean, sigma / 255))
    try:
        bound = lipschitz_upper_bound(model, (1, 1, *clean[0].shape))
    except CertificationError:
        bound = None
    return {"psnr": scores["psnr"], "ssim": scores["ssim"], "per_image_psnr": scores["per_image_psnr"],
            "lipschitz_bound": bound, "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - started}


def _verdict(rows: list[dict], unequal: list[str]) -> dict:
    present = {row["activation"] for row in rows}
    missing = [a for a in ACTIVATIONS if a not in present]
    spline = next((row for row in rows if row["activation"] == "spline"), None)
    others = [row for row in rows if row["activation"] != "spline"]
    best_other = max(others, key=lambda row: row["psnr"]) if others else None
    margin = spline["psnr"] - best_other["psnr"] if spline and best_other else None
    if unequal:
        status = "not judged: the entries differ in " + "; ".join(unequal)
    elif missing:
        status = "pending: no entry yet for " + ", ".join(LABELS.get(a, a) for a in missing)
    else:
        assert margin is not None
        status = "holds" if margin >= MARGIN else "does not hold"
    return {"missing": missing, "best_other": best_other["activation"] if best_other else None,
            "margin_db": margin, "required_margin_db": MARGIN, "status": status}


def _markdown(results: dict) -> str:
    rows, verdict = results["rows"], results["verdict"]
    lines = ["# The claim at an equal budget (sigma 15)", "",
             f"{results['images']} BSD68 images; {PROTOCOL}. Each entry: the run's best set12 validation "
             f"within its budget (`{results['entries']}`, kept by `lipden.train.comparison`); certified "
             "bound: `lipschitz_upper_bound` at the BSD68 image size.", "",
             "| activation | run | budget (patches) | best step | set12 val PSNR | BSD68 PSNR (dB) | SSIM | "
             "certified Lip. bound | parameters | spline lead (dB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    spline = next((row for row in rows if row["activation"] == "spline"), None)
    for row in rows:
        lead = "-" if spline is None or row is spline else f"{spline['psnr'] - row['psnr']:+.2f}"
        bound = "-" if row["lipschitz_bound"] is None else f"{row['lipschitz_bound']:.6f}"
        lines.append(f"| {table_cell(LABELS.get(row['activation'], row['activation']))} | {row['run']} | "
                     f"{row['budget_patches'] / 1e6:.2f}M | {row['best_step']} | {row['val_psnr']:.3f} | "
                     f"{row['psnr']:.2f} | {row['ssim']:.4f} | {bound} | {row['parameters']} | {lead} |")
    if not rows:
        lines.append("| (no entry yet) | | | | | | | | | |")
    margin = verdict["margin_db"]
    lines += ["", f"Claim (the spline at least {MARGIN:.1f} dB above every other 1-Lipschitz activation): "
              f"**{verdict['status']}**" + (f"; lead over the best other ({LABELS[verdict['best_other']]}): "
                                            f"{margin:+.2f} dB." if margin is not None else "."),
              "", f"Wall time: {results['wall_seconds']:.0f} s (the entries' measurements).", ""]
    return "\n".join(lines)


def run(quick: bool = False, output: str = "results", entries: str = "checkpoints/claim-sigma15",
        test_dir: str | Path | None = None) -> dict:
    """Measure every entry of ``entries`` on BSD68 (the first 4 images when ``quick``), reusing the
    last measurement of an entry whose weights did not change; write ``claim[-quick].{json,md}``."""
    folder = Path(test_dir) if test_dir is not None else DEFAULT_DATA / "bsd68"
    if not folder.is_dir():
        raise ValueError(f"the claim benchmark needs the BSD68 images of ../shared/data; {folder} not found")
    files = list_images(folder)[:QUICK_IMAGES if quick else None]
    clean = [load_grayscale(p) for p in files]
    name = "claim-quick" if quick else "claim"
    target = Path(output) / f"{name}.json"
    previous = {(row["sha256"], row["images"]): row
                for row in (json.loads(target.read_text())["rows"] if target.is_file() else [])}
    found = read_entries(entries)
    order = {a: i for i, a in enumerate(ACTIVATIONS)}
    rows = []
    for entry_name, record in sorted(found.items(), key=lambda item: order.get(item[1]["recipe"]["activation"], 99)):
        key = (record["sha256"], len(clean))
        measured = previous.get(key)
        if measured is None:
            print(f"  {entry_name}: BSD68 at sigma {record['recipe']['sigma']:g}", flush=True)
            measured = _measure(record, clean, record["recipe"]["sigma"])
        rows.append({
            "entry": entry_name, "activation": record["recipe"]["activation"], "run": record["run"],
            "budget_patches": record["budget_patches"], "budget_steps": record["budget_steps"],
            "best_step": record["best_step"], "val_psnr": record["val_psnr"], "sha256": record["sha256"],
            "images": len(clean), **{k: measured[k] for k in ("psnr", "ssim", "per_image_psnr", "lipschitz_bound",
                                                              "parameters", "seconds")},
        })
    unequal = unequal_settings(found)
    results = compact({"machine": machine(), "entries": str(entries), "images": len(clean), "rows": rows,
                       "unequal_settings": unequal, "verdict": _verdict(rows, unequal),
                       # the time of its measurements (an unchanged entry keeps its own): the file changes
                       # only when an entry does
                       "wall_seconds": sum(row["seconds"] for row in rows)})
    Path(output).mkdir(parents=True, exist_ok=True)
    write_results(output, name, results, _markdown(results))
    return results
