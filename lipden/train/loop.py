"""Training of 1-Lipschitz denoisers on image patches (CPU, one GPU, or several via torchrun).

Loss: summed squared error over the batch + ``tv2_weight`` x the TV2 of all splines.
Adam with separate learning rates for the convolutions (and any other parameter), the spline
coefficients and the spline scalings. Fresh Gaussian noise every batch. Resumable: the
training state (model, optimizer, random generators, step) is a safetensors file written
atomically after every validation and at least every ``checkpoint_minutes``, next to the best
model so far and a CSV log; a resumed run continues exactly where the state was saved.
Under ``torchrun --nproc_per_node=N`` the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU); rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from lipden.io import list_images, load_grayscale
from lipden.metrics import psnr
from lipden.models.checkpoint import load_tensors, save_denoiser, save_tensors_atomic
from lipden.models.denoiser import DenoiserConfig, LipschitzDenoiser
from lipden.nn.precision import default_mixed_precision
from lipden.nn.splines import get_spline_backend, native_kernel_available, set_spline_backend
from lipden.train.config import TrainConfig, recipe_differences
from lipden.train.data import PatchSampler, noisy_versions
from lipden.train.distributed import (
    gather_rng_states,
    rank_and_world,
    ranks_identical,
    start_process_group,
)
from lipden.train.state import (
    RunLocked,
    flatten_optimizer,
    remove_partial_writes,
    restore_optimizer,
    run_lock,
)
from lipden.train.step import (
    GraphedTrainingStep,
    batch_to_device,
    cudnn_autotuning,
    make_optimizer,
    set_learning_rate,
    training_step,
)
from lipden.train.warm_start import load_warm_start

#: Steps between reads of the loss on the host. Each read waits for the device to finish
#: its queue, so reading every step would serialise the host and a GPU.
LOSS_CHECK_EVERY = 25

LOG_HEADER = ["step", "elapsed_s", "loss_per_patch", "val_psnr", "lr_factor"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) a denoiser; returns a summary dict. Files go to ``config.output``.

    On a GPU, cuDNN benchmarks its convolution algorithms for the fixed patch shape and
    keeps the fastest (``torch.backends.cudnn.benchmark``, restored afterwards). Under
    ``torchrun`` the process group it starts is destroyed before it returns or raises
    (except an NCCL group on a rank-local error): gloo's worker threads left to interpreter
    shutdown abort the process (SIGABRT).
    """
    started_group = start_process_group(torch.device(config.device).type)
    previous_kernel = get_spline_backend()
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
    finally:
        set_spline_backend(previous_kernel)
    if started_group:
        dist.destroy_process_group()
    return summary


def _train(config: TrainConfig, resume: bool, progress: bool, held: ExitStack) -> dict:
    """The run; once its settings are checked, rank 0 takes the run's lock into ``held``."""
    config = config.resolved()
    if config.steps is None or config.batch_size is None:  # every preset sets them
        raise ValueError(f"preset {config.preset!r} sets no steps or batch_size")
    device = torch.device(config.device)
    rank, world = rank_and_world()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but no GPU is available")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if config.cuda_graph and (device.type != "cuda" or world > 1):
        raise ValueError("CUDA graph training needs --device cuda and a single process (not torchrun)")
    _hold_lock(held, Path(config.output), rank, world, device)
    run = _Run(config, device, rank, world)
    recorded = run.resume() if resume and run.state_path.exists() else {}
    if config.stop_at is not None and config.stop_at <= run.step:
        raise ValueError(f"--stop-at {config.stop_at} is not after the run's step {run.step} in {config.output}")
    # a new run from trained weights: checked before anything in the folder changes
    start = load_warm_start(config.init_from, run.model.config) if not recorded and config.init_from else None
    if not recorded and rank == 0 and run.log_path.exists():  # a new run: the old log is kept aside
        os.replace(run.log_path, run.log_path.with_name("log.replaced.csv"))
    if start is not None:  # a resumed run has its weights in its state
        run.model.load_state_dict(start[0])
        run.warm_start = start[1]
    run.spline_kernel = _spline_kernel(config, device, recorded.get("spline_kernel"), recorded.get("device"))
    set_spline_backend(run.spline_kernel)
    run.wrap_for_ranks()
    run.load_validation_images()
    # bf16 keeps float32's range (no loss scaling); the constrained weights, splines and loss
    # stay float32, so the trained float32 model is exactly what the certificate covers.
    if config.mixed_precision is not None:
        run.use_amp = config.mixed_precision
    elif "precision" in recorded:  # a resumed run keeps its precision unless told otherwise
        run.use_amp = recorded["precision"].startswith("bf16")
    else:
        run.use_amp = default_mixed_precision(device.type)
    return _loop(run, progress)


def _hold_lock(held: ExitStack, output: Path, rank: int, world: int, device: torch.device) -> None:
    """Rank 0 takes the run's lock into ``held``; every rank raises RunLocked if it is taken."""
    refused: RunLocked | None = None
    if rank == 0:
        try:
            held.enter_context(run_lock(output))
            remove_partial_writes(output)  # of a killed run
        except RunLocked as error:
            refused = error
    if world > 1:  # every rank stops, not only the one that found the folder held
        flag = torch.tensor([float(refused is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and refused is None:
            refused = RunLocked(f"{output} is being trained by another process")
    if refused is not None:
        raise refused


def _spline_kernel(config: TrainConfig, device: torch.device, recorded: str | None,
                   recorded_device: str | None) -> str:
    """The spline backend of the run: the one asked for; else the one a resumed run recorded on
    the same kind of device (a run back from a GPU takes this device's own); else the native C++
    kernel on a CPU where it builds; else compiled (``--compile``) or eager."""
    if config.spline_kernel != "auto":
        return config.spline_kernel
    same_device = recorded_device is None or torch.device(recorded_device).type == device.type
    if recorded is not None and same_device:
        return recorded
    if device.type == "cpu" and native_kernel_available():
        return "native"
    return "compiled" if config.compile_spline else "eager"


def _past_decay_time(config: TrainConfig, elapsed_s: float) -> bool:
    return config.max_minutes is not None and elapsed_s >= config.lr_decay_at * 60 * config.max_minutes


class _Run:
    """A run's model, optimizer, random streams, files and counters (one per process)."""

    def __init__(self, config: TrainConfig, device: torch.device, rank: int, world: int) -> None:
        assert config.steps is not None and config.batch_size is not None  # resolved
        self.config, self.device, self.rank, self.world = config, device, rank, world
        self.steps, self.batch_size = config.steps, config.batch_size
        self.sigma = config.sigma / 255
        output = Path(config.output)
        self.output = output
        self.state_path, self.best_path = output / "train_state.safetensors", output / "best.safetensors"
        self.log_path = output / "log.csv"
        torch.manual_seed(config.seed)
        self.model = LipschitzDenoiser(config.model_config()).to(device)
        self.net: nn.Module = self.model
        self.optimizer = make_optimizer(self.model, config, capturable=config.cuda_graph)
        self.sampler = PatchSampler(config.train_dir, config.patch_size, seed=config.seed + 1000 * rank)
        self.noise_generator = torch.Generator().manual_seed(config.seed + 1 + 1000 * rank)
        self.step, self.best_psnr, self.elapsed = 0, -math.inf, 0.0
        self.use_amp = False
        self.spline_kernel = "eager"
        self.warm_start: dict | None = None  # where a run started from trained weights came from
        self.last_loss = math.nan
        self.pending_loss, self.pending_steps = torch.zeros((), device=device), 0  # summed since the last read
        self.val_clean: list[Tensor] = []
        self.val_noisy: list[Tensor] = []

    @property
    def patches_seen(self) -> int:
        """Patches the weights have seen: this run's, plus those of the weights it started from."""
        initial = (self.warm_start or {}).get("patches_seen") or 0
        return initial + self.step * self.batch_size * self.world

    def resume(self) -> dict[str, str]:
        """Load the training state; returns how the run was trained: its ``precision`` and, if
        recorded, its ``spline_kernel`` and the ``device`` it was trained on."""
        config, rank = self.config, self.rank
        tensors, metadata = load_tensors(self.state_path)
        differences = recipe_differences(metadata.get("train_config", {}), config, metadata["step"])
        if "config" in metadata and DenoiserConfig.from_dict(metadata["config"]) != self.model.config:
            differences.append(f"the network {metadata['config']} (given {self.model.config.to_dict()})")
        if differences:
            raise ValueError(f"{self.state_path} was trained with {'; '.join(differences)}: resume with the same "
                             "settings, or start a new run (another --output, or --no-resume)")
        self.model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
        restore_optimizer(self.optimizer, tensors)
        self.step, self.best_psnr, self.elapsed = metadata["step"], metadata["best_psnr"], metadata["elapsed_s"]
        self.warm_start = metadata.get("warm_start")
        if f"train.rng.sampler.{rank}" in tensors:
            self.sampler.set_state(tensors[f"train.rng.sampler.{rank}"])
            noise_key = f"train.rng.noise.{rank}" if f"train.rng.noise.{rank}" in tensors else "train.rng.noise"
            self.noise_generator.set_state(tensors[noise_key])  # "train.rng.noise": states before per-rank ones
        else:  # a rank the checkpoint has no state for: fresh streams, distinct per rank and step
            self.sampler.generator.manual_seed(config.seed + 1000 * rank + 7919 * self.step)
            self.noise_generator.manual_seed(config.seed + 1 + 1000 * rank + 7919 * self.step)
        earlier = metadata.get("train_config", {}).get("mixed_precision")  # states that predate "precision"
        earlier_amp = earlier if earlier is not None else self.device.type == "cuda"  # the default back then
        recorded = {"precision": metadata.get("precision") or ("bf16" if earlier_amp else "float32")}
        if metadata.get("spline_kernel"):
            recorded["spline_kernel"] = metadata["spline_kernel"]
        if metadata.get("train_config", {}).get("device"):
            recorded["device"] = metadata["train_config"]["device"]
        return recorded

    def wrap_for_ranks(self) -> None:
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def load_validation_images(self) -> None:
        val_dir = self.config.val_dir
        if val_dir and self.rank == 0 and Path(val_dir).is_dir():
            self.val_clean = [load_grayscale(p) for p in list_images(val_dir)]
        self.val_noisy = noisy_versions(self.val_clean, self.sigma)

    def train_step(self, graphed: GraphedTrainingStep | None) -> None:
        clean = self.sampler.sample(self.batch_size)
        noisy = clean + self.sigma * torch.randn(clean.shape, generator=self.noise_generator)
        clean, noisy = batch_to_device(clean, noisy, self.device)
        if graphed is not None:
            self.pending_loss += graphed(clean, noisy)
        else:
            self.pending_loss += training_step(self.net, self.model, self.optimizer, clean, noisy,
                                               self.config.tv2_weight, self.use_amp)
        self.pending_steps += 1
        self.step += 1

    def read_loss(self, flags: list[bool]) -> list[bool]:
        """Read the loss summed since the last read; with several ranks, agree on ``flags``
        (any rank's True wins) and on divergence, which raises TrainingDiverged on all."""
        self.last_loss = float(self.pending_loss) / (self.pending_steps * self.batch_size)
        diverged = not math.isfinite(self.last_loss)
        if self.world > 1:  # all ranks must stop, decay, save and give up together
            agreed = torch.tensor([float(v) for v in (*flags, diverged)], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            *flags, diverged = (bool(v) for v in agreed.tolist())
        if diverged:
            raise TrainingDiverged(
                f"loss is {self.last_loss} within steps {self.step - self.pending_steps + 1}-{self.step}: lower "
                f"the learning rates; the last good checkpoint is kept in {self.state_path}"
            )
        self.pending_loss.zero_()
        self.pending_steps = 0
        return flags

    def checkpoint(self, validate: bool, factor: float, bar: tqdm) -> None:
        """Save the training state (all ranks' random streams); with ``validate``, first score
        the validation set, keep the best model and append a log row."""
        rng_states = gather_rng_states(self.sampler.state(), self.noise_generator.get_state(), self.world,
                                       self.device)
        if self.rank == 0:
            score = self._validate() if validate else math.nan
            self._save_state(rng_states)
            if validate:
                self._log(score, factor)
                bar.set_postfix(loss=f"{self.last_loss:.4f}", psnr=f"{score:.2f}")
        if validate and self.world > 1:
            dist.barrier()

    def _validate(self) -> float:
        if not self.val_clean:
            save_denoiser(self.model, self.best_path, {"step": self.step, "patches_seen": self.patches_seen})
            return math.nan
        score = evaluate(self.model, self.val_clean, self.val_noisy, self.device)
        if score > self.best_psnr:
            self.best_psnr = score
            save_denoiser(self.model, self.best_path,
                          {"step": self.step, "val_psnr": score, "patches_seen": self.patches_seen})
        return score

    def _log(self, score: float, factor: float) -> None:
        new_log = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new_log:
                writer.writerow(LOG_HEADER)
            writer.writerow([self.step, f"{self.elapsed:.1f}", f"{self.last_loss:.6f}", f"{score:.4f}", factor])

    def _save_state(self, rng_states: list[tuple[Tensor, Tensor]]) -> None:
        tensors = dict(self.model.state_dict())
        tensors.update(flatten_optimizer(self.optimizer))
        for index, (sampler_state, noise_state) in enumerate(rng_states):  # every rank's streams
            tensors[f"train.rng.sampler.{index}"] = sampler_state
            tensors[f"train.rng.noise.{index}"] = noise_state
        metadata = {
            "config": self.model.config.to_dict(), "train_config": dataclasses.asdict(self.config),
            "step": self.step, "best_psnr": self.best_psnr, "elapsed_s": self.elapsed, "world_size": self.world,
            "patches_seen": self.patches_seen, "warm_start": self.warm_start,
            "precision": "bf16 convolutions (autocast), float32 weights" if self.use_amp else "float32",
            "spline_kernel": self.spline_kernel,
        }
        save_tensors_atomic(tensors, self.state_path, metadata)


def _loop(run: _Run, progress: bool) -> dict:
    """Step until the step budget (or the time budget) is spent, or to ``stop_at``; returns the summary."""
    config = run.config
    start = time.perf_counter() - run.elapsed
    bar = tqdm(total=config.steps, initial=run.step, disable=not progress or run.rank != 0, desc="train")
    run.model.train()
    base_lrs = [float(group["lr"]) for group in run.optimizer.param_groups]
    graphed = GraphedTrainingStep(run.model, run.optimizer, config.tv2_weight, run.use_amp) if config.cuda_graph else None
    # The decay comes at lr_decay_at of the step budget or of the time budget, whichever
    # is reached first, so a run stopped by --minutes has also had its decayed phase.
    decayed = _past_decay_time(config, run.elapsed)  # the step condition is checked in the loop
    applied_factor = None
    last_save = time.perf_counter()
    last_step = run.steps if config.stop_at is None else min(run.steps, config.stop_at)
    while run.step < last_step:
        decayed = decayed or run.step >= config.lr_decay_at * run.steps
        factor = config.lr_decay_factor if decayed else 1.0
        if factor != applied_factor:
            for group, base in zip(run.optimizer.param_groups, base_lrs, strict=True):
                set_learning_rate(group, base * factor)
            applied_factor = factor
        run.train_step(graphed)
        bar.update(1)
        run.elapsed = time.perf_counter() - start
        out_of_time = config.max_minutes is not None and run.elapsed >= 60 * config.max_minutes
        decay_now = _past_decay_time(config, run.elapsed)
        validate_now = run.step % config.validate_every == 0 or run.step in (config.steps, config.stop_at)
        # Ranks read their loss and agree on stopping at the same steps only (step-based
        # check points); a single process also checks as soon as its time is up.
        save_due = False
        if run.pending_steps >= LOSS_CHECK_EVERY or validate_now or (run.world == 1 and out_of_time):
            # saved at a loss read only: a resumed run then reads its loss at the same steps
            save_due = time.perf_counter() - last_save >= 60 * config.checkpoint_minutes
            out_of_time, decay_now, save_due = run.read_loss([out_of_time, decay_now, save_due])
        elif run.world > 1:
            out_of_time = decay_now = False
        decayed = decayed or decay_now
        if validate_now or out_of_time or save_due:  # between validations: the state only
            run.checkpoint(validate_now or out_of_time, factor, bar)
            last_save = time.perf_counter()
        if out_of_time:
            break
    bar.close()
    summary = {"step": run.step, "best_psnr": run.best_psnr, "elapsed_s": run.elapsed, "output": str(run.output),
               "rank": run.rank}
    if run.world > 1:
        summary["ranks_identical"] = ranks_identical(run.model)
    return summary
