"""Fixtures of the solver tests (the shared ones, small_denoiser and mri_case, are in tests/conftest.py)."""

import pytest


@pytest.fixture(scope="module")
def deblur_case():
    """(problem, x, y, physics) of a 40x40 Gaussian deblurring problem (blur 1.6, noise 0.01)."""
    import problems as P

    problem = P.DeblurProblem("gaussian", blur_sigma=1.6, noise=0.01)
    x = P.default_image("natural", 40)
    return problem, x, problem.measure(x, seed=0), problem.physics(x.shape)
