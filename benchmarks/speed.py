"""Speed of the 1-Lipschitz machinery (issue 5), all measured in one run on one machine.

(a) spline vs ReLU: forward + backward of a conv(32->32, 3x3) + activation block (the
    shipped width) on a batch of 40x40 patches, blocks from :mod:`benchmarks.layers`;
(b) eval-mode forward of the shipped ``spline-sigma15`` network vs the same network with
    its constrained convolutions exported to plain ``nn.Conv2d`` (goal: ratio <= 1.15);
(c) one training step (forward, loss with the TV2 term, backward, Adam step) on a batch of
    40x40 patches, constrained (``conv="ortho"``) vs unconstrained (``conv="free"``) with the
    same architecture (goal: ratio <= 1.5), and the number of PyTorch operator calls a step
    makes (on a GPU the host's cost of issuing them bounds the step time);
(d) denoiser throughput in megapixels per second (one image, eval mode, no grad);
(e) PnP-FBS iterations per second through ``lipden.reconstruct`` on a 256x256 MRI problem and
    a 481x321 deblurring problem, and the overhead of the solver loop over calling the
    gradient step and the denoiser alone, per iteration (goal: <= 5%). The period between
    consecutive denoiser calls is timed, so the one-off setup of ``reconstruct`` (the
    certification of the denoiser at the image size) is reported apart;
(f) the allocator: eval forward on a batch of images whose activations exceed glibc's mmap
    threshold, in two fresh processes, with glibc's defaults vs
    :func:`lipden.memory.keep_freed_memory` (which the command line applies; so (a)-(e)
    run with it), the forward in one pass (``cpu_pass_bytes = None``);
(g) bounded CPU passes: the eval forward of a batch of 256x256 images and of one large
    image in one pass vs in the passes ``LipschitzDenoiser`` makes on a CPU when the process
    keeps glibc's default allocator (at most ``cpu_pass_bytes`` of activations each; the
    same result), in a fresh process like (f).

Times are medians of interleaved runs (:func:`benchmarks.common.interleaved_medians`).
No data set is needed: the images are scikit-image's embedded test images.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lipden import reconstruct
from lipden.memory import freed_memory_kept, keep_freed_memory
from lipden.models.denoiser import PRESETS, DenoiserConfig, LipschitzDenoiser
from lipden.models.pretrained import list_denoisers, load_denoiser
from lipden.train.config import TrainConfig
from lipden.train.step import make_optimizer, training_step
from problems import default_image, problem_from_name

from .common import interleaved_medians, machine, operator_calls, write_results
from .layers import export_plain, make_block

SHIPPED = "spline-sigma15"
SIGMA = 15 / 255
PROBLEMS = {  # name -> image (H, W)
    "mri-random-x4-cf0.08-noise0.002": ("mri", (256, 256)),
    "deblur-gaussian1.6-noise0.01": ("natural", (321, 481)),
}


def _image(kind: str, size: tuple[int, int]) -> Tensor:
    """A (1, 1, H, W) embedded test image, cropped from a square one."""
    return default_image(kind, max(size))[..., : size[0], : size[1]].contiguous()


def _denoiser() -> tuple[LipschitzDenoiser, str]:
    if SHIPPED in list_denoisers():
        return load_denoiser(SHIPPED), SHIPPED
    torch.manual_seed(0)  # a source tree without weights: same architecture, random init
    config = DenoiserConfig.from_dict({**PRESETS["cpu"].to_dict(), "sigma": SIGMA})
    return LipschitzDenoiser(config).eval(), "cpu preset, random init (no shipped weights)"


def activation_cost(batch: int, repeats: int) -> dict:
    """(a) forward + backward of conv + spline vs conv + ReLU blocks."""
    channels = PRESETS["cpu"].channels
    x = torch.randn(batch, channels, 40, 40) * 0.05
    blocks = {name: make_block(name, channels) for name in ("spline", "relu")}

    def step(block: nn.Module) -> Callable[[], None]:
        def once() -> None:
            block(x.detach().requires_grad_(True)).square().sum().backward()
        return once

    times = interleaved_medians({name: step(b) for name, b in blocks.items()}, repeats)
    return {"shape": list(x.shape), "seconds": times, "ratio_spline_over_relu": times["spline"] / times["relu"]}


def eval_cost(model: LipschitzDenoiser, image: Tensor, repeats: int) -> dict:
    """(b) and (d): eval forward of the constrained network vs its plain-Conv2d export."""
    plain = export_plain(model)
    with torch.no_grad():
        if not torch.allclose(model(image), plain(image), atol=1e-5):
            raise AssertionError("the exported plain network does not compute the same function")
        times = interleaved_medians({"lipschitz": lambda: model(image), "plain": lambda: plain(image)}, repeats)
    megapixels = image[0, 0].numel() / 1e6
    return {
        "shape": list(image.shape), "seconds": times,
        "ratio_lipschitz_over_plain": times["lipschitz"] / times["plain"],
        "megapixels_per_second": {k: megapixels / v for k, v in times.items()},
    }


def training_cost(batch: int, repeats: int) -> dict:
    """(c) one optimizer step, constrained vs unconstrained convolutions (same architecture)."""
    train_config = TrainConfig(output="unused").resolved()
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(batch, 1, 40, 40, generator=generator)
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=generator)
    steps: dict[str, Callable[[], None]] = {}
    for conv in ("ortho", "free"):
        torch.manual_seed(0)
        config = DenoiserConfig.from_dict({**PRESETS["cpu"].to_dict(), "conv": conv, "sigma": SIGMA})
        model = LipschitzDenoiser(config).train()
        optimizer = make_optimizer(model, train_config)

        def step(model: LipschitzDenoiser = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            training_step(model, model, optimizer, clean, noisy, train_config.tv2_weight, mixed_precision=False)

        steps[conv] = step
    times = interleaved_medians(steps, repeats)
    return {"batch": [batch, 1, 40, 40], "seconds": times, "ratio_constrained_over_free": times["ortho"] / times["free"],
            "operator_calls": {conv: operator_calls(step) for conv, step in steps.items()}}


def pnp_cost(model: LipschitzDenoiser, name: str, iterations: int, repeats: int) -> dict:
    """(e) iterations/s of ``reconstruct`` (PnP-FBS) vs the bare gradient + denoiser loop."""
    kind, size = PROBLEMS[name]
    problem = problem_from_name(name)
    x_true = _image(kind, size)
    y = problem.measure(x_true, seed=0)
    physics = problem.physics(x_true.shape)
    step, strength = 1.0 / float(physics.lipschitz_sq), 0.5
    stamps: list[float] = []
    hook = model.register_forward_pre_hook(lambda module, args: stamps.append(time.perf_counter()))
    periods: dict[str, list[float]] = {"reconstruct": [], "bare": []}
    setups: list[float] = []

    def solver() -> None:
        stamps.clear()
        start = time.perf_counter()
        # tol must be > 0 for reconstruct; 1e-12 is never reached in float32, so it runs max_iter.
        result = reconstruct(y, physics, model, "pnp-fbs", step=step, strength=strength,
                             max_iter=iterations, tol=1e-12)
        if result.iterations != iterations:
            raise AssertionError(f"expected {iterations} iterations, got {result.iterations}")
        setups.append(stamps[0] - start)
        periods["reconstruct"].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))

    def bare() -> None:
        stamps.clear()
        with torch.no_grad():
            x = physics.A_adjoint(y)
            for _ in range(iterations):
                v = x - step * physics.A_adjoint(physics.A(x) - y)
                x = (1 - strength) * v + strength * model(v, SIGMA)
        periods["bare"].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))

    try:
        solver()  # first call: includes the certification at this image size (cached after)
        first_setup = setups[0]
        periods["reconstruct"].clear()
        setups.clear()
        call_times = interleaved_medians({"reconstruct": solver, "bare": bare}, repeats, warmup=0)
    finally:
        hook.remove()
    period = {k: statistics.median(v) for k, v in periods.items()}
    return {
        "image_shape": list(x_true.shape), "iterations_per_call": iterations,
        "seconds_per_iteration": period,
        "iterations_per_second": {k: 1 / v for k, v in period.items()},
        "loop_overhead": period["reconstruct"] / period["bare"] - 1,
        "call_seconds": call_times,
        "setup_seconds_first_call": first_setup, "setup_seconds_cached": statistics.median(setups),
    }


def allocator_probe(keep: bool, batch: int, size: int, repeats: int, threads: int) -> dict:
    """Median eval-forward time of the shipped denoiser on (batch, 1, size, size), this process."""
    if keep:
        keep_freed_memory()
    torch.set_num_threads(threads)
    model, _ = _denoiser()
    model.cpu_pass_bytes = None  # one pass: the activations this probe is about
    image = _image("mri", (size, size)).expand(batch, -1, -1, -1).contiguous()
    with torch.no_grad():
        times = interleaved_medians({"forward": lambda: model(image, SIGMA)}, repeats)
    return {"seconds": times["forward"], "kept": freed_memory_kept()}


def cpu_pass_probe(shapes: list[list[int]], repeats: int, threads: int) -> dict:
    """Eval forward in one pass vs in bounded CPU passes, this process (glibc defaults)."""
    torch.set_num_threads(threads)
    model, _ = _denoiser()
    default = model.cpu_pass_bytes
    out = {}
    for shape in shapes:
        image = _image("natural", (shape[2], shape[3])).expand(shape[0], -1, -1, -1).contiguous()

        def forward(pass_bytes: int | None, image: Tensor = image) -> Callable[[], None]:
            def once() -> None:
                model.cpu_pass_bytes = pass_bytes
                model(image, SIGMA)
            return once

        with torch.no_grad():
            times = interleaved_medians({"one pass": forward(None), "passes": forward(default)}, repeats)
        out["x".join(map(str, shape))] = {"seconds": times, "speedup": times["one pass"] / times["passes"]}
    return {"pass_bytes": default, "kept": freed_memory_kept(), "shapes": out}


def _fresh_process(call: str) -> dict:
    """Run ``benchmarks.speed.<call>`` in a new Python process; its JSON result."""
    name = call.split("(")[0]
    code = f"import json; from benchmarks.speed import {name}; print(json.dumps({call}))"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_pass_cost(shapes: list[list[int]], repeats: int) -> dict:
    """(g) one pass vs bounded passes, in a fresh process with glibc's default allocator."""
    return _fresh_process(f"cpu_pass_probe({shapes}, {repeats}, {torch.get_num_threads()})")


def allocator_cost(batch: int, size: int, repeats: int) -> dict:
    """(f) the same forward in a fresh process with glibc's default allocator and with freed blocks kept."""
    seconds = {}
    for keep in (False, True):
        probe = _fresh_process(f"allocator_probe({keep}, {batch}, {size}, {repeats}, {torch.get_num_threads()})")
        seconds["kept" if keep else "default"] = probe["seconds"]
        if keep and not probe["kept"]:
            seconds["kept"] = None  # not glibc: nothing to compare
    megabytes = batch * PRESETS["cpu"].channels * size * size * 4 / 2**20
    ratio = None if seconds["kept"] is None else seconds["default"] / seconds["kept"]
    return {"shape": [batch, 1, size, size], "activation_megabytes": megabytes, "seconds": seconds,
            "speedup": ratio}


def run(quick: bool = False, output: str = "results") -> dict:
    """Measure (a)-(g) (see the module docstring); write speed[-quick].{json,md}."""
    started = time.perf_counter()
    torch.manual_seed(0)
    repeats = 3 if quick else 10
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with "
          f"{info['torch_threads']} threads", flush=True)
    model, model_label = _denoiser()
    eval_image = _image("natural", (256, 256) if quick else (321, 481))
    results = {
        "quick": quick, "machine": info, "denoiser": model_label,
        "activation": activation_cost(8 if quick else 32, repeats),
        "eval": eval_cost(model, eval_image, repeats),
        "training_step": training_cost(8 if quick else 32, repeats),
        "pnp": {
            name: pnp_cost(model, name, iterations=(4 if quick else 20) if "mri" in name else (3 if quick else 10),
                           repeats=1 if quick else 3)
            for name in PROBLEMS
        },
        "allocator": allocator_cost(8, 192 if quick else 256, 2 if quick else 5),
        "cpu_passes": cpu_pass_cost([[4, 1, 192, 192], [1, 1, 384, 384]] if quick
                                    else [[8, 1, 256, 256], [1, 1, 640, 640]], 1 if quick else 5),
        "freed_memory_kept": freed_memory_kept(),
    }
    results["wall_seconds"] = time.perf_counter() - started
    markdown = _markdown(results, repeats)
    print(markdown)
    write_results(output, "speed" + ("-quick" if quick else ""), results, markdown)
    return results


def _allocator_lines(r: dict) -> list[str]:
    a = r.get("allocator")
    if a is None:
        return []
    shape = "x".join(str(v) for v in a["shape"])
    if a["speedup"] is None:
        return [f"(f) Allocator: not glibc here; default allocator {a['seconds']['default']:.3f} s per forward on {shape}.", ""]
    kept = "with" if r.get("freed_memory_kept") else "without"
    return [
        f"(f) Allocator (fresh processes, median forward on {shape}: {a['activation_megabytes']:.0f} MiB per "
        f"activation): glibc defaults {a['seconds']['default']:.3f} s, freed blocks kept "
        f"(`lipden.memory.keep_freed_memory`) {a['seconds']['kept']:.3f} s: {a['speedup']:.2f}x faster. "
        f"(a)-(e) above ran {kept} it.",
        "",
    ]


def _pass_lines(r: dict) -> list[str]:
    c = r.get("cpu_passes")
    if c is None:
        return []
    cells = "; ".join(
        f"{shape}: one pass {v['seconds']['one pass']:.3f} s, passes {v['seconds']['passes']:.3f} s "
        f"({v['speedup']:.2f}x)" for shape, v in c["shapes"].items()
    )
    budget = c["pass_bytes"] / 2**20 if c["pass_bytes"] else 0
    return [f"(g) Bounded CPU passes (fresh process, glibc defaults as in a Python program using the "
            f"library; eval forward, at most {budget:g} MiB of activations per pass, same result): {cells}. "
            "With freed blocks kept (the command line, so (a)-(e)) the denoiser makes one pass.", ""]


def _operator_lines(t: dict) -> list[str]:
    calls = t.get("operator_calls")
    if calls is None:
        return []
    return [
        f"PyTorch operator calls per training step (c): ortho {calls['ortho']}, free {calls['free']} "
        "(outermost calls, views included; on a GPU, where each costs host time and most launch a "
        "kernel, their number rather than the arithmetic sets the step time of small batches).",
        "",
    ]


def _markdown(r: dict, repeats: int) -> str:
    m, a, e, t = r["machine"], r["activation"], r["eval"], r["training_step"]
    lines = [
        f"# Speed{' (QUICK: small batches, few repeats)' if r['quick'] else ''}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads"
        f"{', CUDA ' + m['cuda'] if m['cuda'] else ''} (CPU timings). Denoiser: {r['denoiser']}. "
        f"Medians of {repeats} interleaved runs unless stated.",
        "",
        "| measurement | constrained / spline | reference | ratio | goal |",
        "|---|---|---|---|---|",
        f"| (a) conv+activation block fwd+bwd, {tuple(a['shape'])} | spline {a['seconds']['spline'] * 1e3:.1f} ms | "
        f"ReLU {a['seconds']['relu'] * 1e3:.1f} ms | {a['ratio_spline_over_relu']:.3f} | - |",
        f"| (b) eval forward, {tuple(e['shape'])} | 1-Lipschitz {e['seconds']['lipschitz'] * 1e3:.1f} ms | "
        f"plain nn.Conv2d {e['seconds']['plain'] * 1e3:.1f} ms | {e['ratio_lipschitz_over_plain']:.3f} | <= 1.15 |",
        f"| (c) training step, batch {tuple(t['batch'])} | ortho {t['seconds']['ortho'] * 1e3:.1f} ms | "
        f"free {t['seconds']['free'] * 1e3:.1f} ms | {t['ratio_constrained_over_free']:.3f} | <= 1.5 |",
        "",
        *_operator_lines(t),
        f"(d) Throughput: {e['megapixels_per_second']['lipschitz']:.3f} megapixels/s "
        f"({e['megapixels_per_second']['plain']:.3f} with plain convolutions).",
        "",
        "(e) PnP-FBS (strength 0.5, step 1/L) through `lipden.reconstruct` vs the bare loop "
        "(gradient step + denoiser only), seconds per iteration from the period between denoiser calls:",
        "",
        "| problem | image | iterations/call | reconstruct it/s | bare it/s | loop overhead (goal <= 5%) "
        "| setup, first call (s) | setup, cached (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["pnp"].items():
        lines.append(
            f"| {name} | {p['image_shape'][-2]}x{p['image_shape'][-1]} | {p['iterations_per_call']} | "
            f"{p['iterations_per_second']['reconstruct']:.3f} | {p['iterations_per_second']['bare']:.3f} | "
            f"{100 * p['loop_overhead']:+.2f}% | {p['setup_seconds_first_call']:.2f} | {p['setup_seconds_cached']:.3f} |"
        )
    lines += [
        "",
        "Setup = time from the call to the first denoiser evaluation; the first call certifies the "
        "denoiser at that image size (cached afterwards for the same size).",
        "",
        *_allocator_lines(r),
        *_pass_lines(r),
        f"Wall time: {r['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
