"""One optimizer step of denoiser training, run eagerly or replayed as a CUDA graph.

The step (:func:`training_step`) never reads a value back from the device, so on a GPU the
host queues it without waiting; :class:`GraphedTrainingStep` records it once as a CUDA graph
and then launches it as one unit, so the thousands of small kernels of a step no longer cost
host time each.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from lipden.models.denoiser import LipschitzDenoiser
from lipden.nn.splines import LinearSpline
from lipden.train.config import TrainConfig


def batch_to_device(clean: Tensor, noisy: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Move a training batch to ``device``: on a GPU as one asynchronous copy from pinned
    memory (a copy from pageable memory first waits for the GPU to drain its queue)."""
    if device.type != "cuda":
        return clean.to(device), noisy.to(device)
    pair = torch.stack([clean, noisy]).pin_memory().to(device, non_blocking=True)
    return pair[0], pair[1]


@contextmanager
def cudnn_autotuning(enabled: bool) -> Iterator[None]:
    """Within this block cuDNN benchmarks its convolution algorithms for each new shape and
    keeps the fastest (worth it for the fixed patch shape of training); restored after."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def training_step(
    net: nn.Module, model: LipschitzDenoiser, optimizer: torch.optim.Optimizer, clean: Tensor, noisy: Tensor,
    tv2_weight: float, mixed_precision: bool,
) -> Tensor:
    """One Adam step on ``sum ||net(noisy) - clean||^2 + tv2_weight * TV2``; returns the loss
    (detached, on the device: reading it is left to the caller, since it waits for the device).

    ``net`` is ``model`` or its DistributedDataParallel wrapper; clean and noisy are
    (B, 1, P, P) on the model's device. With ``mixed_precision`` the convolutions run in
    bfloat16 (autocast); weights, splines and loss stay float32. Nothing here reads a value
    back from the device, so a GPU step is queued without waiting.
    """
    # no autocast cache: it would hold casts made while a CUDA graph is recorded
    precision = (torch.autocast(device_type=clean.device.type, dtype=torch.bfloat16, cache_enabled=False)
                 if mixed_precision else nullcontext())
    with precision:
        output = net(noisy)
    loss = (output.float() - clean).pow(2).sum() + tv2_weight * model.regularization()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class GraphedTrainingStep:
    """:func:`training_step` recorded once as a CUDA graph and replayed at every call.

    The first ``warmup`` calls run eagerly on a side stream (as graph capture requires: the
    optimizer state, cuDNN's algorithm choice and library handles get created there); the
    next call records the step and runs it; every later call copies its batch into the
    recorded input tensors and replays the graph: one launch for the whole step. Each call
    returns that step's loss (a fresh device tensor, not read back).

    Needs one process on a CUDA device, the same batch shape at every call, and an optimizer
    from ``make_optimizer`` with ``capturable=True`` (fused Adam whose learning rates are
    device tensors: change them in place with ``lipden.train.step.set_learning_rate``; replacing
    them, e.g. by ``optimizer.load_state_dict``, after recording is refused). A replay
    updates the parameters behind PyTorch's back, so each call then bumps their version
    counters, which the layers' weight and certificate caches are keyed on.
    """

    def __init__(self, model: LipschitzDenoiser, optimizer: torch.optim.Optimizer, tv2_weight: float,
                 mixed_precision: bool, warmup: int = 3) -> None:
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise ValueError("a CUDA graph step needs an optimizer made with capturable=True")
        self.model, self.optimizer = model, optimizer
        self.tv2_weight, self.mixed_precision, self.warmup = tv2_weight, mixed_precision, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side_stream: torch.cuda.Stream | None = None
        self.recorded_rates: list = []
        self.inputs: tuple[Tensor, Tensor] | None = None
        self.loss: Tensor | None = None

    def _eager(self, clean: Tensor, noisy: Tensor) -> Tensor:
        return training_step(self.model, self.model, self.optimizer, clean, noisy, self.tv2_weight,
                             self.mixed_precision)

    def __call__(self, clean: Tensor, noisy: Tensor) -> Tensor:
        self.calls += 1
        current = torch.cuda.current_stream(clean.device)
        if self.graph is None and self.calls <= self.warmup:
            if self.side_stream is None:
                self.side_stream = torch.cuda.Stream(clean.device)
            self.side_stream.wait_stream(current)
            with torch.cuda.stream(self.side_stream):
                loss = self._eager(clean, noisy)
            current.wait_stream(self.side_stream)
            loss.record_stream(current)
            return loss
        if self.graph is None:
            self.inputs = (clean.clone(), noisy.clone())
            self.optimizer.zero_grad(set_to_none=True)  # gradients get allocated inside the graph
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._eager(*self.inputs)
            self.recorded_rates = [group["lr"] for group in self.optimizer.param_groups]
        else:
            assert self.inputs is not None
            if clean.shape != self.inputs[0].shape:
                raise ValueError(f"a CUDA graph step replays batches of shape {tuple(self.inputs[0].shape)}, "
                                 f"got {tuple(clean.shape)}")
            rates = [group["lr"] for group in self.optimizer.param_groups]
            if any(now is not then for now, then in zip(rates, self.recorded_rates, strict=True)):
                raise RuntimeError("the optimizer's learning-rate tensors were replaced after the CUDA graph was "
                                   "recorded (change them in place with set_learning_rate)")
            self.inputs[0].copy_(clean)
            self.inputs[1].copy_(noisy)
        self.graph.replay()  # recording does not run the step: the first replay does
        for tensor in (*self.model.parameters(), *self.model.buffers()):  # a replay bypasses version counters
            increment_version(tensor)
        assert self.loss is not None
        return self.loss.clone()


def make_optimizer(model: LipschitzDenoiser, config: TrainConfig, capturable: bool = False) -> torch.optim.Adam:
    """Adam with one learning rate for the convolutions (and any other parameter), one for the
    spline coefficients and one for the spline scalings.

    On a GPU it is the fused one-kernel Adam. ``capturable=True`` (GPU only) makes it
    recordable in a CUDA graph: its learning rates are then device tensors, to be changed in
    place (:func:`set_learning_rate`).
    """
    coefficients: list[nn.Parameter] = []
    scalings: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, LinearSpline):
            coefficients.append(module.coefficients)
            if module.scaling.requires_grad:
                scalings.append(module.scaling)
    special = {id(p) for p in coefficients + scalings}
    others = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    on_gpu = all(p.is_cuda for p in model.parameters())
    if capturable and not on_gpu:
        raise ValueError("a capturable optimizer (CUDA graph training) needs the model on a CUDA device")
    device = next(model.parameters()).device

    def rate(value: float | None) -> float | Tensor:
        assert value is not None  # resolved configs set every rate
        return torch.tensor(value, dtype=torch.float32, device=device) if capturable else value

    groups = [{"params": others, "lr": rate(config.lr_conv), "name": "conv"}]
    if coefficients:
        groups.append({"params": coefficients, "lr": rate(config.lr_spline), "name": "spline_coefficients"})
    if scalings:
        groups.append({"params": scalings, "lr": rate(config.lr_scaling), "name": "spline_scaling"})
    # on a GPU, the fused implementation updates all parameters in one kernel launch
    return torch.optim.Adam(groups, fused=True if on_gpu else None, capturable=capturable)


def set_learning_rate(group: dict, value: float) -> None:
    """Set a parameter group's learning rate (in place when it is a device tensor)."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value
