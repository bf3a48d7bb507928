"""Large images: time and peak memory of denoising and of a PnP solve at 1, 4 and 16 megapixels,
tiled, by the default call (bounded passes) and in one pass.

Each measurement runs in a fresh process (``multiprocessing`` spawn), whose peak resident
memory (``VmHWM``, reset just before the computation on Linux) is its own; the table reports
the increase over the process's memory after imports, model loading and the input image, i.e.
what the computation itself needs.
"""

from __future__ import annotations

import multiprocessing
import time

from .common import machine, peak_memory_mib, reset_peak_memory_mib, write_results

#: how a cell applies the denoiser: explicit 512 tiles, the library's default call (on a CPU,
#: bounded passes whose widest activation is at most ``cpu_pass_bytes``), or one pass over the image
MODES = ("tiled_512", "default", "one_pass")


def _load(name: str, mode: str):
    from lipden import load_denoiser

    model = load_denoiser(name)
    if mode == "one_pass":
        model.cpu_pass_bytes = None
    return model, (512 if mode == "tiled_512" else None)


def _denoise_job(side: int, mode: str) -> dict:
    import torch

    from lipden.models.tiling import denoise_tiled

    torch.set_num_threads(1)
    model, tile = _load("spline-sigma15", mode)
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    before = reset_peak_memory_mib()
    start = time.perf_counter()
    with torch.no_grad():
        out = denoise_tiled(model, x, tile=tile) if tile else model(x)
    seconds = time.perf_counter() - start
    assert out.shape == x.shape
    return {"seconds": seconds, "peak_increase_mb": peak_memory_mib() - before}


def _reconstruct_job(side: int, iterations: int, mode: str) -> dict:
    import torch

    from lipden import reconstruct
    from problems import problem_from_name

    torch.set_num_threads(1)
    model, tile = _load("spline-sigma5", mode)
    problem = problem_from_name("deblur-gaussian1.6-noise0.01")
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    y = problem.measure(x)
    physics = problem.physics(x.shape)
    before = reset_peak_memory_mib()
    start = time.perf_counter()
    reconstruct(y, physics, model, "pnp-fbs", step=1.9, strength=0.5, max_iter=iterations, tol=1e-12, tile=tile)
    seconds = time.perf_counter() - start
    return {"seconds_per_iteration": seconds / iterations, "peak_increase_mb": peak_memory_mib() - before}


def _cell(row: dict, key: str, field: str) -> str:
    """``seconds / peak MB`` of one measurement of a row, ``-`` where it was not taken."""
    value = row.get(key)
    return "-" if value is None else f"{value[field]:.1f} / {value['peak_increase_mb']:.0f}"


def _in_fresh_process(function, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(function, args)
        pool.close()  # let the worker exit on its own: terminating it leaks its semaphores
        pool.join()
    return result


def run(quick: bool = False, output: str = "results") -> dict:
    """Denoise and solve 1, 4, 16 MP images (quick: 0.07, 0.26 MP) in 512 tiles, by the default call
    (bounded passes) and, up to 4 MP, in one pass (~0.4 GB per megapixel)."""
    started = time.perf_counter()
    sides = [256, 512] if quick else [1024, 2048, 4096]
    rows = []
    for side in sides:
        row: dict = {"side": side, "megapixels": round(side * side / 1e6, 2)}
        for mode in MODES if side <= 2048 else MODES[:2]:
            row[f"denoise_{mode}"] = _in_fresh_process(_denoise_job, side, mode)
            row[f"pnp_fbs_{mode}"] = _in_fresh_process(_reconstruct_job, side, 2, mode)
        rows.append(row)
        print(f"{side}x{side}: tiled denoise {row['denoise_tiled_512']['seconds']:.1f} s, "
              f"+{row['denoise_tiled_512']['peak_increase_mb']:.0f} MB")
    results = {"machine": {**machine(), "torch_threads": 1}, "quick": quick, "rows": rows,
               "wall_seconds": time.perf_counter() - started,
               "note": "peak = increase of the process's maximum resident memory over its state before the "
                       "computation (model and input image already loaded); one torch thread"}
    labels = {"tiled_512": "tiled (512)", "default": "default call", "one_pass": "one pass"}
    lines = [f"# Large images{' (QUICK)' if quick else ''}", "",
             f"Machine: {results['machine']}; each cell a fresh process. Denoiser spline-sigma15; PnP-FBS "
             "(spline-sigma5, Gaussian blur 1.6), 2 iterations. The denoiser runs in explicit 512 x 512 tiles "
             "(`denoise_tiled`, `reconstruct(..., tile=512)`), by the default call (on a CPU, exact passes whose "
             "widest activation is at most `cpu_pass_bytes`, 16 MiB) or in one pass (`cpu_pass_bytes = None`; "
             "up to 4 MP). Cells: seconds / peak MB (PnP-FBS: seconds per iteration).", "",
             "| image | " + " | ".join(f"denoise {labels[m]}" for m in MODES) + " | "
             + " | ".join(f"PnP-FBS {labels[m]}" for m in MODES) + " |",
             "|---|" + "---|" * (2 * len(MODES))]
    for row in rows:
        lines.append(f"| {row['side']}x{row['side']} ({row['megapixels']} MP) | "
                     + " | ".join(_cell(row, f"denoise_{m}", "seconds") for m in MODES) + " | "
                     + " | ".join(_cell(row, f"pnp_fbs_{m}", "seconds_per_iteration") for m in MODES) + " |")
    lines += ["", "Tiles and passes give the same result as one pass (exact borders); they bound the memory "
              "to the tiles' activations plus a few image-sized buffers (iterate, gradient, measurement, FFTs).",
              "", f"Wall time: {results['wall_seconds']:.0f} s."]
    write_results(output, f"large{'-quick' if quick else ''}", results, "\n".join(lines) + "\n")
    return results
