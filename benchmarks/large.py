"""Large images: time and peak memory of tiled denoising and of a PnP solve at 1, 4 and 16 megapixels.

Each measurement runs in a fresh process (``multiprocessing`` spawn), so its peak resident
memory (``ru_maxrss``) is its own; the table reports the increase over the process's memory
after imports, model loading and the input image, i.e. what the computation itself needs.
"""

from __future__ import annotations

import multiprocessing
import resource
import time

from .common import machine, write_results


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _denoise_job(side: int, tile: int | None) -> dict:
    import torch

    from lipden import load_denoiser
    from lipden.tiling import denoise_tiled

    torch.set_num_threads(1)
    model = load_denoiser("spline-sigma15")
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    before = _rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        out = denoise_tiled(model, x, tile=tile) if tile else model(x)
    seconds = time.perf_counter() - start
    assert out.shape == x.shape
    return {"seconds": seconds, "peak_increase_mb": _rss_mb() - before}


def _reconstruct_job(side: int, iterations: int, tile: int | None = None) -> dict:
    import torch

    from lipden import load_denoiser, reconstruct
    from problems import problem_from_name

    torch.set_num_threads(1)
    model = load_denoiser("spline-sigma5")
    problem = problem_from_name("deblur-gaussian1.6-noise0.01")
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    y = problem.measure(x)
    physics = problem.physics(x.shape)
    before = _rss_mb()
    start = time.perf_counter()
    reconstruct(y, physics, model, "pnp-fbs", step=1.9, strength=0.5, max_iter=iterations, tol=1e-12, tile=tile)
    seconds = time.perf_counter() - start
    return {"seconds_per_iteration": seconds / iterations, "peak_increase_mb": _rss_mb() - before}


def _in_fresh_process(function, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(function, args)
        pool.close()  # let the worker exit on its own: terminating it leaks its semaphores
        pool.join()
    return result


def run(quick: bool = False, output: str = "results") -> dict:
    """Denoise (untiled where it fits, tiled at 512) and solve 1, 4, 16 MP images (quick: 0.07, 0.26 MP)."""
    sides = [256, 512] if quick else [1024, 2048, 4096]
    rows = []
    for side in sides:
        megapixels = side * side / 1e6
        row: dict = {"side": side, "megapixels": round(megapixels, 2)}
        row["tiled_512"] = _in_fresh_process(_denoise_job, side, 512)
        if side <= 2048:  # untiled needs ~0.4 GB per megapixel
            row["untiled"] = _in_fresh_process(_denoise_job, side, None)
        row["pnp_fbs_tiled_512"] = _in_fresh_process(_reconstruct_job, side, 2, 512)
        if side <= 2048:
            row["pnp_fbs"] = _in_fresh_process(_reconstruct_job, side, 2)
        rows.append(row)
        print(f"{side}x{side}: tiled denoise {row['tiled_512']['seconds']:.1f} s, "
              f"+{row['tiled_512']['peak_increase_mb']:.0f} MB")
    results = {"machine": machine(), "quick": quick, "rows": rows,
               "note": "peak = increase of the process's maximum resident memory over its state before the "
                       "computation (model and input image already loaded); one torch thread"}
    lines = [f"# Large images{' (QUICK)' if quick else ''}", "",
             f"Machine: {results['machine']}; one thread; each cell a fresh process. Denoiser spline-sigma15; "
             "PnP-FBS (spline-sigma5, Gaussian blur 1.6), 2 iterations, denoiser tiled (512) or untiled.", "",
             "| image | denoise tiled (512): s / peak MB | denoise untiled: s / peak MB "
             "| PnP-FBS tiled (512): s per iteration / peak MB | PnP-FBS untiled: s per iteration / peak MB |",
             "|---|---|---|---|---|"]
    for row in rows:
        untiled = row.get("untiled")
        untiled_cell = "-" if untiled is None else f"{untiled['seconds']:.1f} / {untiled['peak_increase_mb']:.0f}"
        solve, solve_tiled = row.get("pnp_fbs"), row["pnp_fbs_tiled_512"]
        solve_cell = "-" if solve is None else f"{solve['seconds_per_iteration']:.1f} / {solve['peak_increase_mb']:.0f}"
        lines.append(
            f"| {row['side']}x{row['side']} ({row['megapixels']} MP) "
            f"| {row['tiled_512']['seconds']:.1f} / {row['tiled_512']['peak_increase_mb']:.0f} "
            f"| {untiled_cell} "
            f"| {solve_tiled['seconds_per_iteration']:.1f} / {solve_tiled['peak_increase_mb']:.0f} | {solve_cell} |"
        )
    lines += ["", "`reconstruct(..., tile=512)` (CLI `--tile`, automatic above 1024x1024) applies the denoiser "
              "tile by tile, exactly; the solve then needs the tiles' activations plus a few image-sized "
              "buffers (iterate, gradient, measurement, FFTs)."]
    write_results(output, f"large{'-quick' if quick else ''}", results, "\n".join(lines) + "\n")
    return results
