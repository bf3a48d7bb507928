"""Bad input to the Python API (``LipschitzDenoiser``, ``reconstruct``, problems): the exception types."""


import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lipden
import problems as P
from tests.cli.helpers import SETTINGS


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=6).filter(lambda s: len(s) != 4))
def test_denoiser_rejects_wrong_ranks(shape, model):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.rand(shape))
    with pytest.raises(ValueError):
        model(np.zeros((1, 1, 4, 4), np.float32))


@SETTINGS
@given(offset=st.floats(-1, 1), scale=st.floats(0.1, 3))
def test_denoiser_takes_values_outside_the_unit_range(offset, scale, model):
    """Noisy images leave [0, 1]: accepted, and the map stays 1-Lipschitz there."""
    generator = torch.Generator().manual_seed(0)
    x = offset + scale * torch.rand(1, 1, 12, 12, generator=generator)
    y = x + 0.1 * torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        fx, fy = model(x), model(y)
    assert torch.isfinite(fx).all()
    assert (fx - fy).norm() <= (x - y).norm() * (1 + 1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.uint8])
def test_denoiser_rejects_other_dtypes_with_a_value_error(dtype, model):
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 8, 8, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_denoiser_rejects_non_finite_images(bad, model):
    x = torch.rand(1, 1, 8, 8)
    x[0, 0, 3, 3] = bad
    with pytest.raises(ValueError):
        model(x)


def test_denoiser_warns_on_a_noise_level_it_was_not_trained_for(model):
    for sigma in (-0.1, 0.0, 1e9):
        with pytest.warns(UserWarning, match="trained for sigma"):
            model(torch.rand(1, 1, 8, 8), sigma=sigma)


@pytest.fixture(scope="module")
def deblur_case():
    problem = P.DeblurProblem("gaussian", noise=0.01)
    x = P.default_image("natural", 24)
    return problem, x, problem.measure(x), problem.physics(x.shape)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda y: y * float("nan"), ValueError),
        (lambda y: y + float("inf"), ValueError),
        (lambda y: y[0], ValueError),
        (lambda y: y.numpy(), ValueError),
    ],
)
def test_reconstruct_rejects_bad_measurements(change, error, deblur_case, model):
    _, _, y, physics = deblur_case
    with pytest.raises(error):
        lipden.reconstruct(change(y), physics, model, max_iter=2)


def test_reconstruct_rejects_bad_names_and_numbers(deblur_case, model):
    _, x, y, physics = deblur_case
    for kwargs in ({"method": "pnp-fista"}, {"max_iter": 0}, {"tol": float("nan")}, {"step": float("inf")},
                   {"momentum": 0.5}):
        with pytest.raises(ValueError):
            lipden.reconstruct(y, physics, model, **{"max_iter": 2, **kwargs})
    with pytest.raises(lipden.ConvergenceConditionError):
        lipden.reconstruct(y, physics, model, step=0, max_iter=2)
    with pytest.raises(ValueError, match="x0"):
        lipden.reconstruct(y, physics, model, x0=x * float("nan"), max_iter=2)
    # measurements of images outside [0, 1] are still measurements
    result = lipden.reconstruct(3 * y - 1, physics, model, max_iter=2)
    assert torch.isfinite(result.x).all()
    for make in (lambda: P.MRIProblem("random", 0), lambda: P.MRIProblem("random", 0.5),
                 lambda: P.MRIProblem("spiral", 4), lambda: P.DeblurProblem("box")):
        with pytest.raises(ValueError):
            make()


def test_reconstruct_rejects_float64_measurements_with_a_value_error(deblur_case, model):
    _, _, y, physics = deblur_case
    with pytest.raises(ValueError):
        lipden.reconstruct(y.double(), physics, model, max_iter=2)

