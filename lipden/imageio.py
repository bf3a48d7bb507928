"""Reading and writing images for the CLI: float tensors (C, H, W) in [0, 1], atomic writes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

READABLE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")


class ImageError(ValueError):
    """An input that is not a usable image."""


@dataclass
class ImageInfo:
    bits: int  # 8 or 16 for integer images, 32 for float data (NPY / float TIFF)
    channels: int


def read_image(path: str | Path) -> tuple[Tensor, ImageInfo]:
    """Read PNG/JPEG/TIFF/BMP/NPY as a float32 (C, H, W) tensor in [0, 1].

    8- and 16-bit integers are divided by 255 / 65535; float data must already be in
    [0, 1] up to noise and finite. Alpha channels are dropped, palettes expanded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix.lower() not in READABLE:
        raise ImageError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(READABLE)})")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode == "P":
                    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ImageError(f"{path}: expected a grayscale (H, W) or colour (H, W, 3) image, got shape {array.shape}")
    if array.dtype == np.uint8:
        bits, data = 8, array.astype(np.float32) / 255
    elif array.dtype in (np.uint16, np.int32) and array.max(initial=0) <= 65535 and array.min(initial=0) >= 0:
        bits, data = 16, array.astype(np.float32) / 65535
    elif np.issubdtype(array.dtype, np.floating):
        bits, data = 32, array.astype(np.float32)
        if not np.isfinite(data).all():
            raise ImageError(f"{path}: contains NaN or infinite values")
    elif array.dtype == bool:
        bits, data = 8, array.astype(np.float32)
    else:
        raise ImageError(f"{path}: unsupported pixel type {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()
    return tensor, ImageInfo(bits=bits, channels=tensor.shape[0])


def write_image(path: str | Path, image: Tensor, bits: int = 8, force: bool = False) -> None:
    """Write a (C, H, W) tensor in [0, 1] (clipped) atomically; refuse to overwrite without force.

    PNG/TIFF keep 8 or 16 bits; JPEG is 8-bit; NPY stores float32 values unclipped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise ImageError(f"{path}: unsupported output type {suffix!r} (use {', '.join(READABLE)})")
    if path.exists() and not force:
        raise FileExistsError(f"output exists: {path} (use --force to overwrite)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    array = image.detach().cpu().float().permute(1, 2, 0).numpy()
    if array.shape[-1] == 1:
        array = array[..., 0]
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, array.astype(np.float32))
        else:
            from PIL import Image

            clipped = np.clip(array, 0, 1)
            if bits == 16 and suffix in (".png", ".tif", ".tiff") and clipped.ndim == 2:
                Image.fromarray(np.round(clipped * 65535).astype(np.uint16)).save(tmp, format=_format(suffix))
            else:
                Image.fromarray(np.round(clipped * 255).astype(np.uint8)).save(tmp, format=_format(suffix))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _format(suffix: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}[suffix]
