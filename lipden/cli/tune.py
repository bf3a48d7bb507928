"""``lipden tune``: search a solver's parameters on tuning images (never the test images), and store them."""

from __future__ import annotations

import argparse
import json
from types import ModuleType
from typing import Any

from lipden.cli._common import (
    UserError,
    add_command_parser,
    add_spline_kernel_option,
    check_box_applies,
    check_device,
    check_stop_options,
    spline_kernel,
)

EXAMPLES = """examples:
  python cli.py tune mri-random-x4-cf0.08-noise0.002 --method pnp-fbs --models spline-sigma15 spline-sigma25
  python cli.py tune deblur-gaussian1.6-noise0.01 --method tv --limit 4 --write
  python cli.py tune mri-random-x8-cf0.04-noise0.002 --box --max-iter 2000 --device cuda --write
  # the protocol of the stored benchmark defaults: a short grid at convergence, extended past an edge optimum
  python cli.py tune deblur-uniform9-noise0.01 --models relu-sigma15 --grid strength=0.07,0.15,0.3 \\
      --set step=1.99 --set relaxation=1 --indices 0 2 4 6 --accelerate 3 --write
"""

#: MRI tuning slices: 00-07 of mri_colin27 (08-39 are the test slices).
MRI_TUNING_SLICES = 8


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``tune`` parser and its options."""
    parser = add_command_parser(subparsers, "tune", "coarse-to-fine tuning of solver parameters on tuning images",
                                EXAMPLES)
    parser.add_argument("problem", help="a problem name, e.g. mri-random-x4-cf0.08-noise0.002")
    parser.add_argument("--method", default="pnp-fbs", choices=["pnp-fbs", "pnp-drs", "pnp-admm", "red", "tv"],
                        help="solver whose parameters are tuned (tv: the TV weight)")
    parser.add_argument("--models", nargs="+", default=["spline-sigma15"], help="shipped denoisers to choose from")
    parser.add_argument("--images", help="folder of tuning images (default: set12, or MRI slices 00-07)")
    parser.add_argument("--limit", type=int, help="use the first N tuning images")
    parser.add_argument("--indices", type=int, nargs="+", metavar="I",
                        help="use these tuning images (0-based positions in the sorted folder)")
    parser.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                        help="try exactly these values (repeatable: the Cartesian product) instead of the "
                             "coarse-to-fine search; values as reconstruct takes them")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", dest="fixed",
                        help="a parameter every trial gets unsearched (repeatable)")
    parser.add_argument("--extend", type=int, default=2, metavar="N",
                        help="with a one-parameter --grid: extend past an edge optimum up to N times per model, "
                             "by the grid's geometric ratio (default 2; 0: never)")
    parser.add_argument("--max-iter", type=int, help="iteration cap of each trial solve (default 1000, as the "
                        "benchmark's test solves; a cap above it is stored with --write)")
    parser.add_argument("--tol", type=float, help="relative residual that stops a trial solve (default 1e-5)")
    parser.add_argument("--accelerate", type=int, default=0, metavar="M",
                        help="Anderson memory of the trial solves (0: off); --write stores it for the test solves")
    parser.add_argument("--box", action="store_true", help="constrain the estimate to [0, 1] (pnp-fbs, red); "
                        "--write stores it as METHOD:box")
    parser.add_argument("--no-guarantee", action="store_true",
                        help="allow a denoiser without a Lipschitz certificate (free-*): trials run with "
                             "guarantee=False, relaxation as if it were nonexpansive")
    parser.add_argument("--device", default="cpu", help="where the trial solves run: cpu (default), cuda or cuda:N")
    parser.add_argument("--write", action="store_true", help="store the result in problems/tuned_defaults.json")
    add_spline_kernel_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with every trial)")


def check(args: argparse.Namespace) -> None:
    """Refuse options that contradict each other or cannot be used, before any work."""
    check_stop_options(args)
    if args.box:
        check_box_applies(args.method)
    check_device(args.device)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    if args.limit is not None and args.indices is not None:
        raise UserError("give --limit or --indices, not both")
    if args.indices is not None and min(args.indices) < 0:
        raise UserError("--indices are positions >= 0")
    if args.indices is not None and len(set(args.indices)) < len(args.indices):
        raise UserError("--indices repeats an image")
    if args.extend < 0:
        raise UserError("--extend must be >= 0")


def assignments(items: list[str] | None, option: str, many: bool) -> dict[str, Any]:
    """``NAME=V1,V2`` (``many``) or ``NAME=V`` strings -> {name: [floats]} or {name: float}."""
    parsed: dict[str, Any] = {}
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


def run(args: argparse.Namespace) -> int:
    """Tune ``--method`` on ``args.problem`` over the tuning images, print the best parameters and their
    mean PSNR, and with ``--write`` store them (with a note of how) in problems/tuned_defaults.json."""
    check(args)
    with spline_kernel(args.spline_kernel):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import problems
    from lipden.optim.tuning import (
        TRIAL_MAX_ITER,
        TRIAL_TOL,
        check_grid,
        defaults_key,
        store_tuned,
        tune,
    )
    from problems.base import TUNED_DEFAULTS_FILE

    problem = problems.problem_from_name(args.problem)
    grid = assignments(args.grid, "--grid", many=True) if args.grid else None
    fixed = assignments(args.fixed, "--set", many=False)
    if args.box and {"lower", "upper"} & set(fixed):
        raise UserError("--box is the box [0, 1]: give either --box or --set lower=... / upper=...")
    fixed |= {"lower": 0.0, "upper": 1.0} if args.box else {}
    check_grid(args.method, grid or {}, fixed)
    images, source = _tuning_images(args, problem.kind, problems)
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


def _tuning_images(args: argparse.Namespace, kind: str, problems: ModuleType) -> tuple[list, str]:
    """The tuning images (``--images``, else set12 or MRI slices 00-07) and how the note names them."""
    chosen: slice | list[int] = slice(0, args.limit) if args.indices is None else args.indices
    if args.images:
        folder, source = args.images, args.images
    elif kind == "mri":
        folder, source = "mri_colin27", "mri_colin27 slices"
        chosen = slice(0, min(args.limit or MRI_TUNING_SLICES, MRI_TUNING_SLICES)) if args.indices is None else chosen
        if args.indices is not None and max(args.indices) > MRI_TUNING_SLICES - 1:
            raise UserError("MRI tuning uses slices 00-07 only (08-39 are the test slices)")
    else:
        folder, source = "set12", "set12"
    images = problems.load_ground_truths(folder, chosen) if args.images else problems.dev_set(folder, chosen)
    if not images:
        raise UserError("no tuning images")
    if args.indices is not None:
        source += " at positions " + ", ".join(map(str, args.indices))
    elif not args.images and kind == "mri":
        source += f" 00-{len(images) - 1:02d}"
    return images, source


def _trial_text(trial: dict, grid: dict) -> str:
    """One grid trial in a note: ``spline-sigma15 strength 0.07 -> 25.571 dB`` (+ not converged)."""
    values = " ".join(f"{name} {trial[name]:g}" for name in grid)
    model = f"{trial['model']} " if "model" in trial else ""
    return f"{model}{values} -> {trial['psnr']:.3f}" + ("" if trial["converged"] else " (not all converged)")
