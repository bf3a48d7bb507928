"""The method classes on small problems in float64: every method x Anderson {off, 3} x problem reaches a
fixed point of its T with non-increasing residuals under its theorem; closed forms for a linear denoiser;
typed parameters that check their fields; the string interface agrees with the classes."""

import pytest
import torch

from lipden.optim.anderson import AndersonConfig
from lipden.optim.base import (
    ALIASES,
    METHOD_NAMES,
    METHODS,
    averagedness,
    build_params,
    canonical_method,
    conditions,
    default_parameters,
    fbs_fast_relaxation,
    fixed_point_projection,
    make_step,
    parameter_names,
    relax,
)
from lipden.optim.drs import DRSParams, PnPDRS
from lipden.optim.fbs import FBSParams, PnPFBS
from lipden.optim.red import RED, REDParams
from lipden.optim.runner import run
from tests.optim.toy import DENOISERS, F64, PROBLEMS, W, Y, build, find_problem


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("denoiser", sorted(DENOISERS))
@pytest.mark.parametrize("accelerate", [0, 3])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_converges_to_a_fixed_point_with_non_increasing_residuals(method, accelerate, denoiser, problem):
    solver = build(method, problem, denoiser)
    check = solver.hypotheses(1.0)
    assert check.holds and check.theorem and 0 < solver.averagedness() < 1
    record = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=20000, tol=1e-12,
                 anderson=AndersonConfig(memory=accelerate) if accelerate else None, split_batches=True)
    assert record.converged and record.monotone
    for b in range(2):
        r = record.residuals[: int(record.iterations_per_image[b]), b]
        assert bool((r[1:] <= r[:-1] + 1e-13 * float(record.z[b].norm())).all())
    gap = (solver.step(record.z) - record.z).norm(dim=1) / record.z.norm(dim=1)
    assert float(gap.max()) < 1e-10  # T(z*) = z*
    if accelerate:  # Anderson reaches it in fewer evaluations of T than the plain iteration
        plain = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=20000, tol=1e-12, split_batches=True)
        assert int(record.evaluations_per_image.sum()) <= int(plain.evaluations_per_image.sum())


def _linear_fixed_point(method: str, problem: str, solver) -> torch.Tensor:
    """The image x* in closed form for N = W linear: FBS and DRS share x = D(x - gamma grad f(x)),
    D = (1 - theta) I + theta W; RED solves A^T (A x - y) + mu (x - W x) = 0."""
    a, eye = PROBLEMS[problem], torch.eye(2, dtype=F64)
    gram, rhs = a.T @ a, Y @ a
    p = solver.params
    if method == "red":
        return torch.linalg.solve(gram + p.weight * (eye - W), rhs.T).T
    d = (1 - p.strength) * eye + p.strength * W
    return torch.linalg.solve(eye - d @ (eye - p.step * gram), p.step * (rhs @ d.T).T).T


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_with_a_linear_denoiser_the_limit_is_the_closed_form_solution(method, problem):
    solver = build(method, problem, "linear")
    record = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=20000, tol=1e-13)
    assert record.converged
    torch.testing.assert_close(record.x, _linear_fixed_point(method, problem, solver), rtol=1e-9, atol=1e-9)


def test_pnp_fbs_with_a_linear_contraction_matches_torch_linalg_solve():
    """x* = (I - lam ((1-t) I + t W)(I - g A^T A) - (1 - lam) I)^{-1} lam D g A^T y, in float64, relaxed."""
    a = PROBLEMS["well"]
    data = find_problem("well")
    params = FBSParams(step=1.5 / data.lipschitz_sq, strength=0.6, relaxation=1.2)
    solver = PnPFBS(params, data, DENOISERS["linear"])
    assert solver.hypotheses(1.0).holds  # 1.2 < 1/alpha = 1.22
    record = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=5000, tol=1e-14)
    eye = torch.eye(2, dtype=F64)
    d = (1 - params.strength) * eye + params.strength * W
    t_linear = params.relaxation * d @ (eye - params.step * a.T @ a) + (1 - params.relaxation) * eye
    offset = params.relaxation * params.step * (Y @ a @ d.T)
    expected = torch.linalg.solve(eye - t_linear, offset.T).T
    torch.testing.assert_close(record.x, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_methods_return_new_tensors_and_split_their_step(method):
    solver = build(method, "well", "clamp")
    z = torch.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=F64)
    before = z.clone()
    for out in (solver.step(z), solver.data_step(z), solver.prior_step(z)):
        assert out.data_ptr() != z.data_ptr()
    solver.estimate(z)
    assert torch.equal(z, before)  # nothing written into the caller's tensor
    lam = getattr(solver.params, "relaxation", None)
    if method == "pnp-fbs":
        torch.testing.assert_close(solver.step(z), relax(z, solver.prior_step(solver.data_step(z)), lam))
    elif method == "pnp-drs":
        torch.testing.assert_close(solver.step(z), relax(z, solver.prior_step(2 * solver.data_step(z) - z), lam))
    else:
        step = solver.params.step
        torch.testing.assert_close(solver.step(z), z - step * (solver.data_step(z) + solver.prior_step(z)))


@pytest.mark.parametrize("method", ["pnp-fbs", "red"])
def test_a_box_holds_every_iterate_estimate_and_fixed_point(method):
    solver = build(method, "singular", "linear", lower=-0.2, upper=0.25)
    record = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=20000, tol=1e-12, anderson=AndersonConfig(memory=2))
    assert record.converged and record.monotone and solver.hypotheses(1.0).holds
    assert float(record.x.min()) >= -0.2 and float(record.x.max()) <= 0.25
    project = solver.fixed_point_projection()
    assert project is not None and torch.equal(project(record.x), record.x)
    assert PnPDRS(DRSParams(), find_problem("well"), DENOISERS["linear"]).fixed_point_projection() is None


def test_relaxation_spellings_agree_to_rounding():
    z, t = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    torch.testing.assert_close(relax(z, t, 0.7), relax(z, t, 0.7, convex=True), rtol=1e-15, atol=1e-15)
    assert torch.equal(relax(z, t, 0.0, convex=True), z)


def test_the_registry_names_every_method_and_alias():
    assert set(METHODS) == set(METHOD_NAMES) and METHODS["pnp-fbs"] is PnPFBS and METHODS["red"] is RED
    assert all(canonical_method(alias) in METHODS for alias in ALIASES)
    assert canonical_method("pnp-admm") == "pnp-drs"
    with pytest.raises(ValueError, match="unknown method"):
        canonical_method("ista")


def test_parameters_keep_their_names_and_order():
    assert parameter_names("pnp-fbs") == ("step", "strength", "relaxation", "lower", "upper")
    assert parameter_names("pnp-admm") == ("step", "strength", "relaxation")
    assert parameter_names("red") == ("weight", "step", "lower", "upper")
    assert default_parameters("pnp-fbs", 4.0) == {"step": 0.25, "strength": 0.5, "relaxation": 1.0}
    assert default_parameters("red", 1.0, {"weight": 0.5}) == {"weight": 0.5, "step": 1.8 / 2.0}
    assert FBSParams(step=0.5).as_dict() == {"step": 0.5, "strength": 0.5, "relaxation": 1.0}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FBSParams(step=float("nan")), "finite"),
        (lambda: REDParams(weight=1.0, step=float("inf")), "finite"),
        (lambda: FBSParams(step=1.0, lower=0.5, upper=0.5), "lower < upper"),
        (lambda: build_params("pnp-drs", {"step": 1.0, "lower": 0.0}), "box bounds"),
    ],
)
def test_parameters_check_their_fields(make, message):
    with pytest.raises(ValueError, match=message):
        make()
    with pytest.raises(Exception, match="frozen|cannot assign"):
        FBSParams(step=1.0).step = 2.0  # type: ignore[misc]


def test_the_string_interface_agrees_with_the_classes():
    L = 2.5
    given = {"step": 0.5, "strength": 0.3, "relaxation": 1.2, "lower": 0.0}
    typed = FBSParams(**given)
    assert conditions("fbs", given, L, 1.0) == typed.hypotheses(L, 1.0)
    assert averagedness("pnp-fbs", given, L) == typed.averagedness(L)
    assert fbs_fast_relaxation(0.5, 0.3, L, projected=True) == pytest.approx(0.95 / typed.averagedness(L) * 1.2)
    assert not conditions("pnp-fbs", {**given, "step": 1.0}, L, 1.0).holds  # step > 2/L
    assert conditions("red", {"weight": 1.0, "step": 0.5}, L, 1.2).violations[0].endswith("1.2 > 1")
    project = fixed_point_projection("red", {"upper": 1.0})
    assert project is not None and float(project(torch.tensor([2.0]))) == 1.0
    data = find_problem("well")
    step, estimate, initial = make_step("pnp-drs", {"step": 1.0, "strength": 0.5, "relaxation": 0.5},
                                        DENOISERS["linear"], data.gradient, data.prox)
    z = torch.ones(2, 2, dtype=F64)
    solver = PnPDRS(DRSParams(), data, DENOISERS["linear"])
    assert torch.equal(step(z), solver.step(z)) and torch.equal(estimate(z), solver.estimate(z))
    assert initial(z) is z
