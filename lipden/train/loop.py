"""Training of 1-Lipschitz denoisers on image patches (CPU, one GPU, or several via torchrun).

Loss: summed squared error over the batch + ``tv2_weight`` x the TV2 of all splines.
Adam with separate learning rates for the convolutions (and any other parameter), the spline
coefficients and the spline scalings. Fresh Gaussian noise every batch. Resumable: the
training state (model, optimizer, random generators, step) is a safetensors file written
atomically after every validation, next to the best model so far and a CSV log.
Under ``torchrun --nproc_per_node=N`` the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU); rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from lipden.io import default_data_root, list_images, load_grayscale
from lipden.metrics import psnr
from lipden.models.checkpoint import load_tensors, save_denoiser, save_tensors_atomic
from lipden.models.denoiser import PRESETS, DenoiserConfig, LipschitzDenoiser
from lipden.nn.precision import default_mixed_precision
from lipden.nn.splines import LinearSpline, set_spline_backend
from lipden.train.data import PatchSampler
from lipden.train.step import GraphedTrainingStep, batch_to_device, cudnn_autotuning, training_step

DEFAULT_DATA = default_data_root()  # $LIPDEN_DATA, else ../shared/data

# Paper (GPU): batch 128, lr 4e-5 / 1e-6 / 1e-5. CPU: a quarter of the batch and ~20x the
# learning rates, which reach good quality within an hour on 2 cores.
TRAINING_PRESETS = {
    "paper": {"batch_size": 128, "lr_conv": 4e-5, "lr_spline": 1e-6, "lr_scaling": 1e-5, "steps": 100_000},
    "cpu": {"batch_size": 32, "lr_conv": 8e-4, "lr_spline": 2e-5, "lr_scaling": 2e-4, "steps": 4_000},
}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoints)."""

    output: str
    sigma: float = 15.0  # on the 0-255 scale
    preset: str = "cpu"
    activation: str = "spline"
    conv: str = "ortho"
    train_dir: str = str(DEFAULT_DATA / "train400")
    val_dir: str | None = str(DEFAULT_DATA / "set12")
    batch_size: int | None = None
    patch_size: int = 40
    steps: int | None = None
    validate_every: int = 250
    checkpoint_minutes: float = 10.0  # the training state is also saved when this much time passed since the last save
    lr_conv: float | None = None
    lr_spline: float | None = None
    lr_scaling: float | None = None
    tv2_weight: float = 1e-6
    lr_scale: float = 1.0  # multiplies the preset's learning rates (not explicitly given ones)
    lr_decay_at: float = 0.75  # fraction of the steps (or of max_minutes) after which all learning rates ...
    lr_decay_factor: float = 0.1  # ... are multiplied by this factor
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None
    compile_spline: bool = False
    mixed_precision: bool | None = None  # bf16 autocast of the convolutions; None: on a GPU or a CPU with native bf16
    cuda_graph: bool = False  # replay each step as a recorded CUDA graph (one GPU process)
    channels: int | None = None  # override the preset's width
    depth: int | None = None  # override the preset's number of convolutions

    def resolved(self) -> TrainConfig:
        """Fill unset values from the preset."""
        if self.preset not in TRAINING_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(TRAINING_PRESETS)}")
        defaults = TRAINING_PRESETS[self.preset]
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be positive, got {self.lr_scale}")
        values: dict[str, Any] = {
            k: (defaults[k] if getattr(self, k) is None and k in defaults else getattr(self, k))
            for k in (f.name for f in dataclasses.fields(self))
        }
        for k in ("lr_conv", "lr_spline", "lr_scaling"):  # only the preset's rates are scaled
            if getattr(self, k) is None:
                values[k] = defaults[k] * self.lr_scale
        config = TrainConfig(**values)
        if not 0 < config.sigma < 255:
            raise ValueError(f"sigma is on the 0-255 scale and must be in (0, 255), got {config.sigma}")
        return config

    def model_config(self) -> DenoiserConfig:
        base = PRESETS[self.preset].to_dict()
        base.update(activation=self.activation, conv=self.conv, sigma=self.sigma / 255)
        if self.channels is not None:
            base["channels"] = self.channels
        if self.depth is not None:
            base["depth"] = self.depth
        return DenoiserConfig.from_dict(base)


def noisy_versions(images: list[Tensor], sigma: float) -> list[Tensor]:
    """The evaluation protocol: noise from ``torch.manual_seed(0)`` per image, in order."""
    out = []
    for image in images:
        generator = torch.Generator().manual_seed(0)
        out.append(image + sigma * torch.randn(image.shape, generator=generator))
    return out


@torch.no_grad()
def evaluate(model: nn.Module, clean: list[Tensor], noisy: list[Tensor], device: torch.device) -> float:
    """Mean PSNR of the model's outputs over (H, W) images."""
    was_training = model.training
    model.eval()
    scores = []
    for x, y in zip(clean, noisy, strict=True):
        out = model(y[None, None].to(device))[0, 0].cpu()
        scores.append(psnr(out, x))
    model.train(was_training)
    return sum(scores) / len(scores)


#: File in a run's folder that the running trainer holds locked.
LOCK_NAME = "train.lock"

#: Steps between reads of the loss on the host. Each read waits for the device to finish
#: its queue, so reading every step would serialise the host and a GPU.
LOSS_CHECK_EVERY = 25


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


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"train.optim.{index}.{key}"] = torch.as_tensor(value)
    return out


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("train.optim."):
            _, _, index, key = name.split(".", 3)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def _start_process_group(device_type: str) -> bool:
    """Join torchrun's ranks (gloo on CPU, nccl on GPU) unless a group runs; True if started here."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class RunLocked(ValueError):
    """Another live process is training into the same output folder."""


@contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold ``output/train.lock`` for the duration of a run, so that a second trainer never
    writes into a folder a running one holds (they would interleave one log and one state).

    An advisory ``flock`` on POSIX: the kernel drops it when its process dies, so the lock of a
    killed run is taken over at once; elsewhere (no ``fcntl``) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    output.mkdir(parents=True, exist_ok=True)
    handle = open(output / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(f"{output} is being trained by {holder}; wait for it, stop it, or use another "
                            f"--output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _past_decay_time(config: TrainConfig, elapsed_s: float) -> bool:
    return config.max_minutes is not None and elapsed_s >= config.lr_decay_at * 60 * config.max_minutes


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) a denoiser; returns a summary dict. Files go to ``config.output``.

    On a GPU, cuDNN benchmarks its convolution algorithms for the fixed patch shape and
    keeps the fastest (``torch.backends.cudnn.benchmark``, restored afterwards). Under
    ``torchrun`` the process group it starts is destroyed before it returns or raises
    (except an NCCL group on a rank-local error): gloo's worker threads left to interpreter
    shutdown abort the process (SIGABRT).
    """
    started_group = _start_process_group(torch.device(config.device).type)
    try:
        with ExitStack() as held, cudnn_autotuning(config.device.startswith("cuda")):
            summary = _train(config, resume, progress, held)
    except BaseException as error:
        # Every rank raises TrainingDiverged at the same step, and gloo's teardown is local;
        # NCCL's waits on peers that a rank-local error may leave in a collective, so such a
        # rank just exits non-zero and torchrun stops the others.
        if started_group and (isinstance(error, TrainingDiverged) or dist.get_backend() == "gloo"):
            dist.destroy_process_group()
        raise
    if started_group:
        dist.destroy_process_group()
    return summary


def _train(config: TrainConfig, resume: bool, progress: bool, held: ExitStack) -> dict:
    """The run; once its settings are checked, rank 0 takes the run's lock into ``held``."""
    config = config.resolved()
    steps, batch_size = config.steps, config.batch_size
    if steps is None or batch_size is None:  # every preset sets them
        raise ValueError(f"preset {config.preset!r} sets no steps or batch_size")
    device = torch.device(config.device)
    rank, world = _rank_and_world()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no GPU is available")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if config.compile_spline:
        set_spline_backend("compiled")
    output = Path(config.output)
    state_path, best_path, log_path = output / "train_state.safetensors", output / "best.safetensors", output / "log.csv"
    sigma = config.sigma / 255

    if config.cuda_graph and (device.type != "cuda" or world > 1):
        raise ValueError("CUDA graph training needs --device cuda and a single process (not torchrun)")
    refused: RunLocked | None = None
    if rank == 0:
        try:
            held.enter_context(run_lock(output))
        except RunLocked as error:
            refused = error
    if world > 1:  # every rank stops, not only the one that found the folder held
        flag = torch.tensor([float(refused is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and refused is None:
            refused = RunLocked(f"{output} is being trained by another process")
    if refused is not None:
        raise refused
    torch.manual_seed(config.seed)
    model = LipschitzDenoiser(config.model_config()).to(device)
    optimizer = make_optimizer(model, config, capturable=config.cuda_graph)
    sampler = PatchSampler(config.train_dir, config.patch_size, seed=config.seed + 1000 * rank)
    noise_generator = torch.Generator().manual_seed(config.seed + 1 + 1000 * rank)
    step, best_psnr, elapsed = 0, -math.inf, 0.0
    resumed_precision: str | None = None
    if resume and state_path.exists():
        tensors, metadata = load_tensors(state_path)
        if metadata.get("train_config", {}).get("sigma") != config.sigma:
            raise ValueError(f"{state_path} was trained for another sigma; use a new --output or --no-resume")
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
        _restore_optimizer(optimizer, tensors)
        step, best_psnr, elapsed = metadata["step"], metadata["best_psnr"], metadata["elapsed_s"]
        earlier = metadata.get("train_config", {}).get("mixed_precision")  # states that predate "precision"
        earlier_amp = earlier if earlier is not None else device.type == "cuda"  # the default back then
        resumed_precision = metadata.get("precision") or ("bf16" if earlier_amp else "float32")
        if f"train.rng.sampler.{rank}" in tensors:
            sampler.set_state(tensors[f"train.rng.sampler.{rank}"])
            noise_key = f"train.rng.noise.{rank}" if f"train.rng.noise.{rank}" in tensors else "train.rng.noise"
            noise_generator.set_state(tensors[noise_key])  # "train.rng.noise": checkpoints before per-rank states
        else:  # a rank the checkpoint has no state for: fresh streams, distinct per rank and step
            sampler.generator.manual_seed(config.seed + 1000 * rank + 7919 * step)
            noise_generator.manual_seed(config.seed + 1 + 1000 * rank + 7919 * step)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    val_clean: list[Tensor] = []
    if config.val_dir and rank == 0 and Path(config.val_dir).is_dir():
        val_clean = [load_grayscale(p) for p in list_images(config.val_dir)]
    val_noisy = noisy_versions(val_clean, sigma)

    def save_state(rng_states: list[tuple[Tensor, Tensor]]) -> None:
        tensors = dict(model.state_dict())
        tensors.update(_flatten_optimizer(optimizer))
        for index, (sampler_state, noise_state) in enumerate(rng_states):  # every rank's streams
            tensors[f"train.rng.sampler.{index}"] = sampler_state
            tensors[f"train.rng.noise.{index}"] = noise_state
        metadata = {
            "config": model.config.to_dict(), "train_config": dataclasses.asdict(config),
            "step": step, "best_psnr": best_psnr, "elapsed_s": elapsed, "world_size": world,
            "patches_seen": step * batch_size * world,
            "precision": "bf16 convolutions (autocast), float32 weights" if use_amp else "float32",
        }
        save_tensors_atomic(tensors, state_path, metadata)

    # bf16 keeps float32's range (no loss scaling); the constrained weights, splines and loss
    # stay float32, so the trained float32 model is exactly what the certificate covers.
    if config.mixed_precision is not None:
        use_amp = config.mixed_precision
    elif resumed_precision is not None:  # a resumed run keeps its precision unless told otherwise
        use_amp = resumed_precision.startswith("bf16")
    else:
        use_amp = default_mixed_precision(device.type)
    start = time.perf_counter() - elapsed
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc="train")
    last_loss = math.nan
    pending_loss, pending_steps = torch.zeros((), device=device), 0  # summed since the last read
    model.train()
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    graphed = GraphedTrainingStep(model, optimizer, config.tv2_weight, use_amp) if config.cuda_graph else None
    # The decay comes at lr_decay_at of the step budget or of the time budget, whichever
    # is reached first, so a run stopped by --minutes has also had its decayed phase.
    decayed = _past_decay_time(config, elapsed)  # the step condition is checked in the loop
    applied_factor = None
    last_save = time.perf_counter()
    while step < steps:
        decayed = decayed or step >= config.lr_decay_at * steps
        factor = config.lr_decay_factor if decayed else 1.0
        if factor != applied_factor:
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                set_learning_rate(group, base * factor)
            applied_factor = factor
        clean = sampler.sample(batch_size)
        noisy = clean + sigma * torch.randn(clean.shape, generator=noise_generator)
        clean, noisy = batch_to_device(clean, noisy, device)
        if graphed is not None:
            pending_loss += graphed(clean, noisy)
        else:
            pending_loss += training_step(net, model, optimizer, clean, noisy, config.tv2_weight, use_amp)
        pending_steps += 1
        step += 1
        bar.update(1)
        elapsed = time.perf_counter() - start
        out_of_time = config.max_minutes is not None and elapsed >= 60 * config.max_minutes
        decay_now = _past_decay_time(config, elapsed)
        validate_now = step % config.validate_every == 0 or step == config.steps
        # Ranks read their loss and agree on stopping at the same steps only (step-based
        # check points); a single process also checks as soon as its time is up.
        save_due = False
        if pending_steps >= LOSS_CHECK_EVERY or validate_now or (world == 1 and out_of_time):
            last_loss = float(pending_loss) / (pending_steps * batch_size)
            diverged = not math.isfinite(last_loss)
            # saved at a loss read only: a resumed run then reads its loss at the same steps
            save_due = time.perf_counter() - last_save >= 60 * config.checkpoint_minutes
            if world > 1:  # all ranks must stop, decay, save and give up together
                flags = torch.tensor([float(out_of_time), float(decay_now), float(diverged), float(save_due)],
                                     device=device)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                out_of_time, decay_now, diverged, save_due = (bool(v) for v in flags.tolist())
            if diverged:
                raise TrainingDiverged(
                    f"loss is {last_loss} within steps {step - pending_steps + 1}-{step}: lower the learning "
                    f"rates; the last good checkpoint is kept in {state_path}"
                )
            pending_loss.zero_()
            pending_steps = 0
        elif world > 1:
            out_of_time = decay_now = False
        decayed = decayed or decay_now
        if validate_now or out_of_time:
            rng_states = _gather_rng_states(sampler.state(), noise_generator.get_state(), world, device)
            if rank == 0:
                score = evaluate(model, val_clean, val_noisy, device) if val_clean else math.nan
                improved = val_clean and score > best_psnr
                if improved:
                    best_psnr = score
                    save_denoiser(model, best_path, {"step": step, "val_psnr": score})
                elif not val_clean:
                    save_denoiser(model, best_path, {"step": step})
                save_state(rng_states)
                new_log = not log_path.exists()
                with open(log_path, "a", newline="") as handle:
                    writer = csv.writer(handle)
                    if new_log:
                        writer.writerow(["step", "elapsed_s", "loss_per_patch", "val_psnr", "lr_factor"])
                    writer.writerow([step, f"{elapsed:.1f}", f"{last_loss:.6f}", f"{score:.4f}", factor])
                bar.set_postfix(loss=f"{last_loss:.4f}", psnr=f"{score:.2f}")
            if world > 1:
                dist.barrier()
            last_save = time.perf_counter()
        elif save_due:  # between validations: the state only (no validation, no log row)
            rng_states = _gather_rng_states(sampler.state(), noise_generator.get_state(), world, device)
            if rank == 0:
                save_state(rng_states)
            last_save = time.perf_counter()
        if out_of_time:
            break
    bar.close()
    summary = {"step": step, "best_psnr": best_psnr, "elapsed_s": elapsed, "output": str(output), "rank": rank}
    if world > 1:
        summary["ranks_identical"] = _ranks_identical(model)
    return summary


def _gather_rng_states(sampler_state: Tensor, noise_state: Tensor, world: int,
                       device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Every rank's (patch sampler, noise) generator states, in rank order (all ranks call it)."""
    if world == 1:
        return [(sampler_state, noise_state)]
    gathered = []
    for state in (sampler_state, noise_state):
        local = state.to(device)  # NCCL gathers device tensors only
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        gathered.append([part.cpu() for part in parts])
    return list(zip(*gathered, strict=True))


def _ranks_identical(model: nn.Module) -> bool:
    """Gather every rank's parameters and compare them exactly (all ranks get the answer)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
