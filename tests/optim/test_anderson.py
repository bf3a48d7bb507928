"""Safeguarded Anderson acceleration: same fixed points, non-increasing residuals, fewer evaluations."""

import pytest
import torch

import problems as P
from lipden.optim.anderson import AndersonAccelerator, AndersonConfig
from lipden.optim.fbs import PnPFBS
from lipden.optim.reconstruct import reconstruct


def _linear_averaged_map(dimension: int, seed: int):
    """T z = M z + b with M symmetric, eigenvalues in [0, 0.999]: averaged, slow to iterate."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.0, 0.999, dimension, dtype=torch.float64)
    m = q @ torch.diag(eigenvalues) @ q.T
    b = torch.randn(dimension, generator=generator, dtype=torch.float64)
    fixed_point = torch.linalg.solve(torch.eye(dimension, dtype=torch.float64) - m, b)
    return (lambda z: z @ m.T + b), fixed_point


def test_anderson_solves_a_linear_fixed_point_problem_in_few_steps():
    # Anderson with memory >= dimension is a Krylov method on a linear map: it reaches the fixed
    # point in about dimension + 1 steps, where the plain iteration contracts by 0.999 per step.
    dimension = 5
    T, fixed_point = _linear_averaged_map(dimension, seed=1)
    # start at the scale of the fixed point (the safeguard bounds steps relative to ||T z_0||)
    z = fixed_point[None] + torch.randn(1, dimension, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 300
    accelerator = AndersonAccelerator(AndersonConfig(memory=dimension))
    tz = T(z)
    for _ in range(3 * dimension):
        proposal = accelerator.propose(z, tz)
        if proposal is None:
            z, tz = tz, T(tz)
            continue
        t_proposal = T(proposal)
        if bool(accelerator.accept(z, tz, proposal, t_proposal, torch.ones(1, dtype=torch.bool))[0]):
            z, tz = proposal, t_proposal
        else:
            z, tz = tz, T(tz)
    assert float((z[0] - fixed_point).norm() / fixed_point.norm()) < 1e-8
    assert accelerator.accepted is not None and int(accelerator.accepted[0]) >= dimension - 1
    plain = fixed_point + torch.randn(dimension, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 300
    for _ in range(3 * dimension):
        plain = T(plain[None])[0]
    assert float((plain - fixed_point).norm() / fixed_point.norm()) > 1e-2


def test_safeguard_rejects_a_proposal_that_raises_the_residual():
    T, _ = _linear_averaged_map(4, seed=2)
    accelerator = AndersonAccelerator(AndersonConfig(memory=2))
    z0 = torch.zeros(2, 4, dtype=torch.float64)
    accelerator.propose(z0, T(z0))
    z1 = T(z0)
    proposal = accelerator.propose(z1, T(z1))
    assert proposal is not None
    bad = proposal + 1e3  # residual of T at bad is far larger than at z1
    good = proposal
    stacked = torch.stack([good[0], bad[1]])
    accepted = accelerator.accept(z1, T(z1), stacked, T(stacked), torch.ones(2, dtype=torch.bool))
    assert accepted.tolist() == [True, False]
    assert accelerator.accepted is not None and accelerator.accepted.tolist() == [1, 0]
    # an image outside ``which`` is never accepted nor counted
    accepted = accelerator.accept(z1, T(z1), stacked, T(stacked), torch.tensor([False, False]))
    assert accepted.tolist() == [False, False] and accelerator.accepted.tolist() == [1, 0]


def _fbs_map(x, y, physics, denoiser, step, strength, relaxation):
    """PnP-FBS map written out here, independently of ``lipden.optim.fbs.PnPFBS``."""
    v = x - step * physics.A_adjoint(physics.A(x) - y)
    d = ((1 - strength) * v + strength * denoiser(v)).clamp(0, 1)
    return x + relaxation * (d - x)


@pytest.mark.parametrize("memory", [1, 3, 5])
def test_accelerated_fbs_reaches_a_fixed_point_with_non_increasing_residuals(memory, mri_case, small_denoiser):
    _, x, y, physics = mri_case
    params = dict(step=1.0, strength=0.03, relaxation=1.4, lower=0.0, upper=1.0)  # slow: 124 plain steps
    plain = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=4000, tol=1e-5, **params)
    fast = reconstruct(y, physics, small_denoiser, "pnp-fbs", max_iter=4000, tol=1e-5, accelerate=memory, **params)
    assert plain.converged and fast.converged and fast.guaranteed and fast.accelerated == memory
    # the returned point is a fixed point of the PnP-FBS map to the tolerance (checked by hand)
    with torch.no_grad():
        z = fast.x  # the box-projected iterate; the unprojected one differs only outside [0, 1]
        t = _fbs_map(z, y, physics, small_denoiser, **{k: params[k] for k in ("step", "strength", "relaxation")})
    assert float((t - z).norm() / t.norm()) < 1e-4
    r = fast.residuals[:, 0]
    assert bool((r[1:] <= r[:-1] * (1 + 1e-6) + 2e-6 * float(fast.x.norm())).all()) and fast.monotone
    assert int(fast.evaluations_per_image[0]) < 0.6 * int(plain.evaluations_per_image[0])
    assert int(plain.evaluations_per_image[0]) == plain.iterations
    # both stop within tol of the fixed-point set; their estimates agree to a few 1e-3
    assert float((fast.x - plain.x).norm() / plain.x.norm()) < 5e-3


def test_accelerated_batch_matches_single_image_solves(mri_case, small_denoiser):
    _, x, _, physics = mri_case
    problem = P.MRIProblem("random", 4)
    batch = torch.cat([x, x.flip(-1).contiguous()])
    y = torch.cat([problem.measure(batch[i : i + 1], seed=i) for i in range(2)])
    params = dict(step=1.0, strength=0.2, accelerate=3, max_iter=2000, tol=1e-5)
    together = reconstruct(y, problem.physics(batch.shape), small_denoiser, "pnp-fbs", **params)
    for i in range(2):
        alone = reconstruct(y[i : i + 1], problem.physics(batch[i : i + 1].shape), small_denoiser, "pnp-fbs", **params)
        assert int(alone.iterations_per_image[0]) == int(together.iterations_per_image[i])
        assert torch.allclose(alone.x[0], together.x[i], atol=1e-5)


@pytest.mark.parametrize("memory", [-1, 1.5, True, "3"])
def test_bad_anderson_memory_is_refused(memory, mri_case, small_denoiser):
    _, _, y, physics = mri_case
    with pytest.raises(ValueError, match="Anderson memory"):
        reconstruct(y, physics, small_denoiser, "pnp-fbs", accelerate=memory)


def _proposals(accelerator: AndersonAccelerator, T, steps: int = 6) -> list[torch.Tensor]:
    """The proposals made along ``steps`` plain iterations of T from 0 (2 images of size 6)."""
    z = torch.zeros(2, 6, dtype=torch.float64)
    proposals = []
    for _ in range(steps):
        proposal = accelerator.propose(z, T(z))
        if proposal is not None:
            proposals.append(proposal)
        z = T(z)
    return proposals


def test_proposals_are_projected_onto_the_given_set():
    T, _ = _linear_averaged_map(6, seed=4)
    proposals = _proposals(AndersonAccelerator(AndersonConfig(memory=3), project=lambda v: v.clamp(-0.5, 0.5)), T)
    assert proposals and all(float(p.abs().max()) <= 0.5 for p in proposals)
    # the unprojected extrapolation does leave that box here, so the projection is exercised
    assert max(float(p.abs().max()) for p in _proposals(AndersonAccelerator(AndersonConfig(memory=3)), T)) > 0.5


def test_fixed_point_projection_is_the_box_of_box_constrained_methods():
    from lipden.optim.base import fixed_point_projection

    v = torch.tensor([-1.0, 0.5, 2.0])
    for method in ("pnp-fbs", "red"):
        project = fixed_point_projection(method, {"lower": 0.0, "upper": 1.0})
        assert project is not None and project(v).tolist() == [0.0, 0.5, 1.0]
        only_lower = fixed_point_projection(method, {"lower": 0.0})
        assert only_lower is not None and only_lower(v).tolist() == [0.0, 0.5, 2.0]
        assert fixed_point_projection(method, {}) is None
    assert fixed_point_projection("pnp-drs", {"lower": 0.0}) is None


def test_projecting_proposals_onto_the_box_saves_evaluations(mri_case, small_denoiser, monkeypatch):
    # Box-constrained, weak prior (strength 0.01): the MRI background sits at the bound 0 and an
    # unprojected extrapolation pushes it below, failing the safeguard (measured: 48 evaluations
    # projected, 164 unprojected, 268 plain).
    _, x, y, physics = mri_case
    params = dict(step=1.0, strength=0.01, relaxation=1.4, lower=0.0, upper=1.0, max_iter=4000, tol=1e-5)
    plain = reconstruct(y, physics, small_denoiser, "pnp-fbs", **params)
    projected = reconstruct(y, physics, small_denoiser, "pnp-fbs", accelerate=3, **params)
    monkeypatch.setattr(PnPFBS, "fixed_point_projection", lambda self: None)
    unprojected = reconstruct(y, physics, small_denoiser, "pnp-fbs", accelerate=3, **params)
    assert plain.converged and projected.converged and unprojected.converged and projected.monotone
    evaluations = [int(r.evaluations_per_image[0]) for r in (projected, unprojected, plain)]
    assert evaluations[0] < 0.5 * evaluations[1] and evaluations[0] < 0.3 * evaluations[2], evaluations
    assert float((projected.x - plain.x).norm() / plain.x.norm()) < 5e-3


def test_accelerated_drs_at_a_large_step_keeps_its_residual_non_increasing():
    """Regression: PnP-DRS on MRI x8 at the step 894 the tuner picks, with Anderson memory 3.

    Near convergence the plain steps compare two iterates ~1e-4 apart; a data prox that loses
    their difference to round-off (measured before the fix: a 10% residual rise, not converged
    in 400 passes on this 48x48 phantom) breaks the averaged-map guarantee.
    """
    from lipden.models.pretrained import load_denoiser

    problem = P.problem_from_name("mri-random-x8-cf0.04-noise0.002")
    x = P.default_image("mri", 48)
    y, physics = problem.measure(x, seed=0), problem.physics(x.shape)
    result = reconstruct(y, physics, load_denoiser("spline-sigma15"), "pnp-drs", max_iter=400, tol=1e-5,
                         accelerate=3, step=894.4, strength=0.5, relaxation=0.5)
    assert result.converged and result.monotone, result.max_residual_increase


def test_a_rejected_proposal_falls_back_to_the_plain_step():
    """With a step budget no proposal can meet (test 2), every pass is exactly z_{k+1} = T z_k."""
    T, _ = _linear_averaged_map(4, seed=5)
    accelerator = AndersonAccelerator(AndersonConfig(memory=2, budget=1e-12))
    tried = []

    def apply_step(v, which):
        tried.append(bool(which.any()))
        return torch.where(which[:, None], T(v), v)

    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t_z = T(z)
    running = torch.ones(2, dtype=torch.bool)
    for _ in range(6):
        z_next, t_next = accelerator.advance(z, t_z, running, 1e-14, apply_step)
        assert torch.equal(z_next, t_z) and torch.equal(t_next, T(z_next))
        z, t_z = z_next, t_next
    assert accelerator.accepted is not None and accelerator.accepted.tolist() == [0, 0]
    assert len(tried) > 6  # proposals were evaluated (and rejected), not only plain steps


def test_a_stopped_image_is_neither_moved_nor_evaluated():
    T, _ = _linear_averaged_map(3, seed=7)
    accelerator = AndersonAccelerator(AndersonConfig(memory=2))
    evaluated = torch.zeros(2, dtype=torch.long)

    def apply_step(v, which):
        evaluated.add_(which.long())
        return torch.where(which[:, None], T(v), v)

    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t_z = T(z)
    running = torch.tensor([True, False])
    for _ in range(4):
        z_next, t_next = accelerator.advance(z, t_z, running, 1e-14, apply_step)
        assert torch.equal(z_next[1], z[1])
        z, t_z = z_next, t_next
    assert int(evaluated[1]) == 0 and int(evaluated[0]) >= 4


@pytest.mark.parametrize("settings", [{"memory": 0}, {"memory": 2.0}, {"memory": True}, {"memory": 2, "budget": 0.0},
                                      {"memory": 2, "safeguard_decrease": 1.0}, {"memory": 2, "max_backoff": 0}])
def test_anderson_settings_are_checked(settings):
    with pytest.raises(ValueError):
        AndersonConfig(**settings)
