"""lipden.metrics against independent formulas: PSNR from its definition, SSIM's two windows."""

import math

import numpy as np
import pytest
import torch

from lipden.metrics import psnr, psnr_per_image, ssim


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(1, 33, 47, generator=generator)
    return clean + 0.1 * torch.randn(clean.shape, generator=generator), clean


def test_psnr_is_the_clipped_mean_squared_error_in_decibels():
    noisy, clean = _images()
    mse = float(((noisy.clamp(0, 1) - clean) ** 2).double().mean())
    assert psnr(noisy, clean) == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    batch = torch.stack([noisy, clean])
    per_image = psnr_per_image(batch, torch.stack([clean, clean]))
    assert float(per_image[0]) == pytest.approx(10 * math.log10(1 / mse), abs=1e-3) and float(per_image[1]) > 150


def _reference_ssim(x: np.ndarray, y: np.ndarray, weights: np.ndarray, covariance_scale: float = 1.0) -> float:
    """Wang et al. (2004) by hand: local statistics under ``weights`` at every valid window position
    (the variances and covariance times ``covariance_scale``)."""
    c1, c2 = 0.01**2, 0.03**2
    k = weights.shape[0]
    values = []
    for i in range(x.shape[0] - k + 1):
        for j in range(x.shape[1] - k + 1):
            a, b = x[i : i + k, j : j + k], y[i : i + k, j : j + k]
            ma, mb = (weights * a).sum(), (weights * b).sum()
            va, vb = (weights * a * a).sum() - ma**2, (weights * b * b).sum() - mb**2
            cov = (weights * a * b).sum() - ma * mb
            va, vb, cov = va * covariance_scale, vb * covariance_scale, cov * covariance_scale
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_uniform_ssim_matches_the_definition_on_7x7_windows():
    noisy, clean = _images(1)
    weights = np.full((7, 7), 1 / 49)
    expected = _reference_ssim(noisy.clamp(0, 1)[0].double().numpy(), clean[0].double().numpy(), weights,
                               covariance_scale=49 / 48)  # sample covariances over the 49 pixels
    assert ssim(noisy, clean) == pytest.approx(expected, abs=1e-5)
    assert ssim(clean, clean) == pytest.approx(1.0)


def test_gaussian_ssim_matches_the_definition_with_a_sigma_1_5_window():
    noisy, clean = _images(2)
    radius = int(3.5 * 1.5 + 0.5)  # scikit-image truncates the Gaussian at 3.5 sigma
    axis = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 1.5) ** 2)
    weights = np.outer(axis, axis) / np.outer(axis, axis).sum()
    expected = _reference_ssim(noisy.clamp(0, 1)[0].double().numpy(), clean[0].double().numpy(), weights)
    assert ssim(noisy, clean, window="gaussian") == pytest.approx(expected, abs=1e-6)
    assert ssim(noisy, clean, window="gaussian") != ssim(noisy, clean)


def test_ssim_refuses_an_unknown_window_and_returns_none_on_tiny_images():
    noisy, clean = _images()
    with pytest.raises(ValueError, match="window"):
        ssim(noisy, clean, window="box")
    assert ssim(noisy[..., :2, :2], clean[..., :2, :2]) is None
