"""``python cli.py reconstruct deblur|mri``: simulate a measurement, reconstruct it, report."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from lipden.cli.denoise import check_device, check_writable_folder, same_file, tile_for
from lipden.io import READABLE, deferred_signals, read_image, write_image
from lipden.metrics import psnr, ssim
from lipden.models.pretrained import load_denoiser
from lipden.optim.reconstruct import reconstruct


def build_problem(args: argparse.Namespace, image_size: tuple[int, int] | None = None):
    """The problem of the command line; with ``image_size``, kernels that cannot fit the image
    are refused before they are built (a huge kernel would take all the memory)."""
    from problems import DeblurProblem, MRIProblem

    if args.problem == "deblur":
        if not (math.isfinite(args.blur_sigma) and args.blur_sigma > 0):
            raise ValueError(f"--blur-sigma must be a positive number of pixels, got {args.blur_sigma:g}")
        if image_size is not None:
            side, shape = min(image_size), "x".join(map(str, image_size))
            if args.kernel == "gaussian" and 6 * args.blur_sigma > side:
                raise ValueError(f"the Gaussian blur kernel (--blur-sigma {args.blur_sigma:g}: about "
                                 f"{6.7 * args.blur_sigma:.0f} pixels wide) does not fit the {shape} image")
            if args.kernel != "gaussian" and args.kernel_size is not None and args.kernel_size > side:
                raise ValueError(f"--kernel-size {args.kernel_size} does not fit the {shape} image")
        noise = 0.01 if args.noise is None else args.noise
        return DeblurProblem(args.kernel, blur_sigma=args.blur_sigma, size=args.kernel_size,
                             noise=noise, seed=args.kernel_seed)
    noise = 0.002 if args.noise is None else args.noise
    return MRIProblem(args.mask, args.acceleration, args.center_fraction, noise=noise, seed=args.mask_seed)


def _ground_truth(args: argparse.Namespace, kind: str) -> tuple[torch.Tensor, str, int]:
    from problems import default_image

    if args.input is None:
        label = "skimage.data.shepp_logan_phantom" if kind == "mri" else "skimage.data.camera"
        return default_image(kind, 256), label, 8
    image, info = read_image(args.input)
    if kind == "mri" and image.shape[0] != 1:
        raise ValueError(f"MRI takes a grayscale (magnitude) image; {args.input} has {image.shape[0]} channels")
    return image[None], str(args.input), info.bits


def _save_plot(path: Path, truth, baseline, result, residuals, title: str, force: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(ax, image, label):
        data = image[0].clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(data, cmap="gray" if data.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    show(axes[0], truth, "ground truth")
    show(axes[1], baseline[0], baseline[1])
    show(axes[2], result[0], result[1])
    axes[3].semilogy(residuals[:, 0].numpy())
    axes[3].set_xlabel("iteration")
    axes[3].set_ylabel(r"$\|z_{k+1} - z_k\| \,/\, \|z_{k+1}\|$")
    axes[3].grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with deferred_signals():  # the figure is complete or absent, never half-written
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            try:
                fig.savefig(tmp, dpi=110, format=path.suffix[1:].lower())
                if path.exists() and not force:
                    raise FileExistsError(f"plot exists: {path} (use --force to overwrite)")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    finally:
        plt.close(fig)


def _plot_formats() -> set[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return {f".{name}" for name in FigureCanvasBase.get_supported_filetypes()}


def _check_target(path: Path | None, source: str | None, force: bool, suffixes) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: unsupported output type {path.suffix!r} (use {', '.join(sorted(suffixes))})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give an output file name")
    check_writable_folder(path.parent)
    if source is not None and same_file(path, Path(source)):
        raise ValueError(f"output would overwrite the input {source}")
    if path.exists() and not force:
        raise FileExistsError(f"output exists: {path} (use --force to overwrite)")


def _fmt(ssim: float | None) -> str:
    return "n/a" if ssim is None else f"{ssim:.3f}"


def _cap_advice(max_iter: int, accelerate: int, tol: float, own_parameters: bool) -> str:
    """One line for a solve stopped by its iteration cap: what it means and what to change."""
    change = f"raise --max-iter (now {max_iter})"
    if not accelerate:
        change += ", add --accelerate 3"
    if own_parameters:
        change += ", or drop the solver options to use the tuned setup"
    return (f"stopped at the iteration cap before the relative residual reached --tol {tol:g}: the "
            f"estimate is not the fixed point; {change}")


def run_reconstruct(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    output = Path(args.output) if args.output else None
    plot = Path(args.plot) if args.plot else None
    _check_target(output, args.input, args.force, READABLE)
    _check_target(plot, args.input, args.force, _plot_formats() if plot is not None else ())
    if output is not None and plot is not None and same_file(output, plot):
        raise ValueError(f"-o and --plot name the same file {output}")
    truth, label, bits = _ground_truth(args, "mri" if args.problem == "mri" else "natural")
    problem = build_problem(args, (truth.shape[-2], truth.shape[-1]))
    if problem.kind == "mri" and args.acceleration > truth.shape[-1]:
        raise ValueError(f"--acceleration {args.acceleration} exceeds the {truth.shape[-1]} k-space lines "
                         f"of {label}")
    truth = truth.to(device)
    if args.box is False and (args.lower is not None or args.upper is not None):
        raise ValueError("--no-box contradicts --lower / --upper")
    setup = problem.tuned_setup(args.method, box=args.box)
    model_name = args.model or setup.model
    params = {**setup.parameters,
              **{k: getattr(args, k) for k in ("step", "strength", "relaxation", "weight", "lower", "upper")
                 if getattr(args, k) is not None}}
    max_iter = setup.max_iter if args.max_iter is None else args.max_iter
    accelerate = setup.accelerate if args.accelerate is None else args.accelerate
    from lipden.optim.base import box_bounds, canonical_method, fbs_fast_relaxation, parameter_names

    method = canonical_method(args.method)
    if (args.lower is not None or args.upper is not None) and "lower" not in parameter_names(method):
        raise ValueError(f"--lower / --upper apply to pnp-fbs and red, not {method}")
    params = {k: v for k, v in params.items() if k in parameter_names(method)}
    if method == "pnp-fbs" and args.relaxation is None and box_bounds(params) and {"step", "strength"} <= set(params):
        # the projection makes the step less averaged: cap a stored over-relaxation accordingly
        fastest = fbs_fast_relaxation(params["step"], params["strength"], problem.lipschitz_sq(truth.shape),
                                      projected=True)
        params["relaxation"] = min(params.get("relaxation", 1.0), fastest)
    if args.tile is not None and args.tile < 0:
        raise ValueError(f"--tile must be >= 1 (or 0: never tile), got {args.tile}")
    denoiser = load_denoiser(model_name, device=device)
    started = time.perf_counter()
    y = problem.measure(truth, seed=args.seed)
    physics = problem.physics(truth.shape, device)
    baseline = problem.baseline(y, truth.shape)
    result = reconstruct(
        y, physics, denoiser, method, x_true=truth, max_iter=max_iter, tol=args.tol,
        guarantee=not args.no_guarantee, progress=not args.quiet and not args.json,
        tile=tile_for(args.tile, truth.shape), accelerate=accelerate, **params,
    )
    seconds = time.perf_counter() - started
    estimate = result.x.clamp(0, 1).cpu()
    truth_cpu = truth.cpu()
    record = {
        "problem": problem.name,
        "input": label,
        "output": str(output) if output else None,
        "method": method,
        "model": model_name,
        "parameters": result.parameters,
        "psnr_baseline": psnr(baseline.cpu(), truth_cpu),
        "ssim_baseline": ssim(baseline.cpu()[0], truth_cpu[0]),
        "psnr": psnr(estimate, truth_cpu),
        "ssim": ssim(estimate[0], truth_cpu[0]),
        "iterations": result.iterations,
        "accelerate": accelerate,
        "max_iter": max_iter,
        "tuned_entry": setup.key,
        "evaluations": int(result.evaluations_per_image.max()),
        "converged": result.converged,
        "guaranteed": result.guaranteed,
        "max_residual_increase": result.max_residual_increase,
        "monotone_residual": result.monotone,
        "final_relative_residual": float(result.final_relative_residuals.max()),
        "seconds": seconds,
    }
    if output is not None:
        write_image(output, estimate[0], bits=bits, force=args.force)
    if plot is not None:
        base_label = "zero-filled" if problem.kind == "mri" else "A^T y"
        _save_plot(
            plot, truth_cpu, (baseline.cpu(), f"{base_label}: {record['psnr_baseline']:.2f} dB"),
            (estimate, f"{method} ({model_name}): {record['psnr']:.2f} dB"),
            result.relative_residuals.cpu(), problem.name, args.force,
        )
    if args.json:
        print(json.dumps(record))
    else:
        base = "zero-filled" if problem.kind == "mri" else "A^T y"
        print(f"{problem.name} on {label}")
        print(f"  {base}: PSNR {record['psnr_baseline']:.2f} dB, SSIM {_fmt(record['ssim_baseline'])}")
        print(f"  {method} with {model_name}: PSNR {record['psnr']:.2f} dB, SSIM {_fmt(record['ssim'])}")
        status = "converged" if result.converged else f"NOT converged (cap {max_iter})"
        passes = f"{result.iterations} iterations" + (
            f" (Anderson memory {accelerate}, {record['evaluations']} evaluations)" if accelerate else "")
        print(f"  {passes}, {status}, final relative residual "
              f"{record['final_relative_residual']:.2e}, residual non-increasing: {result.monotone}; {seconds:.1f} s")
        if not result.converged:
            own = any(getattr(args, k) is not None for k in ("step", "strength", "relaxation", "weight"))
            print(f"  {_cap_advice(max_iter, accelerate, args.tol, own)}")
        if output is not None:
            print(f"  wrote {output}")
        if plot is not None:
            print(f"  wrote {plot}")
    return 0
