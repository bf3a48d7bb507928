"""Ground-truth images: a folder, the dev sets in ../shared/data, or embedded defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage import data as skdata
from skimage.transform import resize
from torch import Tensor

from lipden.io import default_data_root, list_images, load_grayscale

SHARED_DATA = default_data_root()


def default_image(kind: str = "natural", size: int = 256, color: bool = False) -> Tensor:
    """An embedded (1, C, size, size) ground truth in [0, 1], no download.

    ``natural``: scikit-image's ``camera`` (``astronaut`` if colour); ``mri``: the
    Shepp-Logan phantom, a standard MRI test object.
    """
    if kind == "mri":
        image = skdata.shepp_logan_phantom()
    elif kind == "natural":
        image = skdata.astronaut() if color else skdata.camera()
        image = image.astype(np.float64) / 255.0
    else:
        raise ValueError(f"unknown image kind {kind!r}; choose 'natural' or 'mri'")
    image = resize(image, (size, size), anti_aliasing=True, order=3).clip(0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).float()
    return tensor.permute(2, 0, 1)[None] if tensor.dim() == 3 else tensor[None, None]


def load_ground_truths(folder: str | Path, indices: slice | list[int] | None = None) -> list[Tensor]:
    """Grayscale images of a folder (sorted) as (1, 1, H, W) tensors in [0, 1]."""
    paths = list_images(folder)
    if isinstance(indices, list) and (missing := [i for i in indices if not 0 <= i < len(paths)]):
        raise ValueError(f"{folder} has {len(paths)} images: no image at position {missing[0]}")
    if indices is not None:
        paths = paths[indices] if isinstance(indices, slice) else [paths[i] for i in indices]
    return [load_grayscale(p)[None, None] for p in paths]


def dev_set(name: str, indices: slice | list[int] | None = None) -> list[Tensor]:
    """A set of ../shared/data (``set12``, ``bsd68``, ``mri_colin27``); ValueError if absent."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        raise ValueError(f"data set {name!r} not found at {folder}")
    return load_ground_truths(folder, indices)
