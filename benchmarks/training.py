"""Training throughput: wall time of an optimizer step of the denoiser presets, the PyTorch
operator calls the host makes per step, and on a GPU the time its kernels take.

A step is exactly the trainer's: the batch goes to the device (:func:`lipden.train.step.batch_to_device`)
and :func:`lipden.train.step.training_step` runs the forward pass, the loss with its TV2 term,
the backward pass and Adam; the constrained step is timed in float32 and, where the trainer
uses it by default (a GPU, a CPU with native bf16), with bf16 autocast of the convolutions,
with the eager splines and, on a CPU where it builds, the C++ spline kernel the trainer uses.
``steps`` consecutive steps are timed with one device synchronisation at the end (the
trainer reads the loss only every few steps); the figure is the median over ``repeats``.
Each configuration is measured with constrained (``conv="ortho"``) and unconstrained
(``conv="free"``) convolutions, same architecture, against a plain float32 ``nn.Conv2d`` +
ReLU network of the same shape (the speed a 1-Lipschitz step is judged by), and on a GPU also with the constrained
step replayed as a CUDA graph (``train --cuda-graph``), where one launch replaces the
thousands of the step. Operator calls are counted in the eager step (a replay makes none).

On a GPU, a wall time per step well above the kernel time per step means the host (Python
and operator dispatch) bounds training, not the GPU. Run with ``--device cuda`` there; the
results go to ``training-cuda.{json,md}`` (``training.{json,md}`` on the CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lipden.models.denoiser import LipschitzDenoiser
from lipden.nn.conv_ops import circular_pad
from lipden.nn.fused import fused_chain_applies, spline_circular_pad
from lipden.nn.precision import cpu_has_fast_bf16, default_mixed_precision
from lipden.nn.splines import (
    LinearSpline,
    get_spline_backend,
    native_kernel_available,
    set_spline_backend,
)
from lipden.train.config import TrainConfig
from lipden.train.step import (
    GraphedTrainingStep,
    batch_to_device,
    cudnn_autotuning,
    make_optimizer,
    training_step,
)

from .common import device_name, interleaved_medians, machine, operator_calls, write_results

SIGMA = 15.0  # on the 0-255 scale


def _configurations(device: torch.device, quick: bool) -> list[tuple[str, int]]:
    """(preset, batch size) pairs to measure."""
    if device.type == "cuda":
        return [("cpu", 64), ("paper", 128)]
    return [("cpu", 8)] if quick else [("cpu", 32), ("paper", 64), ("paper", 128)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_seconds(step: Callable[[], None], device: torch.device) -> float | None:
    """Summed duration of the GPU kernels of one call of ``step`` (None off the GPU)."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        step()
        _synchronize(device)
    microseconds = sum(e.time_range.elapsed_us() for e in profiler.events()  # kernels, not annotation ranges
                       if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    return microseconds / 1e6


def plain_network(channels: int, depth: int) -> nn.Sequential:
    """The reference: ``depth`` plain ``nn.Conv2d`` 3x3 (zero 'same' padding) with ReLU between,
    1 -> channels -> ... -> 1, the denoiser's shape without constraints or splines."""
    layers: list[nn.Module] = []
    for index in range(depth):
        c_in = 1 if index == 0 else channels
        c_out = 1 if index == depth - 1 else channels
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if index < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def measure(preset: str, batch: int, conv: str, device: torch.device, steps: int, repeats: int,
            cuda_graph: bool = False, mixed_precision: bool | None = None, spline_kernel: str = "eager") -> dict:
    """:func:`_measure` with the splines run by ``spline_kernel`` (see
    :func:`lipden.nn.splines.set_spline_backend`); the process's backend is restored after."""
    previous = get_spline_backend()
    set_spline_backend(spline_kernel)
    try:
        row = _measure(preset, batch, conv, device, steps, repeats, cuda_graph, mixed_precision)
    finally:
        set_spline_backend(previous)
    row["spline_kernel"] = spline_kernel if conv != "plain" else "-"
    if row.pop("fused_chain", False):
        row["spline_kernel"] += ", fused chain"
    return row


def _measure(preset: str, batch: int, conv: str, device: torch.device, steps: int, repeats: int,
             cuda_graph: bool, mixed_precision: bool | None) -> dict:
    """Seconds per step (median over ``repeats`` runs of ``steps`` steps), operator calls and
    kernel time per step of one configuration; ``cuda_graph``: the step replayed as a CUDA
    graph (:class:`lipden.train.step.GraphedTrainingStep`); ``mixed_precision``: bf16
    autocast of the convolutions (None: the trainer's default on this device). ``conv="plain"``
    is :func:`plain_network` in float32 with Adam: the reference a constrained step is compared to."""
    config = TrainConfig(output="unused", preset=preset, conv="free" if conv == "plain" else conv, sigma=SIGMA,
                         batch_size=batch).resolved()
    torch.manual_seed(0)
    if mixed_precision is None:
        mixed_precision = default_mixed_precision(device.type)
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(batch, 1, config.patch_size, config.patch_size, generator=generator)
    noisy = clean + SIGMA / 255 * torch.randn(clean.shape, generator=generator)
    model_config = config.model_config()
    graphed = None
    if conv == "plain":
        mixed_precision = False
        plain = plain_network(model_config.channels, model_config.depth).to(device).train()
        plain_optimizer = torch.optim.Adam(plain.parameters(), lr=1e-4)

        def step() -> None:
            x, y = batch_to_device(clean, noisy, device)
            loss = (plain(y) - x).pow(2).sum()
            plain_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            plain_optimizer.step()
    else:
        model = LipschitzDenoiser(model_config).to(device).train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            fused = fused_chain_applies(model.body, noisy.to(device))
        optimizer = make_optimizer(model, config, capturable=cuda_graph)
        graphed = GraphedTrainingStep(model, optimizer, config.tv2_weight, mixed_precision) if cuda_graph else None

        def step() -> None:
            batch_pair = batch_to_device(clean, noisy, device)
            if graphed is not None:
                graphed(*batch_pair)
            else:
                training_step(model, model, optimizer, *batch_pair, config.tv2_weight, mixed_precision)

    for _ in range(graphed.warmup + 2 if graphed is not None else 2):  # warm-up (caches; graph recorded)
        step()
    timings = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        timings.append((time.perf_counter() - start) / steps)
    seconds = statistics.median(timings)
    return {
        "preset": preset, "batch": batch, "conv": conv, "cuda_graph": cuda_graph, "bf16": mixed_precision,
        "channels": model_config.channels,
        "seconds_per_step": seconds, "patches_per_second": batch / seconds,
        "operator_calls": operator_calls(step), "kernel_seconds_per_step": kernel_seconds(step, device),
        "fused_chain": conv != "plain" and fused,
    }


def block_times(batch: int = 64, channels: int = 64, size: int = 40, repeats: int = 15) -> dict:
    """Forward + backward of one activation + 3x3 circular convolution block on a bf16 (batch,
    channels, size, size) activation, as the CPU trainer runs it: the spline through
    :func:`lipden.nn.fused.spline_circular_pad` (channels-last) and, for reference, ReLU then
    circular pad in both layouts (the faster is the reference) and the unfused float32 spline;
    convolutions under bf16 autocast. Median seconds over ``repeats`` interleaved runs."""
    generator = torch.Generator().manual_seed(0)
    weight = 0.05 * torch.randn(channels, channels, 3, 3, generator=generator)
    spline = LinearSpline(channels)
    start = (0.05 * torch.randn(batch, channels, size, size, generator=generator)).to(torch.bfloat16)
    grad = torch.randn(batch, channels, size, size, generator=generator).to(torch.bfloat16)

    def block(activate: Callable[[torch.Tensor], torch.Tensor], channels_last: bool) -> Callable[[], None]:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        x = start.contiguous(memory_format=layout).requires_grad_(True)
        g = grad.contiguous(memory_format=layout)

        def once() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = torch.nn.functional.conv2d(activate(x), weight)
            out.backward(g)
        return once

    functions = {
        "relu": block(lambda x: circular_pad(torch.relu(x), 1, 1), False),
        "relu, channels-last": block(lambda x: circular_pad(torch.relu(x), 1, 1), True),
        "spline, unfused float32": block(lambda x: circular_pad(spline(x.float()), 1, 1).to(torch.bfloat16), False),
    }
    previous = get_spline_backend()
    set_spline_backend("native")
    try:
        if native_kernel_available():
            functions["spline, fused (trainer)"] = block(lambda x: spline_circular_pad(x, spline, 1), True)
        seconds = interleaved_medians(functions, repeats)
    finally:
        set_spline_backend(previous)
    return {"shape": [batch, channels, size, size], "seconds": seconds}


def run(quick: bool = False, output: str = "results", device: str = "cpu") -> dict:
    """Measure every configuration on ``device``; write training[-cuda][-quick].{json,md}."""
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no GPU is available")
    started = time.perf_counter()
    steps, repeats = (20, 5) if target.type == "cuda" else ((1, 2) if quick else (3, 3))
    with cudnn_autotuning(target.type == "cuda"):  # as in training
        rows = []
        for preset, batch in _configurations(target, quick):
            # the constrained step in both precisions, the same net without constraints, plain Conv2d + ReLU
            precisions = (False, True) if default_mixed_precision(target.type) else (False,)
            rows += [measure(preset, batch, "ortho", target, steps, repeats, mixed_precision=p) for p in precisions]
            if target.type == "cpu" and native_kernel_available():  # the trainer's default kernel on a CPU
                rows.append(measure(preset, batch, "ortho", target, steps, repeats, mixed_precision=precisions[-1],
                                    spline_kernel="native"))
            rows += [measure(preset, batch, conv, target, steps, repeats) for conv in ("free", "plain")]
        if target.type == "cuda":  # the constrained step replayed as a CUDA graph (train --cuda-graph)
            rows += [measure(preset, batch, "ortho", target, steps, repeats, cuda_graph=True)
                     for preset, batch in _configurations(target, quick)]
    blocks = block_times(*((8, 16, 24, 3) if quick else ())) if target.type == "cpu" and cpu_has_fast_bf16() else None
    info = machine()
    results = {"quick": quick, "machine": info, "device": device_name(target), "steps": steps, "repeats": repeats,
               "rows": rows, "blocks": blocks, "wall_seconds": time.perf_counter() - started}
    markdown = _markdown(results)
    print(markdown)
    stem = "training" + ("-cuda" if target.type == "cuda" else "") + ("-quick" if quick else "")
    write_results(output, stem, results, markdown)
    return results


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Training throughput{' (QUICK)' if r['quick'] else ''}",
        "",
        f"Device: {r['device']} (CPU: {m['cpu']}); torch {m['torch']} with {m['torch_threads']} CPU threads. One step = batch to "
        "the device, forward, loss + TV2, backward, Adam; bf16: autocast of the convolutions (the trainer's "
        "default on a GPU and on a CPU with native bf16; constraints, splines and loss in float32); "
        f"{r['steps']} consecutive steps per timing, median of {r['repeats']}.",
        "",
        "| preset | channels | batch | network | bf16 convs | spline kernel | CUDA graph | ms / step | patches / s | "
        "vs plain fp32 | operator calls / step | GPU kernel ms / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain = {(row["preset"], row["batch"]): row["seconds_per_step"] for row in r["rows"] if row["conv"] == "plain"}
    names = {"ortho": "1-Lipschitz (BCOP) + splines", "free": "free convs + splines", "plain": "plain Conv2d + ReLU"}
    for row in r["rows"]:
        kernel = row["kernel_seconds_per_step"]
        reference = plain.get((row["preset"], row["batch"]))
        ratio = f"{row['seconds_per_step'] / reference:.2f}x" if reference else "-"
        lines.append(
            f"| {row['preset']} | {row['channels']} | {row['batch']} | {names.get(row['conv'], row['conv'])} | "
            f"{'yes' if row.get('bf16') else 'no'} | {row.get('spline_kernel', 'eager')} | "
            f"{'yes' if row.get('cuda_graph') else 'no'} | "
            f"{row['seconds_per_step'] * 1e3:.1f} | {row['patches_per_second']:.0f} | {ratio} | "
            f"{row['operator_calls']} | {'-' if kernel is None else f'{kernel * 1e3:.1f}'} |"
        )
    lines += _block_lines(r.get("blocks"))
    lines += [
        "",
        "Operator calls: outermost `aten::` calls of one step, views included; each costs host time, and on a "
        "GPU most launch a kernel. A GPU step whose wall time is well above its kernel time is bound by the host.",
        "",
        f"Wall time: {r['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _block_lines(blocks: dict | None) -> list[str]:
    if not blocks:
        return []
    seconds = blocks["seconds"]
    reference = min(seconds["relu"], seconds["relu, channels-last"])
    lines = ["", f"Activation + conv block, forward + backward, bf16 {tuple(blocks['shape'])}, circular padding "
             "(the reference is the faster ReLU layout):", "", "| block | ms | vs ReLU |", "|---|---|---|"]
    lines += [f"| {name} | {value * 1e3:.1f} | {value / reference:.2f}x |" for name, value in seconds.items()]
    return lines
