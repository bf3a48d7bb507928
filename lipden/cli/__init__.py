"""Command-line interface: ``python cli.py COMMAND`` or the ``lipden`` console command."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

EXAMPLES = {
    "denoise": """examples:
  python cli.py denoise                                   # embedded image, noise 15/255 added
  python cli.py denoise photo.png -o clean.png --sigma 25
  python cli.py denoise scans/ -o out/ --model relu-sigma15 --json
  python cli.py denoise clean.png --add-noise 15 --seed 1 -o restored.png
  python cli.py denoise huge.tif -o clean.tif --tile 512    # bounded memory, same result
  python cli.py denoise scans/ -o out/    # rerun after Ctrl-C / SIGTERM: finished outputs are skipped
""",
    "certify": """examples:
  python cli.py certify                          # the paper's architecture, 40x40 images
  python cli.py certify --model spline-sigma15 --size 256
  python cli.py certify --preset cpu --size 256 --activation relu --json
""",
    "train": """examples:
  python cli.py train --sigma 15 --output checkpoints/spline-sigma15 --minutes 60
  python cli.py train --sigma 15 --activation relu --output checkpoints/relu-sigma15
  python cli.py train --preset paper --device cuda --sigma 15 --output runs/paper15
  torchrun --nproc_per_node=4 cli.py train --preset paper --device cuda --output runs/ddp
""",
    "publish": """examples:
  python cli.py publish checkpoints/spline-sigma15 --name spline-sigma15 --force   # replace a shipped model
  python cli.py publish runs/paper15 --name spline-paper-sigma15 --json
Measures BSD68 PSNR (../shared/data/bsd68) and the certified bound first; the shipped
weights and card are replaced only when both are measured.
""",
    "reconstruct": """examples:
  python cli.py reconstruct mri                           # Shepp-Logan phantom, random mask, x4
  python cli.py reconstruct deblur photo.png -o sharp.png --kernel motion --noise 0.01
  python cli.py reconstruct mri slice.png --acceleration 8 --mask equispaced --plot fig.png --json
  python cli.py reconstruct deblur --method red --weight 0.1 --max-iter 300
""",
    "tune": """examples:
  python cli.py tune mri-random-x4-cf0.08-noise0.002 --method pnp-fbs --models spline-sigma15 spline-sigma25
  python cli.py tune deblur-gaussian1.6-noise0.01 --method tv --limit 4 --write
  python cli.py tune mri-random-x8-cf0.04-noise0.002 --box --max-iter 2000 --device cuda --write
  # the protocol of the stored benchmark defaults: a short grid at convergence, extended past an edge optimum
  python cli.py tune deblur-uniform9-noise0.01 --models relu-sigma15 --grid strength=0.07,0.15,0.3 \\
      --set step=1.99 --set relaxation=1 --indices 0 2 4 6 --accelerate 3 --write
""",
    "benchmark": """examples:
  python cli.py benchmark layers                 # spline vs ReLU block, eval-mode overhead
  python cli.py benchmark layers --quick --output results/
  python cli.py benchmark mri --quick            # PnP / RED / TV on 2 MRI test slices
  python cli.py benchmark deblur                 # 8 blur problems (4 kernels x noise 0.01, 0.03), first 10 BSD68 images
  python cli.py benchmark mri --rows fbs-spline tv --stride 4   # a labelled subset, resumable
  python cli.py benchmark mri --rows fbs-free --chunk 4          # saves progress every 4 slices; rerun to resume
  python cli.py benchmark all --quick            # every benchmark on subsets (< 10 min on CPU)
  python cli.py benchmark report                 # rebuild results/README.md from the result files
  python cli.py benchmark speed --json --quiet   # one JSON object: the files written
  python cli.py benchmark training --device cuda # ms per training step, operator calls, GPU kernel time
""",
}


class UserError(Exception):
    """A mistake in the command line or the input: reported in one line, exit code 2."""


def _certify(args: argparse.Namespace) -> int:
    import torch

    from lipden.certify.bounds import lipschitz_bounds
    from lipden.models.denoiser import PRESETS, DenoiserConfig, LipschitzDenoiser
    from lipden.models.pretrained import load_denoiser

    torch.manual_seed(args.seed)
    if args.model:
        model = load_denoiser(args.model)
        label = args.model
    else:
        base = PRESETS[args.preset].to_dict()
        base["activation"] = args.activation
        model = LipschitzDenoiser(DenoiserConfig.from_dict(base)).eval()
        label = f"{args.preset} preset, {args.activation}, random init (seed {args.seed})"
    size = args.size if len(args.size) == 2 else args.size * 2
    shape = (1, 1, *size)
    lower, upper = lipschitz_bounds(
        model, shape, num_points=args.points, power_iterations=args.power_iterations,
        ascent_steps=args.ascent_steps,
    )
    averaged = model.averaged()
    report = {
        "model": label,
        "input_shape": list(shape),
        "lipschitz_lower": lower,
        "lipschitz_upper": upper,
        "certified_1_lipschitz": upper <= 1 + 1e-4,
        "averaged_upper": averaged.lipschitz_certificate(shape),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model: {report['model']}")
        print(f"input shape: {tuple(shape)}")
        print(f"Lipschitz constant: {lower:.6f} (measured lower bound) <= L <= {upper:.6f} (certified)")
        verdict = "yes" if report["certified_1_lipschitz"] else "NO"
        print(f"certified 1-Lipschitz: {verdict}; (Id + N)/2 firmly nonexpansive: {verdict}")
    return 0


def _denoise(args: argparse.Namespace) -> int:
    from lipden.cli.denoise import run_denoise

    return run_denoise(args)


def _train(args: argparse.Namespace) -> int:
    import torch

    from lipden.train.loop import TrainConfig, train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(
        output=args.output, sigma=args.sigma, preset=args.preset, activation=args.activation,
        conv=args.conv, train_dir=args.train_dir, val_dir=args.val_dir, batch_size=args.batch_size,
        steps=args.steps, validate_every=args.validate_every, checkpoint_minutes=args.checkpoint_minutes,
        seed=args.seed, device=device,
        lr_scale=args.lr_scale, max_minutes=args.minutes, compile_spline=args.compile,
        mixed_precision=args.mixed_precision, cuda_graph=args.cuda_graph, channels=args.channels, depth=args.depth,
    )
    summary = train(config, resume=not args.no_resume, progress=not args.quiet)
    if summary["rank"] == 0:
        print(json.dumps(summary) if args.json else
              f"trained {summary['step']} steps in {summary['elapsed_s'] / 60:.1f} min; "
              f"best validation PSNR {summary['best_psnr']:.2f} dB; files in {summary['output']}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from lipden.train.publish import publish

    card = publish(args.run, args.name, force=args.force)
    if args.json:
        print(json.dumps(card))
    else:
        print(f"published {card['name']}: BSD68 PSNR {card['bsd68_psnr']:.2f} dB at sigma {card['sigma_255']:g}, "
              f"certified Lipschitz bound {_bound_text(card['certified_lipschitz_40x40'])} (40x40), "
              f"sha256 {card['sha256'][:12]}...")
    return 0


def _bound_text(bound: float | None) -> str:
    return "none" if bound is None else f"{bound:.6f}"


def _reconstruct(args: argparse.Namespace) -> int:
    from lipden.cli.reconstruct import run_reconstruct

    return run_reconstruct(args)


def _assignments(items: list[str] | None, option: str, many: bool) -> dict:
    """``NAME=V1,V2`` (``many``) or ``NAME=V`` strings -> {name: [floats]} or {name: float}."""
    parsed: dict = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip()
        try:
            values = [float(v) for v in text.split(",")] if sep and name else None
        except ValueError:
            values = None
        if values is None or (not many and len(values) != 1):
            raise UserError(f"{option} takes NAME={'V1,V2,...' if many else 'VALUE'} with numbers, got {item!r}")
        if name in parsed:
            raise UserError(f"{option} {name} given twice")
        parsed[name] = values if many else values[0]
    return parsed


def _tune(args: argparse.Namespace) -> int:
    from lipden.optim.tuning import (
        TRIAL_MAX_ITER,
        TRIAL_TOL,
        check_grid,
        defaults_key,
        store_tuned,
        tune,
    )
    from problems import dev_set, load_ground_truths, problem_from_name
    from problems.base import TUNED_DEFAULTS_FILE

    problem = problem_from_name(args.problem)
    grid = _assignments(args.grid, "--grid", many=True) if args.grid else None
    fixed = _assignments(args.fixed, "--set", many=False)
    if args.box and {"lower", "upper"} & set(fixed):
        raise UserError("--box is the box [0, 1]: give either --box or --set lower=... / upper=...")
    fixed |= {"lower": 0.0, "upper": 1.0} if args.box else {}
    check_grid(args.method, grid or {}, fixed)
    chosen = slice(0, args.limit) if args.indices is None else args.indices
    if args.images:
        folder, source = args.images, args.images
    elif problem.kind == "mri":
        folder, source = "mri_colin27", "mri_colin27 slices"
        chosen = slice(0, min(args.limit or 8, 8)) if args.indices is None else chosen
        if args.indices is not None and max(args.indices) > 7:
            raise UserError("MRI tuning uses slices 00-07 only (08-39 are the test slices)")
    else:
        folder, source = "set12", "set12"
    images = load_ground_truths(folder, chosen) if args.images else dev_set(folder, chosen)
    if not images:
        raise UserError("no tuning images")
    if args.indices is not None:
        source += " at positions " + ", ".join(map(str, args.indices))
    elif not args.images and problem.kind == "mri":
        source += f" 00-{len(images) - 1:02d}"
    stop = {k: v for k, v in (("max_iter", args.max_iter), ("tol", args.tol)) if v is not None}
    result = tune(problem, images, args.models, args.method, progress=not args.quiet, device=args.device,
                  fixed=fixed or None, accelerate=args.accelerate, grid=grid, extend=args.extend,
                  guarantee=not args.no_guarantee, **stop)
    cap, tol = stop.get("max_iter", TRIAL_MAX_ITER), stop.get("tol", TRIAL_TOL)
    accelerate = 0 if result.method == "tv" else args.accelerate
    note = f"lipden.tune on {source} ({len(images)} images), max_iter {cap}, tol {tol:g}" + (
        f", Anderson memory {accelerate}" if accelerate else "") + (
        ", guarantee=False (no Lipschitz certificate)" if args.no_guarantee else "")
    if grid is not None:
        note += ": grid " + "; ".join(_trial_text(t, grid) for t in result.trials) + (
            f" (fixed {json.dumps(fixed, sort_keys=True)})" if fixed else "")
    if args.write:
        family = str(result.parameters["model"]).split("-sigma")[0] if "model" in result.parameters else None
        boxed = "lower" in fixed or "upper" in fixed  # --box or its own bounds: stored as METHOD:box
        store_tuned(result, TUNED_DEFAULTS_FILE, note, key=defaults_key(result.method, family, boxed),
                    max_iter=cap if cap > TRIAL_MAX_ITER else None, accelerate=accelerate)
    record = {"problem": result.problem, "method": result.method, "parameters": result.parameters,
              "psnr": result.psnr, "tuned_on": note, "trials": result.trials}
    print(json.dumps(record) if args.json else
          f"{result.problem} {result.method}: best mean PSNR {result.psnr:.2f} dB with {result.parameters} "
          f"({len(result.trials)} trials on {note})")
    return 0


def _trial_text(trial: dict, grid: dict) -> str:
    """One grid trial in a note: ``spline-sigma15 strength 0.07 -> 25.571 dB`` (+ not converged)."""
    values = " ".join(f"{name} {trial[name]:g}" for name in grid)
    model = f"{trial['model']} " if "model" in trial else ""
    return f"{model}{values} -> {trial['psnr']:.3f}" + ("" if trial["converged"] else " (not all converged)")


def _benchmark(args: argparse.Namespace) -> int:
    try:
        from benchmarks import run_benchmark
    except ImportError as error:  # installed without the source tree
        raise UserError("benchmarks run from a source checkout: python cli.py benchmark ...") from error
    import contextlib
    import time

    from benchmarks.common import WRITTEN

    options = {"problems": args.problems, "rows": args.rows, "stride": args.stride, "device": args.device,
               "force": args.force, "compile_spline": args.compile, "progress": not args.quiet, "chunk": args.chunk}
    started = time.perf_counter()
    WRITTEN.clear()
    # with --json, stdout carries only the JSON object; the benchmarks' messages go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        code = run_benchmark(args.which, quick=args.quick, output=args.output, **options)
    if args.json:
        print(json.dumps({"benchmark": args.which, "quick": args.quick, "output": args.output,
                          "files": [str(p) for p in WRITTEN], "seconds": round(time.perf_counter() - started, 1)}))
    return code


def _add_run_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--json", action="store_true", help=json_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipden",
        description="1-Lipschitz learned-spline denoisers and provably convergent reconstruction.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    denoise = sub.add_parser(
        "denoise", help="denoise images with a shipped 1-Lipschitz denoiser",
        epilog=EXAMPLES["denoise"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    denoise.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (PNG/JPEG/TIFF/NPY)")
    denoise.add_argument("-o", "--output", help="output file, or folder for several inputs")
    denoise.add_argument("--sigma", type=float,
                         help="noise level of the inputs, 0-255 scale (default: --add-noise, else 15); without "
                              "--model it picks the shipped spline model closest to it")
    denoise.add_argument("--model", help="shipped model name (e.g. relu-sigma15) or a .safetensors path")
    denoise.add_argument("--add-noise", type=float, metavar="SIGMA",
                         help="add Gaussian noise (0-255 scale) first; without --model or --sigma the shipped "
                              "spline model closest to SIGMA denoises it")
    denoise.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    denoise.add_argument("--reference", help="clean image to report PSNR/SSIM against")
    denoise.add_argument(
        "--tile", type=int, metavar="N",
        help="denoise in N x N tiles with exact context (same result, activations bounded by about "
             "3 x channels x (N + 16)^2 x 4 bytes per colour channel: 0.1 GB at N=512 for the shipped "
             "models); default: 512 above 1024 x 1024 pixels; 0: never tile",
    )
    denoise.add_argument("--quiet", action="store_true", help="no progress bar (shown for several inputs)")
    _add_run_options(denoise, "one JSON object per image")
    denoise.set_defaults(handler=_denoise)

    certify = sub.add_parser(
        "certify", help="certified and measured Lipschitz bounds of a denoiser",
        epilog=EXAMPLES["certify"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certify.add_argument("--model", help="shipped model name or .safetensors path (default: a random-init preset)")
    certify.add_argument("--preset", choices=["paper", "cpu"], default="paper",
                         help="architecture of the random-init model (paper: 64 channels, cpu: 32)")
    certify.add_argument("--activation", default="spline",
                         choices=["spline", "relu", "absolute_value", "prelu", "groupsort", "householder"],
                         help="activation of the random-init model")
    certify.add_argument("--size", type=int, nargs="+", default=[40], metavar="N",
                         help="image size: N or H W (default 40)")
    certify.add_argument("--points", type=int, default=2, help="random points for the lower bound")
    certify.add_argument("--power-iterations", type=int, default=10, help="per point, for the lower bound")
    certify.add_argument("--ascent-steps", type=int, default=20,
                         help="gradient ascent on the gain, for the lower bound")
    certify.add_argument("--seed", type=int, default=0, help="seed of the random init and of the points")
    certify.add_argument("--json", action="store_true", help="print one JSON object")
    certify.set_defaults(handler=_certify)

    from lipden.paths import default_data_root

    DEFAULT_DATA = default_data_root()
    train = sub.add_parser(
        "train", help="train a 1-Lipschitz denoiser on image patches (CPU, GPU, torchrun)",
        epilog=EXAMPLES["train"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--output", required=True, help="folder for checkpoints, best model and log.csv")
    train.add_argument("--sigma", type=float, default=15.0, help="noise level on the 0-255 scale")
    train.add_argument("--preset", choices=["paper", "cpu"], default="cpu",
                       help="paper: 64 channels, batch 128, the paper's learning rates; cpu (default): "
                            "32 channels, batch 32, 4000 steps")
    train.add_argument("--activation", default="spline",
                       choices=["spline", "relu", "absolute_value", "prelu", "groupsort", "householder"],
                       help="learned 1-Lipschitz spline (default) or a 1-Lipschitz baseline")
    train.add_argument("--conv", choices=["ortho", "spectral", "free"], default="ortho",
                       help="free = unconstrained convolutions (no guarantee)")
    train.add_argument("--train-dir", default=str(DEFAULT_DATA / "train400"),
                       help="training images (default: ../shared/data/train400)")
    train.add_argument("--val-dir", default=str(DEFAULT_DATA / "set12"),
                       help="validation images (default: ../shared/data/set12)")
    train.add_argument("--batch-size", type=int, help="patches per step (default: the preset's)")
    train.add_argument("--channels", type=int, help="override the preset's width")
    train.add_argument("--depth", type=int, help="override the preset's number of convolutions")
    train.add_argument("--steps", type=int, help="total optimizer steps (default: the preset's)")
    train.add_argument("--minutes", type=float,
                       help="stop (and save) after this wall time; the learning rates decay at 75%% of "
                            "it (or of the steps, whichever comes first)")
    train.add_argument("--lr-scale", type=float, default=1.0, help="multiply the preset's learning rates")
    train.add_argument("--validate-every", type=int, default=250, help="steps between validations and checkpoints")
    train.add_argument("--checkpoint-minutes", type=float, default=10.0,
                       help="also save the training state when this much time passed since the last save "
                            "(default 10)")
    train.add_argument("--seed", type=int, default=0, help="seed of the init and of the patch sampling")
    train.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    train.add_argument("--compile", action="store_true", help="torch.compile the spline forward")
    train.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                       help="bf16 autocast of the convolutions (default: on for CUDA and for a CPU with "
                            "native bf16, AVX-512 BF16 or AMX); constraints, splines and loss stay float32")
    train.add_argument("--cuda-graph", action="store_true",
                       help="record the step once as a CUDA graph and replay it (one GPU process; "
                            "removes the per-kernel host cost)")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    train.set_defaults(handler=_train)

    pub = sub.add_parser(
        "publish", help="ship a trained run as weights/<name> with a measured model card",
        epilog=EXAMPLES["publish"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pub.add_argument("run", help="training output folder (with best.safetensors)")
    pub.add_argument("--name", required=True, help="e.g. spline-sigma15")
    pub.add_argument("--force", action="store_true", help="replace a shipped model of that name")
    pub.add_argument("--json", action="store_true", help="print the model card as one JSON object")
    pub.set_defaults(handler=_publish)

    rec = sub.add_parser(
        "reconstruct", help="simulate a deblurring or MRI measurement and reconstruct it (PnP / RED)",
        epilog=EXAMPLES["reconstruct"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument("problem", choices=["deblur", "mri"], help="the inverse problem")
    rec.add_argument("input", nargs="?", metavar="INPUT", help="ground-truth image (default: an embedded one)")
    rec.add_argument("-o", "--output", help="write the reconstruction here")
    rec.add_argument("--kernel", choices=["gaussian", "uniform", "motion"], default="gaussian", help="deblur: blur kernel")
    rec.add_argument("--blur-sigma", type=float, default=1.6, help="Gaussian kernel std (pixels)")
    rec.add_argument("--kernel-size", type=int, help="uniform / motion kernel size (default 9 / 31)")
    rec.add_argument("--kernel-seed", type=int, default=0, help="seed of the motion kernel")
    rec.add_argument("--noise", type=float, help="noise std, images in [0, 1] (default 0.01 deblur, 0.002 MRI)")
    rec.add_argument("--acceleration", type=int, default=4, help="mri: undersampling factor (>= 1)")
    rec.add_argument("--mask", choices=["random", "gaussian", "equispaced"], default="random",
                     help="mri: k-space line mask")
    rec.add_argument("--center-fraction", type=float, help="default 0.08 at x4, 0.04 at x8")
    rec.add_argument("--mask-seed", type=int, default=0, help="mri: seed of the random mask")
    rec.add_argument("--method", default="pnp-fbs", choices=["pnp-fbs", "pnp-drs", "pnp-admm", "red"],
                     help="solver (default pnp-fbs)")
    rec.add_argument("--model", help="denoiser name or path (default: the tuned setup's, else spline-sigma15)")
    rec.add_argument("--step", type=float, help="pnp-fbs: gamma in (0, 2/L]; pnp-drs: prox gamma; red: tau")
    rec.add_argument("--strength", type=float, help="denoiser strength theta: D = (1 - theta) Id + theta N")
    rec.add_argument("--relaxation", type=float, help="Krasnosel'skii-Mann relaxation")
    rec.add_argument("--weight", type=float, help="red: regularisation weight mu")
    rec.add_argument("--lower", type=float, help="pnp-fbs / red: project onto x >= LOWER (e.g. 0), keeps the guarantee")
    rec.add_argument("--upper", type=float, help="pnp-fbs / red: project onto x <= UPPER (e.g. 1)")
    rec.add_argument("--box", action=argparse.BooleanOptionalAction, default=None,
                     help="pnp-fbs / red: constrain the estimate to [0, 1] (keeps the guarantee); default: "
                          "as the problem's best tuned setup")
    rec.add_argument("--max-iter", type=int,
                     help="iteration cap (default: the tuned setup's, at least 1000)")
    rec.add_argument("--tol", type=float, default=1e-5, help="relative fixed-point residual to stop at")
    rec.add_argument("--accelerate", type=int, metavar="M",
                     help="safeguarded Anderson acceleration with memory M, same guarantee (default: the "
                          "tuned setup's, else 3; 0: the plain iteration)")
    rec.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    rec.add_argument("--no-guarantee", action="store_true", help="run even if the convergence theorem fails")
    rec.add_argument("--plot", help="save a figure (truth, baseline, result, residual curve)")
    rec.add_argument("--tile", type=int, metavar="N",
                     help="apply the denoiser in N x N tiles (same iterates, bounded memory); default: 512 "
                          "above 1024 x 1024 pixels; 0: never tile")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_options(rec, "print one JSON object")
    rec.set_defaults(handler=_reconstruct)

    tun = sub.add_parser(
        "tune", help="coarse-to-fine tuning of solver parameters on tuning images",
        epilog=EXAMPLES["tune"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tun.add_argument("problem", help="a problem name, e.g. mri-random-x4-cf0.08-noise0.002")
    tun.add_argument("--method", default="pnp-fbs", choices=["pnp-fbs", "pnp-drs", "pnp-admm", "red", "tv"],
                     help="solver whose parameters are tuned (tv: the TV weight)")
    tun.add_argument("--models", nargs="+", default=["spline-sigma15"], help="shipped denoisers to choose from")
    tun.add_argument("--images", help="folder of tuning images (default: set12, or MRI slices 00-07)")
    tun.add_argument("--limit", type=int, help="use the first N tuning images")
    tun.add_argument("--indices", type=int, nargs="+", metavar="I",
                     help="use these tuning images (0-based positions in the sorted folder)")
    tun.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                     help="try exactly these values (repeatable: the Cartesian product) instead of the "
                          "coarse-to-fine search; values as reconstruct takes them")
    tun.add_argument("--set", action="append", metavar="NAME=VALUE", dest="fixed",
                     help="a parameter every trial gets unsearched (repeatable)")
    tun.add_argument("--extend", type=int, default=2, metavar="N",
                     help="with a one-parameter --grid: extend past an edge optimum up to N times per model, "
                          "by the grid's geometric ratio (default 2; 0: never)")
    tun.add_argument("--max-iter", type=int, help="iteration cap of each trial solve (default 1000, as the "
                     "benchmark's test solves; a cap above it is stored with --write)")
    tun.add_argument("--tol", type=float, help="relative residual that stops a trial solve (default 1e-5)")
    tun.add_argument("--accelerate", type=int, default=0, metavar="M",
                     help="Anderson memory of the trial solves (0: off); --write stores it for the test solves")
    tun.add_argument("--box", action="store_true", help="constrain the estimate to [0, 1] (pnp-fbs, red); "
                     "--write stores it as METHOD:box")
    tun.add_argument("--no-guarantee", action="store_true",
                     help="allow a denoiser without a Lipschitz certificate (free-*): trials run with "
                          "guarantee=False, relaxation as if it were nonexpansive")
    tun.add_argument("--device", default="cpu", help="where the trial solves run: cpu (default), cuda or cuda:N")
    tun.add_argument("--write", action="store_true", help="store the result in problems/tuned_defaults.json")
    tun.add_argument("--quiet", action="store_true", help="no progress bar")
    tun.add_argument("--json", action="store_true", help="print one JSON object (with every trial)")
    tun.set_defaults(handler=_tune)

    bench = sub.add_parser(
        "benchmark", help="speed and quality benchmarks (writes under results/)",
        epilog=EXAMPLES["benchmark"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("which", help="the benchmark to run; all: every one, then the report",
                       choices=["denoise", "deblur", "mri", "speed", "training", "fitting", "activations", "layers",
                                "large", "curves", "report", "all"])
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench.add_argument("--output", default="results", help="folder for JSON and Markdown results")
    bench.add_argument("--problems", nargs="+", help="deblur/mri: only these problem names")
    bench.add_argument("--rows", nargs="+", help="deblur/mri: only these rows (fbs-spline, tv, fbs-relu, ...)")
    bench.add_argument("--stride", type=int, default=1, help="deblur/mri: every N-th test image (a labelled subset)")
    bench.add_argument("--device", default="cpu", help="deblur/mri/training: cpu or cuda")
    bench.add_argument("--force", action="store_true", help="deblur/mri: recompute cached rows (a --stride row is re-taken from its full row when one exists)")
    bench.add_argument("--compile", action="store_true", help="deblur/mri: torch.compile the spline activations")
    bench.add_argument("--chunk", type=int, default=8,
                       help="deblur/mri: at most N test images per batched solve (0: all of a shape at once); "
                            "progress is saved after each batch and an interrupted row resumes there (default 8)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument("--json", action="store_true",
                       help="print one JSON object (the files written); messages go to stderr")
    bench.set_defaults(handler=_benchmark)
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.command == "denoise" and args.sigma is not None and not 0 < args.sigma < 255:
        raise UserError(f"--sigma is on the 0-255 scale and must be in (0, 255), got {args.sigma:g}")
    if args.command == "train":
        if args.batch_size is not None and args.batch_size < 1:
            raise UserError("--batch-size must be >= 1")
        if args.steps is not None and args.steps < 1:
            raise UserError("--steps must be >= 1")
        if args.validate_every < 1:
            raise UserError("--validate-every must be >= 1")
        if not args.checkpoint_minutes > 0:
            raise UserError(f"--checkpoint-minutes must be > 0, got {args.checkpoint_minutes:g}")
    if args.command in ("reconstruct", "tune"):
        if args.max_iter is not None and args.max_iter < 1:
            raise UserError("--max-iter must be >= 1")
        if args.tol is not None and not args.tol > 0:
            raise UserError("--tol must be > 0")
        if args.accelerate is not None and args.accelerate < 0:
            raise UserError(f"--accelerate is an Anderson memory and must be >= 0, got {args.accelerate}")
    if args.command == "reconstruct" and args.box:
        from lipden.optim.base import BOUND_PARAMETERS, canonical_method, parameter_names

        if BOUND_PARAMETERS[0] not in parameter_names(canonical_method(args.method)):
            raise UserError(f"--box applies to pnp-fbs and red, not {args.method}")
    if args.command == "tune" and args.box:
        from lipden.optim.base import BOUND_PARAMETERS, parameter_names

        if args.method == "tv" or BOUND_PARAMETERS[0] not in parameter_names(args.method):
            raise UserError(f"--box applies to pnp-fbs and red, not {args.method}")
    if args.command in ("tune", "benchmark"):  # denoise and reconstruct check theirs where they place tensors
        from lipden.cli.denoise import check_device

        check_device(args.device)
    if args.command == "benchmark":
        if args.stride < 1:
            raise UserError(f"--stride must be >= 1, got {args.stride}")
        if args.chunk < 0:
            raise UserError(f"--chunk must be >= 0 (0: all images of a shape at once), got {args.chunk}")
    if args.command == "tune" and args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    if args.command == "tune":
        if args.limit is not None and args.indices is not None:
            raise UserError("give --limit or --indices, not both")
        if args.indices is not None and min(args.indices) < 0:
            raise UserError("--indices are positions >= 0")
        if args.indices is not None and len(set(args.indices)) < len(args.indices):
            raise UserError("--indices repeats an image")
        if args.extend < 0:
            raise UserError("--extend must be >= 0")
    if args.command == "reconstruct" and args.noise is not None and not 0 <= args.noise < 1:
        raise UserError(f"--noise is the std on [0, 1] images and must be in [0, 1), got {args.noise:g}")
    if args.command == "certify":
        if len(args.size) not in (1, 2) or min(args.size) < 1:
            raise UserError("--size takes one or two positive integers")
        if min(args.points, args.power_iterations, args.ascent_steps) < 0 or args.points < 1:
            raise UserError("--points must be >= 1 and iteration counts >= 0")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (exit code 143)."""


class _Termination:
    """Whether a SIGTERM arrived, and whether its exception reached :func:`main`."""

    requested = False
    handled = False


#: Seconds after a SIGTERM after which it is delivered again if its exception was lost.
TERMINATION_RETRY_SECONDS = 0.5


def _set_retry_timer(seconds: float) -> None:
    if hasattr(signal, "setitimer"):  # POSIX
        signal.setitimer(signal.ITIMER_REAL, seconds)


def _raise_terminated(signum, frame) -> None:
    _Termination.requested = True
    _set_retry_timer(TERMINATION_RETRY_SECONDS)
    raise Terminated()


def _retry_termination(signum, frame) -> None:
    """SIGALRM after a SIGTERM whose exception never reached ``main``: Python drops an
    exception raised where it cannot propagate (a weakref callback, ``__del__``) and the
    command would run on. Deliver SIGTERM again (a block that holds signals, such as an
    atomic write, still defers it)."""
    if _Termination.requested and not _Termination.handled:
        signal.raise_signal(signal.SIGTERM)


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make the usage errors of the parser and its subcommands one line on stderr (exit code 2)."""

    def error(self: argparse.ArgumentParser, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    stack = [parser]
    while stack:
        current = stack.pop()
        current.error = types.MethodType(error, current)  # type: ignore[method-assign]
        stack.extend(subcommands(current).values())


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 1 (training diverged), 2 (bad input, one line on stderr),
    130 (interrupted by Ctrl-C) or 143 (SIGTERM). Outputs are written atomically, so an
    interrupted batch keeps every finished output and leaves no partial file."""
    from lipden._memory import keep_freed_memory

    keep_freed_memory()  # large activations reuse freed buffers (about 2x faster on CPU)
    parser = build_parser()
    _one_line_errors(parser)
    args = parser.parse_args(argv)
    from lipden.optim.reconstruct import SolverError  # imports torch: only once a command runs
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        _Termination.requested = _Termination.handled = False
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
        if hasattr(signal, "SIGALRM"):
            previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _retry_termination)
    try:
        _validate(args)
        return args.handler(args)
    except (UserError, ValueError, OSError, SolverError) as error:
        text = str(error)
        if hasattr(args, "no_guarantee"):  # the API's keyword, as this command spells it
            text = text.replace("pass guarantee=False", "pass --no-guarantee")
        print(f"lipden {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        _Termination.handled = True
        terminated = isinstance(interrupt, Terminated)
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"lipden {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}{detail}",
              file=sys.stderr)
        return 143 if terminated else 130
    except (MemoryError, RuntimeError) as error:
        from lipden.train.loop import TrainingDiverged

        if isinstance(error, TrainingDiverged):
            print(f"lipden {args.command}: error: {error}", file=sys.stderr)
            return 1
        if not _out_of_memory(error):
            raise
        hint = "; try --tile 256" if args.command == "denoise" else ""
        print(f"lipden {args.command}: error: out of memory{hint}", file=sys.stderr)
        return 2
    finally:
        _Termination.handled = True
        if previous:
            _set_retry_timer(0)
            for number, handler in previous.items():
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
