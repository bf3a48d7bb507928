"""``reconstruct`` on deblurring and MRI: convergence with non-increasing residuals, fixed points, the
theorems' conditions enforced, the denoiser's certificate used."""

import warnings

import pytest
import torch

import problems as P
from lipden import CertificationError, DenoiserConfig, LipschitzDenoiser, load_denoiser
from lipden.optim.base import ConvergenceConditionError, averagedness, conditions, make_step
from lipden.optim.reconstruct import GuaranteeWarning, SolverError, reconstruct

METHOD_PARAMS = [
    ("pnp-fbs", {"step": 1.5, "strength": 0.5}),
    ("pnp-fbs", {"step": 1.999, "strength": 1.0, "relaxation": 0.8}),
    ("pnp-fbs", {"step": 1.0, "strength": 0.3, "relaxation": 1.65}),  # over-relaxed: 1/alpha = 1.7
    ("pnp-drs", {"step": 1.0, "strength": 0.5, "relaxation": 0.5}),
    ("pnp-admm", {"step": 0.3, "strength": 0.25, "relaxation": 0.7}),
    ("red", {"weight": 0.3}),
    # projected onto a box: 1/alpha' = 2 - alpha = 1.42 for this step and strength
    ("pnp-fbs", {"step": 1.0, "strength": 0.3, "relaxation": 1.35, "lower": 0.0, "upper": 1.0}),
    ("red", {"weight": 0.3, "lower": 0.0}),
]


@pytest.mark.parametrize("case", ["deblur_case", "mri_case"])
@pytest.mark.parametrize("method, params", METHOD_PARAMS)
def test_solvers_converge_with_non_increasing_residuals(case, method, params, small_denoiser, request):
    problem, x, y, physics = request.getfixturevalue(case)
    result = reconstruct(y, physics, small_denoiser, method, x_true=x, max_iter=3000, tol=1e-5, **params)
    assert result.guaranteed and result.converged
    assert float(result.final_relative_residuals.max()) <= 1e-5
    r = result.residuals[:, 0]
    # non-increasing up to float32 round-off of the iterate
    assert bool((r[1:] <= r[:-1] + 2e-6 * float(result.x.norm())).all())
    assert result.monotone
    assert result.psnr is not None and result.psnr.shape == result.residuals.shape


@pytest.mark.parametrize("case", ["deblur_case", "mri_case"])
def test_fbs_over_relaxation_reaches_the_same_fixed_point_sooner(case, small_denoiser, request):
    """lam in (1, 1/alpha) keeps the guarantee (lam alpha < 1), the monotone residual and the limit.

    (How much sooner depends on the problem: on the MRI tuning slices it is measured in the
    benchmark notes; this small denoiser contracts strongly, so both stop within ~30 iterations.)"""
    problem, x, y, physics = request.getfixturevalue(case)
    base = {"step": 1.0, "strength": 0.3}
    alpha = averagedness("pnp-fbs", {**base, "relaxation": 1.0}, problem.lipschitz_sq(x.shape))
    assert alpha is not None and 0.55 < alpha < 0.6  # (0.3 + 0.5 - 0.15 * 2) / (1 - 0.15)
    plain = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6, relaxation=1.0, **base)
    fast = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6, relaxation=0.95 / alpha, **base)
    assert plain.converged and fast.converged and fast.monotone and fast.guaranteed
    assert fast.iterations <= plain.iterations
    assert float((fast.x - plain.x).norm() / plain.x.norm()) < 1e-4
    with pytest.raises(ConvergenceConditionError, match="1/alpha"):
        reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=5, relaxation=1.0 / alpha + 1e-3, **base)


@pytest.mark.parametrize("case", ["deblur_case", "mri_case"])
def test_box_constrained_fbs_converges_inside_the_box_to_a_fixed_point(case, small_denoiser, request):
    """P_C o D o (Id - gamma grad f) is 1/(2 - alpha)-averaged: relaxation up to 2 - alpha is allowed."""
    problem, x, y, physics = request.getfixturevalue(case)
    base = {"step": 1.0, "strength": 0.3, "lower": 0.05, "upper": 0.9}  # a box that the plain solve leaves
    L = problem.lipschitz_sq(x.shape)
    alpha = averagedness("pnp-fbs", {**base, "relaxation": 1.0}, L)
    plain_alpha = averagedness("pnp-fbs", {"step": 1.0, "strength": 0.3, "relaxation": 1.0}, L)
    assert alpha == pytest.approx(1 / (2 - plain_alpha))
    result = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6,
                         relaxation=0.95 / alpha, **base)
    assert result.converged and result.monotone and result.guaranteed
    assert float(result.x.min()) >= 0.05 and float(result.x.max()) <= 0.9
    plain = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6, step=1.0, strength=0.3)
    assert float(plain.x.min()) < 0.05 or float(plain.x.max()) > 0.9
    step, _, _ = make_step(
        "pnp-fbs", {**base, "relaxation": 1.0}, small_denoiser, lambda v: physics.A_adjoint(physics.A(v) - y),
        lambda z, g: physics.prox_l2(z, y, g),
    )
    with torch.no_grad():
        assert float((step(result.x) - result.x).norm() / result.x.norm()) < 1e-5
    with pytest.raises(ConvergenceConditionError, match="1/alpha"):
        reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=5, relaxation=1 / alpha + 1e-3, **base)


def test_fbs_limit_is_a_fixed_point(deblur_case, small_denoiser):
    problem, x, y, physics = deblur_case
    params = {"step": 1.5, "strength": 0.5, "relaxation": 1.0}
    result = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6, **params)
    step, _, _ = make_step(
        "pnp-fbs", params, small_denoiser, lambda v: physics.A_adjoint(physics.A(v) - y),
        lambda z, g: physics.prox_l2(z, y, g),
    )
    with torch.no_grad():
        gap = (step(result.x) - result.x).norm() / result.x.norm()
    assert float(gap) < 1e-5


def test_batched_solve_matches_single_image_solves(mri_case, small_denoiser):
    problem, x, y, physics = mri_case
    x2 = torch.cat([x, x.flip(-1)])
    y2 = problem.measure(x2, seed=0)
    both = reconstruct(y2, physics, small_denoiser, "pnp-fbs", max_iter=2000)
    second = reconstruct(y2[1:], physics, small_denoiser, "pnp-fbs", max_iter=2000)
    torch.testing.assert_close(both.x[1:], second.x, atol=2e-4, rtol=0)


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("pnp-fbs", {"step": 2.5}, "step"),
        ("pnp-fbs", {"strength": 1.0, "step": 1.5, "relaxation": 1.0}, "relaxation"),
        ("pnp-fbs", {"strength": 1.3}, "strength"),
        ("pnp-drs", {"strength": 0.7}, "firmly nonexpansive"),
        ("pnp-drs", {"relaxation": 1.0}, "relaxation"),
        ("red", {"weight": 1.0, "step": 0.7}, "step"),
    ],
)
def test_parameters_outside_the_theorem_are_refused(method, params, message, deblur_case, small_denoiser):
    _, _, y, physics = deblur_case
    with pytest.raises(ConvergenceConditionError, match=message):
        reconstruct(y, physics, small_denoiser, method, max_iter=5, **params)
    with pytest.warns(GuaranteeWarning):
        result = reconstruct(y, physics, small_denoiser, method, max_iter=5, guarantee=False, **params)
    assert not result.guaranteed


def test_unconstrained_denoiser_needs_guarantee_false(deblur_case):
    _, _, y, physics = deblur_case
    free = LipschitzDenoiser(DenoiserConfig(channels=8, depth=4, conv="free", sigma=None)).eval()
    with pytest.raises(CertificationError, match="certified"):
        reconstruct(y, physics, free, "pnp-fbs", max_iter=5)
    with pytest.warns(GuaranteeWarning):
        reconstruct(y, physics, free, "pnp-fbs", max_iter=5, guarantee=False)


def test_expansive_denoiser_is_caught(deblur_case):
    _, _, y, physics = deblur_case

    class Expansive(torch.nn.Module):
        def forward(self, v, sigma=None):
            return 3.0 * v

        def lipschitz_certificate(self, shape):
            return 3.0

    with pytest.raises(CertificationError, match="3 > 1"):
        reconstruct(y, physics, Expansive(), "pnp-fbs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SolverError, match="diverging|NaN"):
            reconstruct(y, physics, Expansive(), "pnp-fbs", guarantee=False, max_iter=200, strength=1.0, relaxation=0.9)


def test_nan_stops_with_a_clear_error(deblur_case):
    _, _, y, physics = deblur_case

    class Broken(torch.nn.Module):
        def forward(self, v, sigma=None):
            return v * float("nan")

        def lipschitz_certificate(self, shape):
            return 1.0

    with pytest.raises(SolverError, match="NaN"):
        reconstruct(y, physics, Broken(), "red")


def test_conditions_name_the_theorem():
    check = conditions("red", {"weight": 1.0, "step": 0.5}, 1.0, 1.0)
    assert check.holds and "cocoercive" in check.theorem
    assert not conditions("pnp-fbs", {"step": 1.0, "strength": 0.5, "relaxation": 1.0}, 1.0, None).holds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "ista"}, "unknown method"), ({"max_iter": 0}, "max_iter"), ({"stepsize": 1.0}, "unknown parameters"),
        ({"method": "pnp-drs", "lower": 0.0}, "unknown parameters"),  # box bounds: pnp-fbs and red only
        ({"lower": 0.5, "upper": 0.5}, "lower < upper"),
    ],
)
def test_bad_solver_arguments(kwargs, message, deblur_case, small_denoiser):
    _, _, y, physics = deblur_case
    with pytest.raises(ValueError, match=message):
        reconstruct(y, physics, small_denoiser, max_iter=kwargs.pop("max_iter", 2), **kwargs)


def test_shipped_spline_prior_reconstructs_mri_better_than_zero_filled():
    problem = P.MRIProblem("random", 4)
    x = P.default_image("mri", 64)
    y = problem.measure(x, seed=0)
    denoiser = load_denoiser("spline-sigma15")
    result = reconstruct(y, problem.physics(x.shape), denoiser, "pnp-fbs", x_true=x, max_iter=1000,
                         tol=1e-4, step=1.9, strength=0.5)
    assert result.converged and result.monotone and result.guaranteed
    zero_filled = 10 * torch.log10(1 / ((problem.baseline(y, x.shape) - x) ** 2).mean())
    assert float(result.psnr[-1, 0]) > float(zero_filled) + 2


def test_fbs_and_drs_share_their_fixed_point(deblur_case, small_denoiser):
    """x = prox_{gf}(z*) with z* = x + g grad f(x) turns the DRS fixed-point equation into FBS's."""
    _, _, y, physics = deblur_case
    fbs = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=3000, tol=1e-6, step=1.0, strength=0.5)
    drs = reconstruct(y, physics, small_denoiser, "pnp-drs", max_iter=3000, tol=1e-6, step=1.0, strength=0.5)
    assert fbs.converged and drs.converged
    torch.testing.assert_close(fbs.x, drs.x, atol=5e-4, rtol=0)


@pytest.mark.parametrize("case", ["deblur_case", "mri_case"])
def test_each_image_stops_on_its_own_and_matches_a_lone_solve(case, small_denoiser, request):
    problem, x, y, physics = request.getfixturevalue(case)
    method, params = METHOD_PARAMS[0]
    other = 0.3 * x.flip(-1) + 0.1  # a low-contrast image: it stops earlier
    pair = torch.cat([x, other])
    y_pair = torch.cat([y, problem.measure(other, seed=1)])
    together = reconstruct(y_pair, physics, small_denoiser, method, max_iter=3000, tol=1e-5, **params)
    alone = reconstruct(y, physics, small_denoiser, method, max_iter=3000, tol=1e-5, **params)
    assert together.converged and together.iterations_per_image.shape == (2,)
    assert int(together.iterations_per_image[0]) == alone.iterations
    assert together.iterations == int(together.iterations_per_image.max())
    torch.testing.assert_close(together.x[:1], alone.x, rtol=0, atol=1e-5)
    # the second image stops first; afterwards its residuals are NaN
    first = int(together.iterations_per_image[1])
    assert first < together.iterations
    assert torch.isnan(together.residuals[first:, 1]).all() and not torch.isnan(together.residuals[:first, 1]).any()
    assert float(together.final_relative_residuals.max()) <= 1e-5
    assert pair.shape == together.x.shape


@pytest.mark.parametrize("weight", [0.05, 1.0, 20.0])
def test_red_default_step_follows_the_given_weight(weight, deblur_case, small_denoiser):
    _, _, y, physics = deblur_case
    result = reconstruct(y, physics, small_denoiser, "red", weight=weight, max_iter=3, tol=1e-12)
    L = result.lipschitz_sq
    assert result.parameters["weight"] == weight
    # RED's bound is step < 2 / (L + 2 weight); the default sits at 90 % of it for any weight
    assert result.parameters["step"] == pytest.approx(1.8 / (L + 2 * weight))


def test_the_certified_bound_comes_from_the_protocol(deblur_case, small_denoiser):
    """``reconstruct`` asks a denoiser for ``lipschitz_certificate`` (LipschitzCertified), and treats one
    that declares itself unconstrained as uncertified."""
    from lipden.models.protocol import ConstrainedDenoiser, LipschitzCertified
    from lipden.optim.reconstruct import certified_lipschitz

    assert isinstance(small_denoiser, ConstrainedDenoiser) and isinstance(small_denoiser, LipschitzCertified)
    bound = certified_lipschitz(small_denoiser, (1, 1, 40, 40))
    assert bound == small_denoiser.lipschitz_certificate((1, 1, 40, 40)) and bound <= 1 + 1e-4
    free = LipschitzDenoiser(DenoiserConfig(channels=8, depth=4, conv="free", sigma=None)).eval()
    assert not free.is_lipschitz_constrained and certified_lipschitz(free, (1, 1, 40, 40)) is None

    plain = torch.nn.Sequential(torch.nn.ReLU())  # no certificate of its own: lipschitz_upper_bound walks it
    assert not isinstance(plain, LipschitzCertified)
    _, _, y, physics = deblur_case
    result = reconstruct(y, physics, plain, "pnp-fbs", max_iter=3)
    assert result.guaranteed and result.denoiser_lipschitz == pytest.approx(1.0)


def test_a_loaded_model_states_its_bound_through_the_protocol_only():
    from lipden.models.pretrained import CERTIFY_SHAPE
    from lipden.models.protocol import LipschitzCertified

    model = load_denoiser("spline-sigma15")
    assert isinstance(model, LipschitzCertified) and model.lipschitz_certificate(CERTIFY_SHAPE) <= 1 + 1e-4
    assert not hasattr(model, "lipschitz_bound")  # one name for the certified bound


@pytest.mark.parametrize("method", ["pnp-fbs", "pnp-drs", "red"])
def test_reconstruct_writes_nothing_it_was_given(method, deblur_case, small_denoiser):
    _, x, y, physics = deblur_case
    x0 = physics.A_adjoint(y)
    given = (y.clone(), x0.clone(), x.clone())
    reconstruct(y, physics, small_denoiser, method, x0=x0, x_true=x, max_iter=20, accelerate=2)
    for before, after in zip(given, (y, x0, x), strict=True):
        assert torch.equal(before, after)
