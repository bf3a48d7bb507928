"""Training patches: clean (B, 1, P, P) patches in [0, 1] drawn from a folder of images."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lipden.io import list_images, load_grayscale


class PatchSampler:
    """Random training patches from a folder of images, seeded and reproducible.

    Every image is kept at the scales ``scales`` (bicubic, antialiased); a batch draws
    (image, scale, position) uniformly and one of the 8 flips/rotations per patch.
    Yields clean patches (B, 1, P, P) in [0, 1]; noise is added by the trainer.
    """

    def __init__(
        self,
        folder: str | Path,
        patch_size: int = 40,
        scales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7),
        seed: int = 0,
    ) -> None:
        self.patch_size = patch_size
        self.images: list[Tensor] = []
        for path in list_images(folder):
            image = load_grayscale(path)[None, None]
            for scale in scales:
                size = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
                if min(size) < patch_size:
                    continue
                scaled = image if scale == 1.0 else F.interpolate(
                    image, size=size, mode="bicubic", antialias=True, align_corners=False
                )
                self.images.append(scaled.clamp(0, 1)[0, 0])
        if not self.images:
            raise ValueError(f"no image in {folder} is at least {patch_size} pixels wide")
        self._image_sizes = torch.tensor([image.shape for image in self.images])
        self.generator = torch.Generator().manual_seed(seed)

    def state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def sample(self, batch_size: int) -> Tensor:
        """(batch_size, 1, P, P) patches; all random draws of a batch in three calls."""
        p = self.patch_size
        g = self.generator
        picks = torch.randint(len(self.images), (batch_size,), generator=g)
        positions = self._image_sizes[picks] - p + 1  # (B, 2): valid top-left corners per axis
        corners = (torch.rand(batch_size, 2, generator=g, dtype=torch.float64) * positions).long()
        corners = torch.minimum(corners, positions - 1)
        tops, lefts = corners[:, 0].tolist(), corners[:, 1].tolist()
        patches = torch.stack([
            self.images[i][top : top + p, left : left + p]
            for i, top, left in zip(picks.tolist(), tops, lefts, strict=True)
        ])
        transforms = torch.randint(8, (batch_size,), generator=g)
        for transform in range(1, 8):  # the 8 symmetries of the square, one batched op each
            chosen = (transforms == transform).nonzero().flatten()
            if chosen.numel():
                moved = torch.rot90(patches[chosen], transform % 4, dims=(-2, -1))
                patches[chosen] = moved.flip(-1) if transform >= 4 else moved
        return patches[:, None].contiguous()


def noisy_versions(images: list[Tensor], sigma: float) -> list[Tensor]:
    """The evaluation protocol: noise from ``torch.manual_seed(0)`` per image, in order."""
    out = []
    for image in images:
        generator = torch.Generator().manual_seed(0)
        out.append(image + sigma * torch.randn(image.shape, generator=generator))
    return out
