"""Cost of the spline and of the constrained layers (issue: foundation).

1. forward+backward of a conv(64->64, 3x3) + activation block on a (64, 64, 40, 40) batch,
   spline vs ReLU, and the bytes each keeps for backward, and peak process memory;
2. eval-mode forward of the 8-layer 64-channel 1-Lipschitz network vs the same network
   with its constrained convolutions exported to plain ``nn.Conv2d``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn

from lipden import LinearSpline, OrthoConv2d
from lipden.models.denoiser import PRESETS, LipschitzDenoiser
from lipden.nn.splines import get_spline_backend, set_spline_backend

from .common import interleaved_medians, machine, write_results


def make_block(activation: str, channels: int) -> nn.Sequential:
    act = LinearSpline(channels) if activation == "spline" else nn.ReLU()
    return nn.Sequential(OrthoConv2d(channels, channels, 3), act)


def saved_bytes(block: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (parameters excluded)."""
    params = {p.data_ptr() for p in block.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params and t.numel() > 4096:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return total


PEAK_SCRIPT = """
import sys, torch, json
sys.path.insert(0, {root!r})
from benchmarks.common import peak_memory_mib, reset_peak_memory_mib
from benchmarks.layers import make_block

torch.manual_seed(0)
block = make_block({activation!r}, {channels})
x = torch.randn({shape}, requires_grad=True)
block(x).square().sum().backward()  # warm-up: allocator and kernels
x.grad = None
for p in block.parameters():
    p.grad = None
base = reset_peak_memory_mib()
block(x).square().sum().backward()
print(json.dumps({{"peak_mib": peak_memory_mib() - base}}))
"""


def peak_memory_mib(activation: str, channels: int, shape: tuple[int, ...]) -> float:
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = PEAK_SCRIPT.format(root=root, activation=activation, channels=channels, shape=shape)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def export_plain(model: LipschitzDenoiser) -> LipschitzDenoiser:
    plain = copy.deepcopy(model)
    for index, module in enumerate(plain.body):
        if isinstance(module, OrthoConv2d):
            plain.body[index] = module.to_conv2d()
    return plain.eval()


def _markdown(results: dict, quick: bool, repeats: int, shape: tuple, image_shape: tuple, variants: list) -> str:
    m = results["machine"]
    lines = [
        f"# Layer benchmark{' (quick)' if quick else ''}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads. "
        f"Medians of {repeats} interleaved runs.",
        "",
        f"Block = OrthoConv2d(64, 64, 3) + activation, forward + backward on {tuple(shape)}:",
        "",
        "| activation | block time (s) | activation alone (s) | saved for backward (MiB) | peak RSS increase (MiB) |",
        "|---|---|---|---|---|",
    ]
    block, alone = results["block_forward_backward_s"], results["activation_forward_backward_s"]
    saved, peaks = results["saved_for_backward_mib"], results["peak_memory_mib"]
    for name in variants:
        kind = "spline" if name.startswith("spline") else "relu"
        lines.append(f"| {name} | {block[name]:.4f} | {alone[name]:.4f} | {saved[kind]:.1f} | {peaks[kind]:.0f} |")
    lines += [
        "",
        f"Spline overhead on the block: {100 * results['block_spline_overhead']:+.1f}% eager, "
        f"{100 * results['block_spline_compiled_overhead']:+.1f}% with the compiled forward (goal <= +25%).",
        "",
        f"Eval-mode forward of the 8-layer 64-channel denoiser on {image_shape}: "
        f"{results['eval_forward_s']['lipschitz']:.4f} s with cached constrained weights vs "
        f"{results['eval_forward_s']['plain']:.4f} s "
        f"with plain nn.Conv2d: ratio {results['eval_ratio_lipschitz_over_plain']:.3f} (goal <= 1.15).",
        "",
        f"Wall time: {results['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def run(quick: bool = False, output: str = "results") -> dict:
    started = time.perf_counter()
    previous_kernel = get_spline_backend()  # this benchmark compares kernels; the caller's is restored
    torch.manual_seed(0)
    channels = 64
    batch = 16 if quick else 64
    shape = (batch, channels, 40, 40)
    repeats = 3 if quick else 10
    x = torch.randn(shape) * 0.05
    blocks = {name: make_block(name, channels) for name in ("spline", "relu")}

    def step(module: nn.Module, backend: str = "eager"):
        def run_once():
            set_spline_backend(backend)
            xi = x.detach().requires_grad_(True)
            module(xi).square().sum().backward()
        return run_once

    variants = {
        "spline": step(blocks["spline"]),
        "spline (compiled forward)": step(blocks["spline"], "compiled"),
        "relu": step(blocks["relu"]),
    }
    block_times = interleaved_medians(variants, repeats)
    spline, relu = LinearSpline(channels), nn.ReLU()
    act_times = interleaved_medians(
        {"spline": step(spline), "spline (compiled forward)": step(spline, "compiled"), "relu": step(relu)},
        repeats,
    )
    set_spline_backend(previous_kernel)
    saved = {name: saved_bytes(b, x.detach().requires_grad_(True)) for name, b in blocks.items()}
    peaks = {name: peak_memory_mib(name, channels, shape) for name in blocks}

    model = LipschitzDenoiser(PRESETS["paper"]).eval()
    plain = export_plain(model)
    image = torch.rand(4, 1, 128, 128)
    with torch.no_grad():
        assert torch.allclose(model(image), plain(image), atol=1e-5)
        eval_times = interleaved_medians(
            {"lipschitz": lambda: model(image), "plain": lambda: plain(image)}, repeats
        )

    results: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "block_shape": list(shape),
        "block_forward_backward_s": block_times,
        "block_spline_overhead": block_times["spline"] / block_times["relu"] - 1,
        "block_spline_compiled_overhead": block_times["spline (compiled forward)"] / block_times["relu"] - 1,
        "activation_forward_backward_s": act_times,
        "saved_for_backward_mib": {k: v / 2**20 for k, v in saved.items()},
        "peak_memory_mib": peaks,
        "eval_forward_s": eval_times,
        "eval_input_shape": list(image.shape),
        "eval_ratio_lipschitz_over_plain": eval_times["lipschitz"] / eval_times["plain"],
        "wall_seconds": time.perf_counter() - started,
    }
    markdown = _markdown(results, quick, repeats, shape, tuple(image.shape), list(variants))
    print(markdown)
    write_results(output, "layers" + ("-quick" if quick else ""), results, markdown)
    return results
