"""Deblurring with circular boundary: ``y = k * x + n`` (deepinv ``BlurFFT``), Gaussian noise."""

from __future__ import annotations

import torch
from deepinv.physics import BlurFFT
from deepinv.physics.functional.blur import gaussian_blur
from deepinv.physics.generator import MotionBlurGenerator
from torch import Tensor

from .base import InverseProblem, per_image

KERNELS = ("gaussian", "uniform", "motion")


def blur_kernel(kind: str, blur_sigma: float = 1.6, size: int = 9, seed: int = 0) -> Tensor:
    """A normalised (1, 1, k, k) blur kernel, reproducible from its arguments.

    ``gaussian``: isotropic, standard deviation ``blur_sigma`` pixels (deepinv's
    ``gaussian_blur``). ``uniform``: a ``size`` x ``size`` box. ``motion``: deepinv's
    ``MotionBlurGenerator`` on a ``size`` x ``size`` support, drawn with ``seed``.
    """
    if kind == "gaussian":
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        kernel = gaussian_blur(sigma=blur_sigma)
    elif kind == "uniform":
        if size < 1:
            raise ValueError(f"kernel size must be >= 1, got {size}")
        kernel = torch.full((1, 1, size, size), 1.0 / size**2)
    elif kind == "motion":
        if size < 3:
            raise ValueError(f"motion kernel size must be >= 3, got {size}")
        generator = MotionBlurGenerator((size, size), rng=torch.Generator().manual_seed(int(seed)))
        kernel = generator.step(1, seed=int(seed))["filter"]
    else:
        raise ValueError(f"unknown blur kernel {kind!r}; choose from {', '.join(KERNELS)}")
    return (kernel / kernel.sum()).float()


class CertifiedBlurFFT(BlurFFT):
    """deepinv ``BlurFFT`` (circular convolution) with the exact ``lipschitz_sq = max |K(w)|^2``.

    The circular convolution is diagonalised by the DFT, so ``||A^T A||`` is the largest
    squared magnitude of the kernel's DFT on the image grid: exact, not estimated.
    """

    def __init__(self, img_size: tuple[int, int, int], filter: Tensor) -> None:
        super().__init__(img_size=img_size, filter=filter)
        impulse = torch.zeros(1, *img_size)
        impulse[..., 0, 0] = 1
        response = torch.fft.rfft2(self.A(impulse).double())
        self.lipschitz_sq = float(response.abs().pow(2).max())

    def prox_l2(self, z: Tensor, y: Tensor, gamma: float | Tensor, **kwargs) -> Tensor:
        """``prox_{gamma f}(z) = z - V [K (K V^H z - U^H y) / (1/gamma + K^2)]`` (K: singular values).

        Equal to deepinv's ``V (V^H (A^T y + z / gamma) / (K^2 + 1/gamma))``, whose sum
        ``A^T y + z / gamma`` rounds z's information away at a large gamma (the error is then
        multiplied by up to gamma where K is small); here every factor is at most
        ``K^2 / (1/gamma + K^2) <= 1`` or ``K / (1/gamma + K^2) <= sqrt(gamma) / 2``, so the
        prox stays nonexpansive to round-off.
        """
        singular, spectrum_z = self.mask, self.V_adjoint(z)  # (B, C, H, W // 2 + 1, 2): real view
        gamma = per_image(gamma, spectrum_z)
        spectrum = singular * (singular * spectrum_z - self.U_adjoint(y)) / (1 / gamma + singular * singular)
        return z - self.V(spectrum)


class DeblurProblem(InverseProblem):
    """Circular deblurring with additive white Gaussian noise of std ``noise`` (images in [0, 1]).

    Grayscale or colour: the same kernel blurs every channel.
    """

    def __init__(
        self, kernel: str = "gaussian", blur_sigma: float = 1.6, size: int | None = None,
        noise: float = 0.01, seed: int = 0,
    ) -> None:
        super().__init__(noise)
        self.kernel_kind = kernel
        self.blur_sigma = float(blur_sigma)
        self.size = int(size) if size is not None else {"uniform": 9, "motion": 31}.get(kernel, 0)
        self.seed = int(seed)
        self.kernel = blur_kernel(kernel, self.blur_sigma, self.size, self.seed)

    @property
    def name(self) -> str:
        if self.kernel_kind == "gaussian":
            kernel = f"gaussian{self.blur_sigma:g}"
        elif self.kernel_kind == "uniform":
            kernel = f"uniform{self.size}"
        else:
            kernel = f"motion{self.size}-seed{self.seed}"
        return f"deblur-{kernel}-noise{self.noise:g}"

    def _build_physics(self, shape: tuple[int, int, int]) -> CertifiedBlurFFT:
        if min(shape[-2:]) < max(self.kernel.shape[-2:]):
            raise ValueError(
                f"image {shape[-2]}x{shape[-1]} is smaller than the {self.kernel.shape[-1]}-pixel blur kernel"
            )
        return CertifiedBlurFFT(shape, self.kernel)

    def _noise_like(self, y: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(y.shape, generator=generator, dtype=torch.float32)
