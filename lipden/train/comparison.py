"""Entries of an equal-budget comparison: a run's best weights within a step budget, kept with
the run's recipe so that the comparison can be checked after the run went on or was removed.

An entry is a pair ``NAME.safetensors`` (the run's ``best.safetensors``: its best set12 validation
up to the budget) and ``NAME.json`` (the run, the budget in steps and patches, the recipe and
network it was trained with, the best's step and validation PSNR). It is taken when the run's
state stands exactly at the budget, so that no later step can have chosen its best.

    python -m lipden.train.comparison checkpoints/relu64-sigma15 checkpoints/claim-sigma15/relu-2M.safetensors 31250
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lipden.io import atomic_write, atomic_write_text
from lipden.models.checkpoint import load_tensors, sha256_of
from lipden.models.denoiser import is_spline
from lipden.train.config import RECIPE_FIELDS

#: recipe settings that may differ between the entries of one comparison: what is compared, the
#: activation with the start of its splines (every entry starts from a random init: ``init_from``
#: must agree)
VARYING = ("activation", "spline_init")
#: recipe settings that act only on learned splines: compared only between entries that have them
SPLINE_ONLY = ("lr_spline", "lr_scaling", "tv2_weight")


def keep_entry(run: str | Path, entry: str | Path, budget_steps: int) -> dict:
    """Copy ``run/best.safetensors`` to ``entry`` and write its record ``entry.json``; returns the record.

    Refuses a run whose state is not at ``budget_steps`` (its best may come from past the budget)
    and an existing entry that is not the run's best (another run's, or an earlier best's).
    """
    run, entry = Path(run), Path(entry)
    _, state = load_tensors(run / "train_state.safetensors")
    if state.get("step") != budget_steps:
        raise ValueError(f"{run} is at step {state.get('step')}, not {budget_steps}: its best is not the entry")
    best = run / "best.safetensors"
    _, best_metadata = load_tensors(best)
    best_sha256 = sha256_of(best)
    if entry.exists() and sha256_of(entry) != best_sha256:
        raise ValueError(f"{entry} exists and is not the best of {run}")
    train_config = state["train_config"]
    world = int(state.get("world_size") or 1)
    record = {
        "run": run.name,
        "budget_steps": budget_steps,
        "budget_patches": budget_steps * int(train_config["batch_size"]) * world,
        "recipe": {name: train_config.get(name) for name in RECIPE_FIELDS},
        "network": state["config"],
        "best_step": best_metadata.get("step"),
        "val_psnr": best_metadata.get("val_psnr"),
        "elapsed_s": state.get("elapsed_s"),
        "precision": state.get("precision"),
        "device": train_config.get("device"),
        "sha256": best_sha256,
    }
    if not entry.exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, lambda tmp: shutil.copyfile(best, tmp))
    atomic_write_text(entry.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return record


def read_entries(folder: str | Path) -> dict[str, dict]:
    """The entries of a comparison folder, by name: each record with its ``weights`` path. A
    weights file without its record (an entry being taken) is left out."""
    entries = {}
    for record_path in sorted(Path(folder).glob("*.json")):
        weights = record_path.with_suffix(".safetensors")
        if weights.is_file():
            entries[record_path.stem] = {**json.loads(record_path.read_text()), "weights": str(weights)}
    return entries


def unequal_settings(entries: dict[str, dict]) -> list[str]:
    """What differs between the entries apart from :data:`VARYING`: the budget, recipe settings
    (those of :data:`SPLINE_ONLY` between entries with learned splines only), the network's width,
    depth, convolution and padding; one line per setting."""
    def settings(record: dict) -> dict:
        network = {k: v for k, v in record["network"].items() if k not in ("activation", "activation_kwargs")}
        ignored = VARYING + (() if is_spline(str(record["recipe"].get("activation"))) else SPLINE_ONLY)
        recipe = {k: v for k, v in record["recipe"].items() if k not in ignored}
        return {"budget_patches": record["budget_patches"], **recipe, **network}

    values = {name: settings(record) for name, record in entries.items()}
    keys = sorted({k for v in values.values() for k in v})
    lines = []
    for key in keys:
        seen = {name: v.get(key) for name, v in values.items() if key not in SPLINE_ONLY or key in v}
        if len({json.dumps(v, sort_keys=True) for v in seen.values()}) > 1:
            lines.append(f"{key}: " + ", ".join(f"{name} {value!r}" for name, value in seen.items()))
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].isdigit():
        print("usage: python -m lipden.train.comparison RUN_FOLDER ENTRY.safetensors BUDGET_STEPS", file=sys.stderr)
        return 2
    try:
        record = keep_entry(argv[0], argv[1], int(argv[2]))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"kept the best of {argv[0]} (step {record['best_step']}, set12 {record['val_psnr']}) as {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
