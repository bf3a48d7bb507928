"""Shipped pretrained denoisers: ``weights/<activation>-sigma<N>.safetensors`` + a JSON model card.

Every file is checked against the sha256 recorded in its card before it is read, loaded
without pickle (safetensors), and certified on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lipden.models.checkpoint import WeightsError, load_denoiser_file, sha256_of
from lipden.models.denoiser import LipschitzDenoiser

CERTIFY_SHAPE = (1, 1, 40, 40)


def weights_dir() -> Path:
    """The folder of shipped weights: ``weights/`` of the source tree or the installed package."""
    source = Path(__file__).resolve().parents[2] / "weights"
    if source.is_dir():
        return source
    try:
        import weights as installed  # the data package installed beside lipden

        return Path(installed.__file__).resolve().parent
    except ImportError:
        return source


def list_denoisers() -> list[str]:
    """Names of the shipped denoisers, e.g. ``['spline-sigma15', ...]``."""
    folder = weights_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.with_suffix(".safetensors").exists())


def denoiser_card(name: str) -> dict:
    """The JSON model card of a shipped denoiser."""
    path = weights_dir() / f"{name}.json"
    if name not in list_denoisers():
        raise ValueError(f"unknown denoiser {name!r}; shipped: {', '.join(list_denoisers()) or 'none'}")
    return json.loads(path.read_text())


def card_patches_seen(card: dict) -> int | None:
    """Patches a model card's weights were trained on: its count, else (cards that predate it) its
    best step times its batch; None where the card records neither."""
    training = card.get("training", {})
    if training.get("patches_seen") is not None:
        return int(training["patches_seen"])
    if training.get("best_step") is not None and training.get("batch_size") is not None:
        return int(training["best_step"]) * int(training["batch_size"])
    return None


def _verify(path: Path, card: dict) -> None:
    expected = card.get("sha256")
    if not expected:
        raise WeightsError(f"the card of {path.name} records no sha256")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"{path} does not match the sha256 in its card (modified or corrupt)")


def load_denoiser(name_or_path: str | Path, device: str | torch.device = "cpu") -> LipschitzDenoiser:
    """Load a shipped denoiser by name (``spline-sigma15``) or a denoiser file by path.

    Returns an eval-mode model whose parameters do not require grad. A shipped file must
    match its card's sha256; a path with a sibling ``.json`` card is checked the same way.
    The model states its certified Lipschitz bound through ``lipschitz_certificate(input_shape)``
    (``lipden.models.protocol.LipschitzCertified``; ``CERTIFY_SHAPE`` is the size the cards quote).
    """
    name = str(name_or_path)
    if name in list_denoisers():
        path = weights_dir() / f"{name}.safetensors"
        card: dict | None = denoiser_card(name)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise ValueError(
                f"unknown denoiser {name!r}: not a shipped name ({', '.join(list_denoisers()) or 'none'}) "
                "nor an existing file"
            )
        sibling = path.with_suffix(".json")
        card = json.loads(sibling.read_text()) if sibling.is_file() else None
    if card is not None:
        _verify(path, card)
    model, _ = load_denoiser_file(path, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
