"""Problems: names rebuild them, exact ||A^T A||, adjointness, prox, seeded measurements, bad input."""

import pytest
import torch

import problems as P
from tests.helpers import full_operator

SMALL = [
    "deblur-gaussian1.6-noise0.01",
    "deblur-uniform9-noise0.03",
    "deblur-motion15-seed3-noise0.01",
    "mri-random-x4-cf0.08-noise0.002",
    "mri-gaussian-x8-cf0.04-noise0.002",
    "mri-equispaced-x4-cf0.08-noise0.002-seed2",
]


def image_for(problem, size=32, channels=1):
    torch.manual_seed(1)
    return torch.rand(2, channels, size, size)


@pytest.mark.parametrize("name", list(P.STANDARD_PROBLEMS) + SMALL)
def test_name_rebuilds_the_same_problem(name):
    problem = P.problem_from_name(name)
    assert problem.name == name
    x = image_for(problem)
    if max(getattr(problem, "kernel", torch.zeros(1, 1, 1, 1)).shape[-2:]) > 32:
        x = torch.rand(1, 1, 40, 40)
    again = P.problem_from_name(name)
    torch.testing.assert_close(problem.measure(x, seed=3), again.measure(x, seed=3), rtol=0, atol=0)


@pytest.mark.parametrize("name", SMALL)
def test_lipschitz_sq_is_the_exact_norm_of_AtA(name):
    problem = P.problem_from_name(name)
    shape = (1, 24, 20) if name.startswith("mri") else (1, 20, 24)
    physics = problem.physics(shape)
    matrix = full_operator(lambda v: physics.A(v.float()).double(), shape)
    top = float(torch.linalg.svdvals(matrix).max()) ** 2
    assert problem.lipschitz_sq(shape) == pytest.approx(top, rel=1e-5)


@pytest.mark.parametrize("shape", [(12, 10), (9, 7)])
def test_weighted_mri_mask_has_the_exact_norm_and_prox(shape):
    """A weighted (non 0/1) mask: A^T A = F^H (M^2 + M~^2)/2 F for real images, not (M + M~)/2."""
    from problems.mri import RealMRI

    torch.manual_seed(2)
    mask = torch.rand(shape) * (torch.rand(shape) > 0.4)
    physics = RealMRI(mask)
    matrix = full_operator(lambda v: physics.A(v.float()).double(), (1, *shape))
    assert physics.lipschitz_sq == pytest.approx(float(torch.linalg.svdvals(matrix).max()) ** 2, rel=1e-5)
    z, y = torch.rand(1, 1, *shape, dtype=torch.float64), physics.A(torch.rand(1, 1, *shape)).double()
    for gamma in (0.7, 50.0):
        p = physics.prox_l2(z, y, gamma)
        optimality = physics.A_adjoint(physics.A(p) - y) + (p - z) / gamma
        assert float(optimality.abs().max()) < 1e-5, gamma


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("channels", [1, 3])
def test_adjoint_and_prox(name, channels, device):
    problem = P.problem_from_name(name)
    if name.startswith("mri") and channels == 3:
        with pytest.raises(ValueError, match="single-channel"):
            problem.physics((3, 32, 32), device)
        return
    x = image_for(problem, 32, channels).to(device)
    physics = problem.physics(x.shape, device)
    y = problem.measure(x, seed=0)
    assert y.device == x.device and physics.A_adjoint(y).device == x.device  # measuring keeps the operator there
    u, v = torch.randn_like(x), torch.randn_like(y)
    lhs, rhs = (physics.A(u) * v).sum(), (u * physics.A_adjoint(v)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-4, abs=1e-3)
    z, gamma = torch.rand_like(x), 0.7
    p = physics.prox_l2(z, y, gamma)
    optimality = physics.A_adjoint(physics.A(p) - y) + (p - z) / gamma
    assert float(optimality.abs().max()) < 1e-4


@pytest.mark.parametrize("name", ["deblur-gaussian1.6-noise0.01", "mri-random-x4-cf0.08-noise0.002"])
def test_prox_takes_one_step_per_image_as_deepinv_passes_it(name):
    problem = P.problem_from_name(name)
    x = image_for(problem, 32)
    physics, y = problem.physics(x.shape), problem.measure(x, seed=0)
    z, gammas = torch.rand_like(x), torch.tensor([0.5, 30.0])
    batched = physics.prox_l2(z, y, gammas)
    for i, gamma in enumerate(gammas.tolist()):
        torch.testing.assert_close(batched[i:i + 1], physics.prox_l2(z[i:i + 1], y[i:i + 1], gamma))


def test_measurements_are_seeded_and_noise_has_the_stated_std():
    problem = P.DeblurProblem("gaussian", noise=0.05)
    x = torch.full((1, 1, 128, 128), 0.5)
    y0, y0b, y1 = problem.measure(x, 0), problem.measure(x, 0), problem.measure(x, 1)
    assert torch.equal(y0, y0b) and not torch.equal(y0, y1)
    clean = problem.physics(x.shape).A(x)
    assert float((y0 - clean).std()) == pytest.approx(0.05, rel=0.03)


@pytest.mark.parametrize("acceleration", [4, 8])
@pytest.mark.parametrize("mask", ["random", "gaussian", "equispaced"])
def test_masks_sample_about_1_over_acceleration_and_keep_the_centre(mask, acceleration):
    problem = P.MRIProblem(mask, acceleration)
    sampled = problem.sampling_mask(256, 256)
    assert set(sampled.unique().tolist()) <= {0.0, 1.0}
    assert float(sampled.mean()) == pytest.approx(1 / acceleration, abs=0.03)
    assert float(sampled[:, 126:130].min()) == 1.0  # the centre lines (x4: 20 lines, x8: 10)
    assert torch.equal(sampled, P.MRIProblem(mask, acceleration).sampling_mask(256, 256))


def test_baseline_is_zero_filled_real_part_for_mri():
    problem = P.MRIProblem("random", 4, noise=0.0)
    x = P.default_image("mri", 64)
    assert 0 < float(((problem.baseline(problem.measure(x), x.shape) - x) ** 2).mean()) < 0.05
    full = P.MRIProblem("random", 1, noise=0.0)
    torch.testing.assert_close(full.baseline(full.measure(x), x.shape), x, atol=1e-5, rtol=0)


def test_default_images_are_embedded():
    for kind in ("natural", "mri"):
        image = P.default_image(kind, 64)
        assert image.shape == (1, 1, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert P.default_image("natural", 64, color=True).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: P.DeblurProblem("sinc"), "unknown blur kernel"),
        (lambda: P.DeblurProblem("gaussian", blur_sigma=0), "blur_sigma"),
        (lambda: P.DeblurProblem("gaussian", noise=-0.1), "noise"),
        (lambda: P.MRIProblem("spiral"), "unknown mask"),
        (lambda: P.MRIProblem("random", 0), "acceleration"),
        (lambda: P.MRIProblem("random", 4, center_fraction=1.5), "center_fraction"),
        (lambda: P.problem_from_name("deblur-foo"), "cannot parse"),
        (lambda: P.DeblurProblem("motion").physics((1, 16, 16)), "smaller than"),
        (lambda: P.DeblurProblem().measure(torch.rand(16, 16)), r"\(B, C, H, W\)"),
        (lambda: P.DeblurProblem().measure(torch.full((1, 1, 16, 16), float("nan"))), "NaN"),
        (lambda: P.default_image("ct"), "unknown image kind"),
    ],
)
def test_bad_input_raises_clear_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_stored_tuned_defaults_are_valid_and_within_the_theorems():
    import json

    import lipden
    from lipden.optim.base import canonical_method, conditions, default_parameters
    from problems.base import TUNED_DEFAULTS_FILE

    table = json.loads(TUNED_DEFAULTS_FILE.read_text())
    assert table
    for name, methods in table.items():
        problem = P.problem_from_name(name)
        shape = (1, 256, 256)
        for key, entry in methods.items():
            # "pnp-fbs:relu": a baseline-prior row of the benchmark; a ":box" suffix: the box-constrained row
            method, *qualifiers = key.split(":")
            boxed = qualifiers[-1:] == ["box"]
            family = qualifiers[0] if qualifiers and qualifiers[0] != "box" else ""
            params = dict(entry["parameters"])
            assert entry["tuned_on"]
            assert boxed == ("lower" in params or "upper" in params), key
            assert int(entry.get("max_iter", 1)) >= 1
            assert problem.default_iteration_cap(key) == entry.get("max_iter")
            if method == "tv":
                assert params["weight"] > 0
                continue
            model = params.pop("model")
            assert model in lipden.list_denoisers() and model.startswith(f"{family or 'spline'}-sigma")
            L = problem.lipschitz_sq(shape)
            full = {**default_parameters(method, L), **params}
            assert conditions(canonical_method(method), full, L, 1.0).holds, (name, method)


@pytest.mark.parametrize("problem", [P.MRIProblem("random", 4), P.DeblurProblem("gaussian", blur_sigma=1.6, noise=0.01)])
def test_asking_for_an_operator_on_another_device_leaves_earlier_ones_where_they_were(problem):
    # "meta" stands in for a GPU: a shared cached operator moved by .to() broke CUDA MRI solves
    cpu = problem.physics((1, 1, 32, 32))
    other = problem.physics((1, 1, 32, 32), "meta")
    x = P.default_image("mri", 32)
    problem.measure(x, seed=0)  # the MRI noise model looks the operator up again, on the CPU
    assert all(t.device.type == "cpu" for t in cpu.buffers())
    assert all(t.device.type == "meta" for t in other.buffers())
    assert problem.physics((1, 1, 32, 32), "meta") is other and problem.physics((1, 1, 32, 32)) is cpu


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [1.0, 900.0])
def test_prox_reflection_is_nonexpansive_between_nearby_points_at_large_steps(name, dtype, gamma):
    """||R a - R b|| <= ||a - b|| for R = 2 prox - Id, which PnP-DRS's monotone residual needs.

    The pair is as close as two late DRS iterates (relative distance 1e-4): a prox that forms
    ``z + gamma A^T y`` before its FFT rounds that difference away (at gamma 900 it was 3.8x
    expansive in float32 and, through a complex64 cast, in float64 too).
    """
    problem = P.problem_from_name(name)
    torch.manual_seed(4)
    x = torch.rand(1, 1, 128, 128)
    physics = problem.physics(x.shape)
    y = problem.measure(x, seed=0).to(dtype)
    a = (x + 0.05 * torch.randn_like(x)).to(dtype)
    b = a + 1e-4 * float(a.norm()) * torch.nn.functional.normalize(torch.randn_like(a).flatten(), dim=0).view_as(a)
    reflect = lambda z: 2 * physics.prox_l2(z, y, gamma) - z  # noqa: E731
    gain = float((reflect(a) - reflect(b)).norm() / (a - b).norm())
    assert gain <= 1 + (1e-3 if dtype == torch.float32 else 1e-9), gain
    p = physics.prox_l2(a, y, gamma)
    assert p.dtype == dtype
    optimality = physics.A_adjoint(physics.A(p) - y) + (p - a) / gamma
    # float64: deepinv keeps the blur's phase in complex64, so A^T A is exact to ~1e-7 only
    assert float(optimality.abs().max()) < (1e-4 if dtype == torch.float32 else 1e-7)
