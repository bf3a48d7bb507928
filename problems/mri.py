"""Single-coil Cartesian MRI of real images: ``y = M F x + n`` (deepinv ``MRI``), complex noise."""

from __future__ import annotations

import torch
from deepinv.physics import MRI, LinearPhysics
from deepinv.physics.generator import (
    EquispacedMaskGenerator,
    GaussianMaskGenerator,
    RandomMaskGenerator,
)
from torch import Tensor

from .base import InverseProblem, per_image

MASKS = {
    "random": RandomMaskGenerator,
    "gaussian": GaussianMaskGenerator,
    "equispaced": EquispacedMaskGenerator,
}
DEFAULT_CENTER_FRACTION = {4: 0.08, 8: 0.04}


def _mirror_index(n: int) -> Tensor:
    """Index of frequency -f for each index of a centred (fftshift-ed) axis of length n."""
    index = torch.arange(n)
    return (2 * (n // 2) - index) % n


class RealMRI(LinearPhysics):
    """deepinv ``MRI`` restricted to real images: A x = M F (x + 0i), A^T y = Re(F^H M y).

    Input (B, 1, H, W) real; measurements (B, 2, H, W) (real and imaginary k-space, deepinv's
    layout). For real x, A^T A = F^H D F with D = (M^2 + M~^2)/2, M~ the mask mirrored
    through the k-space centre (M^2 = M for a 0/1 mask; a weighted mask is squared since
    A^H A = F^H M^2 F), so ``lipschitz_sq = max D`` exactly, and the data-fidelity prox
    ``argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2`` is the closed form
    ``F^H (F(z + gamma A^T y) / (1 + gamma D))``.
    """

    def __init__(self, mask: Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        h, w = mask.shape[-2:]
        self.mri = MRI(mask=mask.reshape(1, 1, h, w).float(), img_size=(1, 2, h, w))
        flat = mask.reshape(h, w).double() ** 2
        mirrored = flat[_mirror_index(h)][:, _mirror_index(w)]
        self.register_buffer("symmetric_mask", ((flat + mirrored) / 2).float())
        self.lipschitz_sq = float(self.symmetric_mask.max())

    @property
    def mask(self) -> Tensor:
        return self.mri.mask

    def A(self, x: Tensor, **kwargs) -> Tensor:
        return self.mri.A(torch.cat([x, torch.zeros_like(x)], dim=1))

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        return self.mri.A_adjoint(y)[:, :1]

    def _centred_fft(self, x: Tensor, inverse: bool = False) -> Tensor:
        dims = (-2, -1)
        shifted = torch.fft.ifftshift(x, dim=dims)
        out = (torch.fft.ifft2 if inverse else torch.fft.fft2)(shifted, norm="ortho")
        return torch.fft.fftshift(out, dim=dims)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: float | Tensor, **kwargs) -> Tensor:
        """``prox_{gamma f}(z) = z - F^H [gamma (D F z - F A^T y) / (1 + gamma D)]``, in z's precision.

        This form equals ``F^H (F(z + gamma A^T y) / (1 + gamma D))`` but never holds the
        large ``z + gamma A^T y``: that sum rounds z's information away at a large gamma
        (at gamma = 894 in float32, a prox 3.8x expansive between two nearby iterates, which
        broke PnP-DRS's monotone residual). Here the spectrum of ``A^T y`` is restricted to
        D > 0, where it lives (its FFT round-off elsewhere would be multiplied by gamma), and
        every term is multiplied by at most ``gamma D / (1 + gamma D) <= 1`` or ``gamma / (1 + gamma D)``.
        """
        complex_dtype = torch.complex128 if z.dtype == torch.float64 else torch.complex64
        gamma = per_image(gamma, z)
        weight = self.symmetric_mask.to(z.dtype)
        spectrum_z = self._centred_fft(z.to(complex_dtype))
        spectrum_data = torch.where(weight > 0, self._centred_fft(self.A_adjoint(y).to(complex_dtype)), 0)
        correction = gamma * (weight * spectrum_z - spectrum_data) / (1 + gamma * weight)
        return z - self._centred_fft(correction, inverse=True).real.to(z.dtype)


class MRIProblem(InverseProblem):
    """Cartesian line-sampled MRI: ``mask`` in random / gaussian / equispaced, ``acceleration``.

    The centre fraction defaults to 0.08 at x4 and 0.04 at x8 (the fastMRI protocol); the
    mask is drawn with deepinv's generators from ``seed``; ``noise`` is the std of the
    real and of the imaginary part of the k-space noise (orthonormal FFT, images in [0, 1]).
    """

    kind = "mri"

    def __init__(
        self, mask: str = "random", acceleration: int = 4, center_fraction: float | None = None,
        noise: float = 0.002, seed: int = 0,
    ) -> None:
        super().__init__(noise)
        if mask not in MASKS:
            raise ValueError(f"unknown mask {mask!r}; choose from {', '.join(MASKS)}")
        if not isinstance(acceleration, int) or acceleration < 1:
            raise ValueError(f"acceleration must be an integer >= 1, got {acceleration}")
        if center_fraction is None:
            center_fraction = DEFAULT_CENTER_FRACTION.get(acceleration, 0.32 / acceleration)
        if not 0 < center_fraction <= 1:
            raise ValueError(f"center_fraction must be in (0, 1], got {center_fraction}")
        self.mask_kind = mask
        self.acceleration = acceleration
        self.center_fraction = float(center_fraction)
        self.seed = int(seed)

    @property
    def name(self) -> str:
        name = f"mri-{self.mask_kind}-x{self.acceleration}-cf{self.center_fraction:g}-noise{self.noise:g}"
        return name + (f"-seed{self.seed}" if self.seed else "")

    def sampling_mask(self, height: int, width: int) -> Tensor:
        """The (H, W) 0/1 k-space mask (centred), reproducible from the name."""
        generator = MASKS[self.mask_kind](
            (height, width), acceleration=self.acceleration, center_fraction=self.center_fraction,
            rng=torch.Generator().manual_seed(self.seed),
        )
        return generator.step(1, seed=self.seed)["mask"].reshape(-1, height, width)[0]

    def _build_physics(self, shape: tuple[int, int, int]) -> RealMRI:
        if shape[0] != 1:
            raise ValueError(f"MRI takes single-channel (magnitude) images, got {shape[0]} channels")
        if min(shape[-2:]) < 8:
            raise ValueError(f"image {shape[-2]}x{shape[-1]} is too small for MRI line sampling")
        return RealMRI(self.sampling_mask(shape[-2], shape[-1]))

    def _noise_like(self, y: Tensor, generator: torch.Generator) -> Tensor:
        # Noise only where k-space is sampled, like deepinv's MRI noise model.
        noise = torch.randn(y.shape, generator=generator, dtype=torch.float32)
        return noise * self.physics(y.shape[:1] + (1,) + tuple(y.shape[-2:])).mask.cpu()
