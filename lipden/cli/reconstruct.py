"""``lipden reconstruct deblur|mri``: simulate a measurement, reconstruct it with PnP or RED, report."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lipden.cli._common import (
    UserError,
    add_command_parser,
    add_run_options,
    add_spline_kernel_option,
    check_box_applies,
    check_device,
    check_stop_options,
    check_tile,
    check_writable_folder,
    same_file,
    spline_kernel,
    tile_for,
)

if TYPE_CHECKING:
    import torch

EXAMPLES = """examples:
  python cli.py reconstruct mri                           # Shepp-Logan phantom, random mask, x4
  python cli.py reconstruct deblur photo.png -o sharp.png --kernel motion --noise 0.01
  python cli.py reconstruct mri slice.png --acceleration 8 --mask equispaced --plot fig.png --json
  python cli.py reconstruct deblur --method red --weight 0.1 --max-iter 300
"""

#: Solver options of the command line, passed to ``reconstruct`` when given.
SOLVER_OPTIONS = ("step", "strength", "relaxation", "weight", "lower", "upper")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``reconstruct`` parser and its options."""
    parser = add_command_parser(
        subparsers, "reconstruct", "simulate a deblurring or MRI measurement and reconstruct it (PnP / RED)", EXAMPLES)
    add = parser.add_argument
    add("problem", choices=["deblur", "mri"], help="the inverse problem")
    add("input", nargs="?", metavar="INPUT", help="ground-truth image (default: an embedded one)")
    add("-o", "--output", help="write the reconstruction here")
    add("--kernel", choices=["gaussian", "uniform", "motion"], default="gaussian", help="deblur: blur kernel")
    add("--blur-sigma", type=float, default=1.6, help="Gaussian kernel std (pixels)")
    add("--kernel-size", type=int, help="uniform / motion kernel size (default 9 / 31)")
    add("--kernel-seed", type=int, default=0, help="seed of the motion kernel")
    add("--noise", type=float, help="noise std, images in [0, 1] (default 0.01 deblur, 0.002 MRI)")
    add("--acceleration", type=int, default=4, help="mri: undersampling factor (>= 1)")
    add("--mask", choices=["random", "gaussian", "equispaced"], default="random", help="mri: k-space line mask")
    add("--center-fraction", type=float, help="default 0.08 at x4, 0.04 at x8")
    add("--mask-seed", type=int, default=0, help="mri: seed of the random mask")
    add("--method", default="pnp-fbs", choices=["pnp-fbs", "pnp-drs", "pnp-admm", "red"],
        help="solver (default pnp-fbs)")
    add("--model", help="denoiser name or path (default: the tuned setup's, else spline-sigma15)")
    add("--step", type=float, help="pnp-fbs: gamma in (0, 2/L]; pnp-drs: prox gamma; red: tau")
    add("--strength", type=float, help="denoiser strength theta: D = (1 - theta) Id + theta N")
    add("--relaxation", type=float, help="Krasnosel'skii-Mann relaxation")
    add("--weight", type=float, help="red: regularisation weight mu")
    add("--lower", type=float, help="pnp-fbs / red: project onto x >= LOWER (e.g. 0), keeps the guarantee")
    add("--upper", type=float, help="pnp-fbs / red: project onto x <= UPPER (e.g. 1)")
    add("--box", action=argparse.BooleanOptionalAction, default=None,
        help="pnp-fbs / red: constrain the estimate to [0, 1] (keeps the guarantee); default: "
             "as the problem's best tuned setup")
    add("--max-iter", type=int, help="iteration cap (default: the tuned setup's, at least 1000)")
    add("--tol", type=float, default=1e-5, help="relative fixed-point residual to stop at")
    add("--accelerate", type=int, metavar="M",
        help="safeguarded Anderson acceleration with memory M, same guarantee (default: the "
             "tuned setup's, else 3; 0: the plain iteration)")
    add("--seed", type=int, default=0, help="seed of the measurement noise")
    add("--no-guarantee", action="store_true", help="run even if the convergence theorem fails")
    add("--plot", help="save a figure (truth, baseline, result, residual curve)")
    add("--tile", type=int, metavar="N",
        help="apply the denoiser in N x N tiles (same iterates, bounded memory); default: 512 "
             "above 1024 x 1024 pixels; 0: never tile")
    add("--quiet", action="store_true", help="no progress bar")
    add_run_options(parser, "print one JSON object")
    add_spline_kernel_option(parser)


def check(args: argparse.Namespace) -> None:
    """Refuse stop rules, a box and a noise level that cannot be used, before any work."""
    check_stop_options(args)
    if args.box:
        check_box_applies(args.method)
    if args.noise is not None and not 0 <= args.noise < 1:
        raise UserError(f"--noise is the std on [0, 1] images and must be in [0, 1), got {args.noise:g}")


def build_problem(args: argparse.Namespace, problems: ModuleType, image_size: tuple[int, int] | None = None):
    """The problem of the command line (classes from the ``problems`` package); with ``image_size``, kernels
    that cannot fit the image are refused before they are built (a huge kernel would take all the memory)."""
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
        return problems.DeblurProblem(args.kernel, blur_sigma=args.blur_sigma, size=args.kernel_size,
                                      noise=noise, seed=args.kernel_seed)
    noise = 0.002 if args.noise is None else args.noise
    return problems.MRIProblem(args.mask, args.acceleration, args.center_fraction, noise=noise, seed=args.mask_seed)


def _ground_truth(args: argparse.Namespace, kind: str, problems: ModuleType) -> tuple[torch.Tensor, str, int]:
    from lipden.io import read_image

    if args.input is None:
        label = "skimage.data.shepp_logan_phantom" if kind == "mri" else "skimage.data.camera"
        return problems.default_image(kind, 256), label, 8
    image, info = read_image(args.input)
    if kind == "mri" and image.shape[0] != 1:
        raise ValueError(f"MRI takes a grayscale (magnitude) image; {args.input} has {image.shape[0]} channels")
    return image[None], str(args.input), info.bits


def _save_plot(path: Path, truth, baseline, result, residuals, title: str, force: bool) -> None:
    """A figure of the truth, the baseline, the result and the residual curve, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lipden.io import atomic_write

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

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=110, format=path.suffix[1:].lower())
        if path.exists() and not force:  # appeared while the figure was drawn
            raise FileExistsError(f"plot exists: {path} (use --force to overwrite)")

    try:
        atomic_write(path, write)  # the figure is complete or absent, never half-written
    finally:
        plt.close(fig)


def _plot_formats() -> set[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return {f".{name}" for name in FigureCanvasBase.get_supported_filetypes()}


def _check_target(path: Path | None, source: str | None, force: bool, suffixes: Collection[str]) -> None:
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


def _check_targets(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """``-o`` and ``--plot`` as paths, checked before any work."""
    from lipden.io import READABLE

    output = Path(args.output) if args.output else None
    plot = Path(args.plot) if args.plot else None
    _check_target(output, args.input, args.force, READABLE)
    _check_target(plot, args.input, args.force, _plot_formats() if plot is not None else ())
    if output is not None and plot is not None and same_file(output, plot):
        raise ValueError(f"-o and --plot name the same file {output}")
    return output, plot


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


def _solver_parameters(args: argparse.Namespace, stored: dict[str, Any], method: str,
                       lipschitz_sq: Callable[[], float]) -> dict[str, Any]:
    """The tuned setup's parameters overridden by the command line's, those ``method`` takes; a stored
    PnP-FBS over-relaxation is capped when a box makes the step less averaged."""
    from lipden.optim.base import box_bounds, fbs_fast_relaxation, parameter_names

    if (args.lower is not None or args.upper is not None) and "lower" not in parameter_names(method):
        raise ValueError(f"--lower / --upper apply to pnp-fbs and red, not {method}")
    given = {k: getattr(args, k) for k in SOLVER_OPTIONS if getattr(args, k) is not None}
    params = {k: v for k, v in {**stored, **given}.items() if k in parameter_names(method)}
    if method == "pnp-fbs" and args.relaxation is None and box_bounds(params) and {"step", "strength"} <= set(params):
        fastest = fbs_fast_relaxation(params["step"], params["strength"], lipschitz_sq(), projected=True)
        params["relaxation"] = min(params.get("relaxation", 1.0), fastest)
    return params


def run(args: argparse.Namespace) -> int:
    """Simulate a measurement of the ground truth, reconstruct it with the problem's tuned setup (or the
    given solver options), print PSNR/SSIM against the baseline and convergence, write ``-o`` / ``--plot``."""
    check(args)
    with spline_kernel(args.spline_kernel):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import problems
    from lipden.models.pretrained import load_denoiser
    from lipden.optim.base import canonical_method
    from lipden.optim.reconstruct import reconstruct

    device = check_device(args.device)
    output, plot = _check_targets(args)
    truth, label, bits = _ground_truth(args, "mri" if args.problem == "mri" else "natural", problems)
    problem = build_problem(args, problems, (truth.shape[-2], truth.shape[-1]))
    if problem.kind == "mri" and args.acceleration > truth.shape[-1]:
        raise ValueError(f"--acceleration {args.acceleration} exceeds the {truth.shape[-1]} k-space lines "
                         f"of {label}")
    truth = truth.to(device)
    if args.box is False and (args.lower is not None or args.upper is not None):
        raise ValueError("--no-box contradicts --lower / --upper")
    setup = problem.tuned_setup(args.method, box=args.box)
    model_name = args.model or setup.model
    max_iter = setup.max_iter if args.max_iter is None else args.max_iter
    accelerate = setup.accelerate if args.accelerate is None else args.accelerate
    method = canonical_method(args.method)
    params = _solver_parameters(args, setup.parameters, method, lambda: problem.lipschitz_sq(truth.shape))
    check_tile(args.tile)
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
    estimate, truth_cpu = result.x.clamp(0, 1).cpu(), truth.cpu()
    record = _record(problem, result, estimate, baseline.cpu(), truth_cpu, seconds)
    record.update(input=label, output=str(output) if output else None, method=method, model=model_name,
                  accelerate=accelerate, max_iter=max_iter, tuned_entry=setup.key)
    if output is not None:
        from lipden.io import write_image

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
        _print_summary(args, record, problem.kind, output, plot)
    return 0


#: The order of the JSON record's fields.
RECORD_FIELDS = ("problem", "input", "output", "method", "model", "parameters", "psnr_baseline", "ssim_baseline",
                 "psnr", "ssim", "iterations", "accelerate", "max_iter", "tuned_entry", "evaluations", "converged",
                 "guaranteed", "max_residual_increase", "monotone_residual", "final_relative_residual", "seconds")


def _record(problem, result, estimate, baseline, truth, seconds: float) -> dict[str, Any]:
    """The JSON record of a solve, fields in :data:`RECORD_FIELDS` order (the command's own filled in after)."""
    from lipden.metrics import psnr, ssim

    measured = {
        "problem": problem.name,
        "parameters": result.parameters,
        "psnr_baseline": psnr(baseline, truth),
        "ssim_baseline": ssim(baseline[0], truth[0]),
        "psnr": psnr(estimate, truth),
        "ssim": ssim(estimate[0], truth[0]),
        "iterations": result.iterations,
        "evaluations": int(result.evaluations_per_image.max()),
        "converged": result.converged,
        "guaranteed": result.guaranteed,
        "max_residual_increase": result.max_residual_increase,
        "monotone_residual": result.monotone,
        "final_relative_residual": float(result.final_relative_residuals.max()),
        "seconds": seconds,
    }
    return {name: measured.get(name) for name in RECORD_FIELDS}


def _print_summary(args: argparse.Namespace, record: dict[str, Any], kind: str, output: Path | None,
                   plot: Path | None) -> None:
    base = "zero-filled" if kind == "mri" else "A^T y"
    print(f"{record['problem']} on {record['input']}")
    print(f"  {base}: PSNR {record['psnr_baseline']:.2f} dB, SSIM {_fmt(record['ssim_baseline'])}")
    print(f"  {record['method']} with {record['model']}: PSNR {record['psnr']:.2f} dB, SSIM {_fmt(record['ssim'])}")
    max_iter, accelerate = record["max_iter"], record["accelerate"]
    status = "converged" if record["converged"] else f"NOT converged (cap {max_iter})"
    passes = f"{record['iterations']} iterations" + (
        f" (Anderson memory {accelerate}, {record['evaluations']} evaluations)" if accelerate else "")
    print(f"  {passes}, {status}, final relative residual "
          f"{record['final_relative_residual']:.2e}, residual non-increasing: {record['monotone_residual']}; "
          f"{record['seconds']:.1f} s")
    if not record["converged"]:
        own = any(getattr(args, k) is not None for k in ("step", "strength", "relaxation", "weight"))
        print(f"  {_cap_advice(max_iter, accelerate, args.tol, own)}")
    if output is not None:
        print(f"  wrote {output}")
    if plot is not None:
        print(f"  wrote {plot}")
