"""Shipped weights: integrity, certificates and PSNR floors on a few images."""

import json

import numpy as np
import pytest
import torch

import lipden
from lipden.models.checkpoint import sha256_of
from lipden.models.pretrained import CERTIFY_SHAPE, weights_dir
from tests.helpers import DATA

# Mean PSNR (dB) floors on the first 3 BSD68 images with the standard protocol.
PSNR_FLOORS = {
    "spline-sigma5": 36.0,
    "spline-sigma15": 29.0,
    "spline-sigma25": 26.5,
    "relu-sigma15": 28.7,
    "absolute_value-sigma15": 29.0,
    "householder-sigma15": 28.7,
    "groupsort-sigma15": 28.7,
    "free-sigma15": 29.0,
}
SHIPPED = lipden.list_denoisers()


def _unconstrained(name: str) -> bool:
    return lipden.denoiser_card(name)["config"]["conv"] == "free"


def test_weights_folder_is_small():
    total = sum(p.stat().st_size for p in weights_dir().glob("*") if p.is_file())
    assert total < 20 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_card_matches_file_and_model_is_certified(name):
    card = lipden.denoiser_card(name)
    path = weights_dir() / f"{name}.safetensors"
    assert card["sha256"] == sha256_of(path)
    for key in ("config", "sigma_255", "training", "bsd68_psnr", "certified_lipschitz_40x40"):
        assert key in card, key
    model = lipden.load_denoiser(name)
    if _unconstrained(name):  # the comparison CNN without constraints: no guarantee, and it says so
        assert not model.is_lipschitz_constrained and model.lipschitz_certificate(CERTIFY_SHAPE) > 1
    else:
        assert model.lipschitz_certificate(CERTIFY_SHAPE) <= 1 + 1e-4
    assert model.config.sigma == pytest.approx(card["sigma_255"] / 255)
    json.dumps(card)


def _first_bsd68(count=3):
    from lipden.io import list_images, load_grayscale

    return [load_grayscale(p) for p in list_images(DATA / "bsd68")[:count]]


def _bsd68_psnr(name: str, count: int) -> float:
    """Mean PSNR of a shipped model on the first ``count`` BSD68 images (the standard protocol)."""
    from lipden.train.data import noisy_versions
    from lipden.train.loop import evaluate

    model = lipden.load_denoiser(name)
    clean = _first_bsd68(count)
    return evaluate(model, clean, noisy_versions(clean, model.config.sigma), torch.device("cpu"))


needs_bsd68 = pytest.mark.skipif(not (DATA / "bsd68").is_dir(), reason="needs ../shared/data/bsd68")


@pytest.mark.slow
@needs_bsd68
def test_spline_beats_every_shipped_1_lipschitz_baseline_at_sigma15():
    """Recomputed on the first 5 BSD68 images, not read from the model cards."""
    if "spline-sigma15" not in SHIPPED:
        pytest.skip("spline-sigma15 not shipped")
    spline = _bsd68_psnr("spline-sigma15", 5)
    for name in SHIPPED:
        if name.endswith("-sigma15") and not name.startswith("spline") and not _unconstrained(name):
            assert spline > _bsd68_psnr(name, 5), name


@pytest.mark.slow
@needs_bsd68
@pytest.mark.parametrize("name", [n for n in SHIPPED if n in PSNR_FLOORS])
def test_psnr_floor_on_bsd68(name):
    assert _bsd68_psnr(name, 3) >= PSNR_FLOORS[name]


@pytest.mark.parametrize("name", SHIPPED)
def test_denoising_improves_an_embedded_image(name):
    from skimage import data

    model = lipden.load_denoiser(name)
    clean = torch.from_numpy(data.camera()[128:384, 128:384].astype(np.float32) / 255)[None, None]
    generator = torch.Generator().manual_seed(0)
    noisy = clean + model.config.sigma * torch.randn(clean.shape, generator=generator)
    with torch.no_grad():
        out = model(noisy).clamp(0, 1)
    mse_in = float((noisy.clamp(0, 1) - clean).pow(2).mean())
    mse_out = float((out - clean).pow(2).mean())
    assert 10 * np.log10(mse_in / mse_out) > 2.0  # at least 2 dB better than the input


def test_unconstrained_model_is_refused_by_the_solvers_unless_the_guarantee_is_waived():
    if "free-sigma15" not in SHIPPED:
        pytest.skip("free-sigma15 not shipped")
    import problems
    from lipden.certify.bounds import CertificationError
    from lipden.optim.reconstruct import GuaranteeWarning

    problem = problems.DeblurProblem("gaussian", blur_sigma=1.6, noise=0.01)
    x = problems.default_image("natural", 32)
    y, physics = problem.measure(x, seed=0), problem.physics(x.shape)
    model = lipden.load_denoiser("free-sigma15")
    with pytest.raises(CertificationError, match="guarantee"):
        lipden.reconstruct(y, physics, model, "pnp-fbs", step=1.0, strength=0.5, max_iter=3)
    with pytest.warns(GuaranteeWarning):
        result = lipden.reconstruct(y, physics, model, "pnp-fbs", step=1.0, strength=0.5, max_iter=3,
                                    guarantee=False)
    assert not result.guaranteed
