"""The CUDA path gives the CPU's results: splines, the shipped denoiser, solvers, tuning, and the
GPU-only training machinery (fused Adam without host syncs, CUDA graphs).

Properties that hold on any one device (adjointness, singular values, the certificate after
training) are ordinary tests over the ``device`` fixture (tests/conftest.py), which adds CUDA
where there is a GPU. This module holds the comparisons against the CPU; skipped without a
GPU (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
Convolutions are compared with TF32 off (float32 accuracy); with TF32 on (PyTorch's default
for cuDNN convolutions) the outputs move by about 1e-3, which is checked separately.
"""

import numpy as np
import pytest
import torch

import problems as P
from lipden import DenoiserConfig, LinearSpline, LipschitzDenoiser, OrthoConv2d, load_denoiser
from lipden.certify.bounds import lipschitz_lower_bound
from lipden.models.checkpoint import load_denoiser_file
from lipden.nn.splines import get_spline_backend, set_spline_backend
from lipden.optim.reconstruct import reconstruct
from lipden.train.loop import TrainConfig, train
from tests.helpers import write_smooth_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _float32_convolutions():
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


def _spline_outputs_and_gradients(spline: LinearSpline, x: torch.Tensor, device: str, dtype: torch.dtype):
    module = spline.to(device=device, dtype=dtype)
    module.zero_grad()
    xd = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
    y = module(xd)
    (y * torch.linspace(-1, 1, y.numel(), device=device, dtype=dtype).view_as(y)).sum().backward()
    # clones: converting the module next would also convert these gradients in place
    return [t.detach().to("cpu", torch.float64).clone() for t in (y, xd.grad, module.coefficients.grad)]


@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("shape", [(2, 4, 9, 7), (1, 4, 64, 64)])
def test_spline_forward_and_backward_on_cuda_match_a_float64_reference(backend, shape):
    """Errors relative to each quantity's largest entry: the coefficient gradients are sums
    (bincount; atomics on CUDA) of up to thousands of terms, so only a normwise float32
    bound is meaningful; the CPU's float32 result is held to the same bound."""
    previous = get_spline_backend()
    set_spline_backend(backend)
    try:
        spline = LinearSpline(4, init="relu")
        with torch.no_grad():
            spline.coefficients.add_(0.3 * torch.randn_like(spline.coefficients))
        x = 3 * torch.randn(shape)
        reference = _spline_outputs_and_gradients(spline, x, "cpu", torch.float64)
        for device in ("cpu", "cuda"):
            got = _spline_outputs_and_gradients(spline, x, device, torch.float32)
            for name, a, b, bound in zip(("output", "input gradient", "coefficient gradient"), got, reference,
                                         (1e-5, 1e-5, 2e-5), strict=True):
                error = float((a - b).abs().max()) / float(b.abs().max())
                assert error <= bound, f"{device} {name}: relative error {error:.2e}"
    finally:
        set_spline_backend(previous)


def test_shipped_denoiser_gives_the_same_image_on_cuda_and_stays_nonexpansive():
    model_cpu = load_denoiser("spline-sigma15")
    model_gpu = load_denoiser("spline-sigma15", device="cuda")
    x = P.default_image("natural", 96)
    noisy = (x + 15 / 255 * torch.randn(x.shape)).clamp(0, 1)
    with torch.no_grad():
        expected = model_cpu(noisy)
        got = model_gpu(noisy.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    lower = lipschitz_lower_bound(model_gpu, (1, 1, 24, 24))
    assert lower <= 1 + 1e-4
    torch.backends.cudnn.allow_tf32 = True
    with torch.no_grad():
        tf32 = model_gpu(noisy.cuda()).cpu()
    assert float((tf32 - expected).abs().max()) < 1e-2


@pytest.mark.parametrize("kind", ["deblur", "mri"])
def test_pnp_fbs_on_cuda_matches_the_cpu(kind):
    problem = P.DeblurProblem("gaussian", blur_sigma=1.6, noise=0.01) if kind == "deblur" else P.MRIProblem("random", 4)
    x = P.default_image("natural" if kind == "deblur" else "mri", 48)
    y = problem.measure(x, seed=0)
    denoiser = LipschitzDenoiser(DenoiserConfig(channels=8, depth=4, sigma=None)).eval()
    params = {"step": 1.5, "strength": 0.5}
    torch.backends.cudnn.allow_tf32 = True  # the solver must switch it off itself (restored by the fixture)
    results = []
    for device in ("cpu", "cuda"):
        physics = problem.physics(x.shape, device)
        results.append(reconstruct(y.to(device), physics, denoiser.to(device), "pnp-fbs", max_iter=400, tol=1e-5, **params))
    cpu, gpu = results
    assert gpu.max_residual_increase <= 1e-4, "TF32 must be off during a solve"
    assert gpu.guaranteed and gpu.converged and gpu.monotone and gpu.x.device.type == "cuda"
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=0, atol=2e-4)
    assert abs(int(gpu.iterations) - int(cpu.iterations)) <= 5
    assert torch.backends.cudnn.allow_tf32  # restored after the solve


def test_tuning_on_cuda_matches_the_cpu():
    from lipden.optim.tuning import evaluate_parameters

    problem = P.MRIProblem("random", 4)
    images = [P.default_image("mri", 48)]
    params = {"model": "spline-sigma15", "step": 1.0, "strength": 0.15}
    scores = [evaluate_parameters(problem, images, "pnp-fbs", params, max_iter=50, device=d) for d in ("cpu", "cuda")]
    assert abs(scores[0] - scores[1]) < 0.02


def test_a_training_step_on_cuda_never_waits_for_the_device(tmp_path):
    """Host-device synchronisations stall a GPU step (the host cannot queue the next kernels
    while it waits); the data transfer, forward, loss, backward and fused Adam step must
    have none. The loss is read only every LOSS_CHECK_EVERY steps by the trainer."""
    from lipden.train.step import batch_to_device, make_optimizer, training_step

    config = TrainConfig(output=str(tmp_path), preset="paper").resolved()
    model = LipschitzDenoiser(config.model_config()).to("cuda").train()
    optimizer = make_optimizer(model, config)
    assert optimizer.defaults["fused"] is True
    clean = torch.rand(16, 1, 40, 40)
    noisy = clean + 0.06 * torch.randn(clean.shape)
    device = torch.device("cuda")
    losses = [training_step(model, model, optimizer, *batch_to_device(clean, noisy, device), 0.0, True)]  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            losses.append(training_step(model, model, optimizer, *batch_to_device(clean, noisy, device), 1e-6, True))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    values = torch.stack(losses).cpu()
    assert torch.isfinite(values).all() and values[-1] < values[0]


def test_training_benchmark_measures_the_gpu_kernels():
    from benchmarks.training import measure

    row = measure("cpu", 16, "ortho", torch.device("cuda"), steps=3, repeats=1)
    assert row["seconds_per_step"] > 0 and row["operator_calls"] > 0
    assert 0 < row["kernel_seconds_per_step"] < 2 * row["seconds_per_step"]  # one stream: kernels fit in the wall time


def test_a_cuda_graph_step_trains_like_the_eager_step_and_follows_learning_rate_changes():
    from lipden.train.step import (
        GraphedTrainingStep,
        make_optimizer,
        set_learning_rate,
        training_step,
    )

    config = TrainConfig(output="unused", preset="cpu").resolved()

    def model_and_optimizer():
        torch.manual_seed(0)
        model = LipschitzDenoiser(config.model_config()).to("cuda").train()
        return model, make_optimizer(model, config, capturable=True)  # the same Adam arithmetic for both

    eager_model, eager_optimizer = model_and_optimizer()
    graph_model, graph_optimizer = model_and_optimizer()
    initial = [p.detach().clone() for p in graph_model.parameters()]
    graphed = GraphedTrainingStep(graph_model, graph_optimizer, config.tv2_weight, mixed_precision=False, warmup=2)
    generator = torch.Generator().manual_seed(0)
    for step in range(8):
        clean = torch.rand(16, 1, 40, 40, generator=generator)
        noisy = (clean + 0.06 * torch.randn(clean.shape, generator=generator)).cuda()
        clean = clean.cuda()
        if step == 5:  # after the graph was recorded (step 2): the new rates must be used
            for optimizer in (eager_optimizer, graph_optimizer):
                for group in optimizer.param_groups:
                    set_learning_rate(group, 0.1 * float(group["lr"]))
        eager_loss = training_step(eager_model, eager_model, eager_optimizer, clean, noisy, config.tv2_weight, False)
        graph_loss = graphed(clean, noisy)
        assert float(graph_loss) == pytest.approx(float(eager_loss), rel=1e-4), step
    assert graphed.graph is not None
    layer = next(m for m in graph_model.modules() if isinstance(m, OrthoConv2d))
    key = layer._state_key()
    graphed(clean, noisy)  # a replay must invalidate the caches keyed on the parameters' versions
    assert layer._state_key() != key
    training_step(eager_model, eager_model, eager_optimizer, clean, noisy, config.tv2_weight, False)
    for eager, graph in zip(eager_model.parameters(), graph_model.parameters(), strict=True):
        torch.testing.assert_close(graph, eager, rtol=0, atol=1e-4)
    assert max(float((p - q).abs().max()) for p, q in zip(graph_model.parameters(), initial, strict=True)) > 1e-3


def test_cuda_graph_training_run_keeps_the_certificate(tmp_path):
    write_smooth_images(tmp_path, {"train": 3, "val": 1})
    config = TrainConfig(output=str(tmp_path / "run"), train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"),
                         channels=8, depth=4, batch_size=8, patch_size=16, steps=30, validate_every=10, device="cuda",
                         cuda_graph=True)
    summary = train(config, progress=False)
    assert summary["step"] == 30 and np.isfinite(summary["best_psnr"])
    model, _ = load_denoiser_file(tmp_path / "run" / "best.safetensors")
    assert model.lipschitz_certificate((1, 1, 16, 16)) <= 1 + 1e-4
    resumed = train(TrainConfig(**{**config.__dict__, "steps": 40}), progress=False)  # resume, graph recorded anew
    assert resumed["step"] == 40
