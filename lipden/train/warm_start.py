"""Start a training run from trained weights (fine-tuning, a warm start at another noise level, a
lower learning rate from a run's best) instead of a random initialisation.

The weights come from a shipped model (by name, checked against its card's sha256) or a denoiser
file (a run's ``best.safetensors``, a published file); the network must be the run's (width,
depth, activation and its knots, convolution type, padding); only the noise level it was trained
for may differ. The run records where its start came from (:func:`warm_start_record`), so its
model card can state how many patches its weights have seen in all.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import Tensor

from lipden.models.checkpoint import load_tensors, sha256_of
from lipden.models.denoiser import DenoiserConfig
from lipden.models.pretrained import denoiser_card, list_denoisers, load_denoiser, weights_dir


def _source_path(source: str) -> tuple[Path, dict | None]:
    """The weights file of ``source`` (a shipped name or a path) and its card, if it has one."""
    if source in list_denoisers():
        return weights_dir() / f"{source}.safetensors", denoiser_card(source)
    path = Path(source)
    card_path = path.with_suffix(".json")
    return path, (json.loads(card_path.read_text()) if card_path.is_file() else None)


def _patches_seen(path: Path, card: dict | None, metadata: dict) -> int | None:
    """Patches the weights were trained on: from their card, their own record, or the state of the
    run folder they sit in (a run's best: its step times the run's patches per step); else None."""
    if card is not None:
        return card.get("training", {}).get("patches_seen")
    if "patches_seen" in metadata:
        return int(metadata["patches_seen"])
    state = path.parent / "train_state.safetensors"
    if "step" in metadata and state.is_file():
        recorded = load_tensors(state)[1]
        batch = recorded.get("train_config", {}).get("batch_size")
        initial = (recorded.get("warm_start") or {}).get("patches_seen") or 0
        if batch:
            return initial + int(metadata["step"]) * int(batch) * int(recorded.get("world_size", 1))
    return None


def _origin(path: Path, card: dict | None, metadata: dict) -> dict:
    """The run and step the weights come from, where recorded: a training state names its run and
    wall time, a run's best its step (and its folder's run), a shipped card its best step."""
    if card is not None:
        return {"run": None, "step": card.get("training", {}).get("best_step")}
    if "train_config" in metadata:  # a training state
        return {"run": metadata["train_config"].get("output"), "step": metadata.get("step"),
                "hours": round(metadata.get("elapsed_s", 0.0) / 3600, 3)}
    state = path.parent / "train_state.safetensors"
    run = load_tensors(state)[1].get("train_config", {}).get("output") if state.is_file() else None
    return {"run": run, "step": metadata.get("step")}


def warm_start_record(source: str) -> dict:
    """What a run started from: ``source`` as given, the file's sha256, the noise level it was
    trained for (0-255 scale), the patches it had seen (None where nothing records them) and the
    run and step it comes from (with the wall time, for a training state)."""
    path, card = _source_path(source)
    _, metadata = load_tensors(path)
    sigma = metadata.get("config", {}).get("sigma")
    return {"source": source, "sha256": sha256_of(path), "patches_seen": _patches_seen(path, card, metadata),
            "sigma_255": None if sigma is None else round(sigma * 255, 6), **_origin(path, card, metadata)}


def warm_start_weights(source: str, config: DenoiserConfig) -> dict[str, Tensor]:
    """The state dict of ``source`` for a network of ``config`` (ValueError for another network).

    A shipped model, or a file with a sibling card, is checked against the card's sha256."""
    model = load_denoiser(source)
    found = dataclasses.replace(model.config, sigma=None)
    if found != dataclasses.replace(config, sigma=None):
        given = {k: v for k, v in found.to_dict().items() if k != "sigma"}
        wanted = {k: v for k, v in config.to_dict().items() if k != "sigma"}
        raise ValueError(f"--init-from {source}: its network {given} is not the run's {wanted}")
    return model.state_dict()


__all__ = ["warm_start_record", "warm_start_weights"]
