"""Safe (pickle-free) model files: safetensors tensors + JSON metadata, written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from lipden.io import atomic_write
from lipden.models.denoiser import DenoiserConfig, LipschitzDenoiser

METADATA_KEY = "lipden"


class WeightsError(ValueError):
    """A weights file is missing, corrupt, tampered with or not a lipden model."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors_atomic(tensors: dict[str, Tensor], path: str | Path, metadata: dict) -> None:
    """Write a safetensors file via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(metadata)}))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read tensors and lipden metadata from a safetensors file (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a valid safetensors file ({error})") from error
    if raw is None:
        raise WeightsError(f"{path} has no lipden metadata")
    return tensors, json.loads(raw)


def save_denoiser(model: LipschitzDenoiser, path: str | Path, info: dict | None = None) -> None:
    """Save a denoiser's weights and config (plus free-form ``info``) to a safetensors file."""
    metadata = {"config": model.config.to_dict(), **(info or {})}
    save_tensors_atomic(dict(model.state_dict()), path, metadata)


def load_denoiser_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[LipschitzDenoiser, dict]:
    """Rebuild a denoiser from its file; returns (eval-mode model, metadata)."""
    tensors, metadata = load_tensors(path)
    try:
        config = DenoiserConfig.from_dict(metadata["config"])
        model = LipschitzDenoiser(config)
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
    except (KeyError, TypeError, RuntimeError) as error:
        raise WeightsError(f"{path} does not hold a lipden denoiser ({error})") from error
    return model.to(device).eval(), metadata
