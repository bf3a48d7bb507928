"""Turn a training run into a shipped model: weights file + JSON model card, measured and certified."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from lipden.io import atomic_write, atomic_write_text, list_images, load_grayscale
from lipden.models.checkpoint import load_denoiser_file, load_tensors, save_denoiser, sha256_of
from lipden.models.pretrained import CERTIFY_SHAPE, weights_dir
from lipden.train.config import DEFAULT_DATA, spline_start
from lipden.train.data import noisy_versions
from lipden.train.loop import evaluate
from lipden.train.state import patches_at, read_log


def evaluate_folder(model: torch.nn.Module, folder: str | Path, sigma: float, limit: int | None = None) -> float:
    """Mean PSNR with the standard protocol (seed 0 per image, sorted order, clipped output)."""
    files = list_images(folder)[:limit]
    clean = [load_grayscale(p) for p in files]
    return evaluate(model, clean, noisy_versions(clean, sigma), torch.device("cpu"))


def publish(run_dir: str | Path, name: str, test_dir: str | Path = DEFAULT_DATA / "bsd68", force: bool = False) -> dict:
    """Write ``weights/<name>.safetensors`` and its card from ``run_dir/best.safetensors``."""
    run_dir = Path(run_dir)
    model, metadata = load_denoiser_file(run_dir / "best.safetensors")
    _, state = load_tensors(run_dir / "train_state.safetensors")
    target = weights_dir() / f"{name}.safetensors"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists (use --force to replace it)")
    sigma = model.config.sigma
    if sigma is None:
        raise ValueError(f"{run_dir / 'best.safetensors'}: the model config has no sigma; cannot publish")
    train_config = state["train_config"]
    # measure everything first; the shipped pair is replaced only at the end (weights, then card)
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / target.name
        card = _card(model, name, metadata, state, train_config, sigma, test_dir, staged, run_dir)
        atomic_write(target, lambda tmp: shutil.copyfile(staged, tmp))
    atomic_write_text(target.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return card


def _earlier_precision(train_config: dict) -> str:
    """The precision of a run whose state predates the record: its flag, else the default then
    (bf16 convolutions on a GPU, float32 elsewhere)."""
    flag = train_config.get("mixed_precision")
    amp = flag if flag is not None else str(train_config.get("device", "cpu")).startswith("cuda")
    return "bf16 convolutions (autocast), float32 weights" if amp else "float32"


def _log_row(run_dir: Path, step: int | None) -> dict:
    """The last ``log.csv`` row of ``step`` ({} when the run has no such row)."""
    rows = [row for row in read_log(run_dir) if step is not None and row["step"] == step]
    return {key: value for key, value in rows[-1].items() if key != "step"} if rows else {}


def _schedule(train_config: dict, world_size: int) -> dict:
    """The learning-rate schedule the run was sized to: its planned steps and its step decay."""
    return {"planned_steps": train_config["steps"],
            "planned_patches": train_config["steps"] * train_config["batch_size"] * world_size,
            "decay_at_fraction": train_config.get("lr_decay_at"),
            "decay_factor": train_config.get("lr_decay_factor")}


def _card(model, name: str, metadata: dict, state: dict, train_config: dict, sigma: float,
          test_dir: str | Path, staged: Path, run_dir: Path) -> dict:
    """The model card. The shipped weights are the run's best on set12: their patch count and wall
    time are those of the best step (the wall time from ``log.csv``, None without its row; a run
    started from trained weights adds the patches those had seen, and ``warm_start`` names them);
    ``steps_total`` is how far the run had gone when published."""
    save_denoiser(model, staged, {"name": name})
    best_step = metadata.get("step")
    best_row = _log_row(run_dir, best_step)
    if best_step is not None:
        patches = patches_at(state, best_step)
    else:
        patches = metadata.get("patches_seen", state.get("patches_seen", patches_at(state, state["step"])))
    return {
        "name": name,
        "config": model.config.to_dict(),
        "sigma_255": round(sigma * 255, 6),
        "activation": model.config.activation,
        "training": {
            "preset": train_config["preset"],
            "data": "BSD400 (train400), 40x40 patches at scales 1/0.9/0.8/0.7, flips and rotations",
            "batch_size": train_config["batch_size"],
            "learning_rates": {k: train_config[k] for k in ("lr_conv", "lr_spline", "lr_scaling")},
            "tv2_weight": train_config["tv2_weight"],
            "schedule": _schedule(train_config, state.get("world_size", 1)),
            "steps_total": state["step"],
            "patches_seen": patches,
            "warm_start": state.get("warm_start"),
            "spline_init": spline_start(model.config.activation, bool(state.get("warm_start")),
                                        train_config.get("spline_init")),
            "precision": state.get("precision") or _earlier_precision(train_config),
            "best_step": best_step,
            "wall_time_minutes": round(best_row["elapsed_s"] / 60, 1) if "elapsed_s" in best_row else None,
            "device": f"{train_config['device']} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "set12_val_psnr": metadata.get("val_psnr"),
            "lr_factor_at_best_step": best_row.get("lr_factor"),
        },
        "bsd68_psnr": round(evaluate_folder(model, test_dir, sigma), 4),
        "bsd68_protocol": "sigma/255 AWGN, torch.manual_seed(0) per image in sorted order, PSNR of the clipped output, 68 images",
        "certified_lipschitz_40x40": model.lipschitz_certificate(CERTIFY_SHAPE),
        "sha256": sha256_of(staged),
        "size_bytes": staged.stat().st_size,
    }


__all__ = ["evaluate_folder", "publish"]
