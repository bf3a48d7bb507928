"""The iteration loop on its own: per-image stopping and freezing, evaluation counts, history, errors."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from lipden.optim.anderson import AndersonConfig
from lipden.optim.base import SolverError
from lipden.optim.runner import run
from tests.optim.toy import F64, build


def test_each_image_stops_on_its_own_and_is_frozen():
    solver = build("pnp-fbs", "well", "linear")
    z0 = torch.tensor([[0.0, 0.0], [4.0, -3.0]], dtype=F64)
    record = run(solver, z0, max_iter=5000, tol=1e-10)
    assert record.converged and record.iterations == int(record.iterations_per_image.max())
    first, second = (int(k) for k in record.iterations_per_image)
    assert first != second
    stopped = min(first, second)
    image = 0 if first < second else 1
    assert torch.isnan(record.residuals[stopped:, image]).all()
    assert not torch.isnan(record.residuals[:stopped, image]).any()
    assert record.evaluations_per_image.tolist() == [first, second]  # the plain loop: one T per pass
    assert bool(record.relative_residuals[stopped - 1, image] <= 1e-10)
    alone = run(solver.restrict(torch.tensor([image])), z0[image:image + 1], max_iter=5000, tol=1e-10)
    assert alone.iterations == stopped
    torch.testing.assert_close(alone.x[0], record.x[image], rtol=0, atol=1e-15)


@pytest.mark.parametrize("accelerate", [0, 3])
def test_splitting_the_batch_gives_the_same_solve(accelerate):
    solver = build("red", "ill", "clamp")
    z0 = torch.tensor([[0.0, 0.0], [4.0, -3.0]], dtype=F64)
    anderson = AndersonConfig(memory=accelerate) if accelerate else None
    split = run(solver, z0, max_iter=5000, tol=1e-10, anderson=anderson, split_batches=True)
    whole = run(solver, z0, max_iter=5000, tol=1e-10, anderson=anderson, split_batches=False)
    assert split.converged and whole.converged
    assert torch.equal(split.iterations_per_image, whole.iterations_per_image)
    assert torch.equal(split.evaluations_per_image, whole.evaluations_per_image)
    torch.testing.assert_close(split.x, whole.x, rtol=0, atol=1e-14)


def test_the_history_holds_a_psnr_per_iteration_and_the_loop_time():
    solver = build("pnp-drs", "well", "linear")
    truth = torch.full((2, 2), 0.5, dtype=F64)
    record = run(solver, torch.zeros(2, 2, dtype=F64), max_iter=7, tol=1e-15, x_true=truth)
    assert not record.converged and record.iterations == 7
    assert record.psnr is not None and record.psnr.shape == record.residuals.shape == (7, 2)
    assert record.iterations_per_image.tolist() == [7, 7] and record.seconds > 0


@dataclass(frozen=True)
class _Affine:
    """T z = scale z + shift, a stand-in that follows the Method protocol."""

    name: ClassVar[str] = "affine"
    scale: float
    shift: float = 1.0

    def step(self, z):
        return self.scale * z + self.shift

    def estimate(self, z):
        return z

    def fixed_point_projection(self):
        return None

    def restrict(self, index):
        return self


def test_divergence_and_nan_stop_with_a_solver_error():
    with pytest.raises(SolverError, match="affine: diverging"):
        run(_Affine(2.0), torch.ones(1, 3, dtype=F64), max_iter=100)
    with pytest.raises(SolverError, match="NaN/inf after 1 iterations"):
        run(_Affine(float("nan")), torch.ones(1, 3, dtype=F64), max_iter=100)


def test_an_increasing_residual_is_recorded():
    """A map that is not averaged (here a reflection, T z = -z + 1) keeps its residual constant,
    while an expansion by 1.5 raises it: ``monotone`` says which."""
    reflection = run(_Affine(-1.0), torch.zeros(1, 2, dtype=F64), max_iter=5)
    assert reflection.monotone and not reflection.converged and reflection.max_residual_increase == 0.0
    expansion = run(_Affine(1.5), torch.zeros(1, 2, dtype=F64), max_iter=5)
    assert not expansion.monotone and expansion.max_residual_increase == pytest.approx(0.5)
