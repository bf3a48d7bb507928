"""Start a training run from trained weights (fine-tuning, a warm start at another noise level, a
lower learning rate from a run's best) instead of a random initialisation.

The weights come from a shipped model (by name, checked against its card's sha256), a denoiser
file (a run's ``best.safetensors``, a published file) or a training state
(``train_state.safetensors``: its latest weights); the network must be the run's (width,
depth, activation and its knots, convolution type, padding); only the noise level it was trained
for may differ. The run records where its start came from (:func:`load_warm_start`), so its
model card can state how many patches its weights have seen in all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from torch import Tensor

from lipden.models.checkpoint import WeightsError, load_denoiser_file, load_tensors, sha256_of
from lipden.models.denoiser import DenoiserConfig
from lipden.models.pretrained import card_patches_seen, denoiser_card, list_denoisers, weights_dir
from lipden.train.state import patches_at


def _source_path(source: str) -> tuple[Path, dict | None]:
    """The weights file of ``source`` (a shipped name or a path) and its card, if it has one."""
    if source in list_denoisers():
        return weights_dir() / f"{source}.safetensors", denoiser_card(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--init-from {source}: not a shipped name ({', '.join(list_denoisers()) or 'none'}) "
                         "nor an existing file")
    card_path = path.with_suffix(".json")
    return path, (json.loads(card_path.read_text()) if card_path.is_file() else None)


def _patches_seen(path: Path, card: dict | None, metadata: dict) -> int | None:
    """Patches the weights were trained on: from their card (its count, else its best step times its
    batch), their own record, or the state of the run folder they sit in (a run's best: its step
    times the run's patches per step); else None."""
    if card is not None:
        return card_patches_seen(card)
    if "patches_seen" in metadata:
        return int(metadata["patches_seen"])
    state = path.parent / "train_state.safetensors"
    if "step" in metadata and state.is_file():
        recorded = load_tensors(state)[1]
        if recorded.get("train_config", {}).get("batch_size"):
            return patches_at(recorded, metadata["step"])
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


def _network(config: DenoiserConfig) -> DenoiserConfig:
    """What a warm start must share with the run: the network, without its noise level and without
    the spline init (the source's trained coefficients replace it)."""
    kwargs = {k: v for k, v in config.activation_kwargs.items() if k != "init"}
    return dataclasses.replace(config, sigma=None, activation_kwargs=kwargs)


def load_warm_start(source: str, config: DenoiserConfig) -> tuple[dict[str, Tensor], dict]:
    """The state dict of ``source`` for a network of ``config``, and the record of the start.

    The file is copied once and everything is read from the copy, so a source replaced meanwhile
    (a live run's best) cannot give weights and a record of two versions. A shipped model, or a
    file with a sibling card, must match the card's sha256. ValueError for another network.

    The record: ``source`` as given, the sha256, the noise level the weights were trained for
    (0-255 scale), the patches they had seen (None where nothing records them), and the run and
    step they come from (with the wall time, for a training state).
    """
    path, card = _source_path(source)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / path.name
        shutil.copyfile(path, copy)
        sha256 = sha256_of(copy)
        if card is not None and card.get("sha256") != sha256:
            raise WeightsError(f"--init-from {source}: {path} does not match the sha256 in its card")
        model, metadata = load_denoiser_file(copy)
    found = _network(model.config)
    if found != _network(config):
        given = {k: v for k, v in found.to_dict().items() if k != "sigma"}
        wanted = {k: v for k, v in config.to_dict().items() if k != "sigma"}
        raise ValueError(f"--init-from {source}: its network {given} is not the run's {wanted}")
    sigma = model.config.sigma
    record = {"source": source, "sha256": sha256, "patches_seen": _patches_seen(path, card, metadata),
              "sigma_255": None if sigma is None else round(sigma * 255, 6), **_origin(path, card, metadata)}
    return model.state_dict(), record


__all__ = ["load_warm_start"]
