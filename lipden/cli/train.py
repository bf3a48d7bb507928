"""``lipden train``: train a 1-Lipschitz denoiser on image patches (CPU, GPU, torchrun), resumable."""

from __future__ import annotations

import argparse
import json

from lipden.cli._common import (
    ACTIVATION_CHOICES,
    SPLINE_INIT_CHOICES,
    UserError,
    add_command_parser,
)

EXAMPLES = """examples:
  python cli.py train --sigma 15 --output checkpoints/spline-sigma15 --minutes 60
  python cli.py train --sigma 15 --activation relu --output checkpoints/relu-sigma15
  python cli.py train --sigma 25 --channels 64 --batch-size 64 --init-from spline-sigma15 --output runs/warm25
  python cli.py train --preset paper --device cuda --sigma 15 --output runs/paper15
  torchrun --nproc_per_node=4 cli.py train --preset paper --device cuda --output runs/ddp
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``train`` parser and its options."""
    from lipden.paths import default_data_root

    data = default_data_root()
    parser = add_command_parser(subparsers, "train",
                                "train a 1-Lipschitz denoiser on image patches (CPU, GPU, torchrun)", EXAMPLES)
    parser.add_argument("--output", required=True, help="folder for checkpoints, best model and log.csv")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the run in --output, its recipe (noise level, network and activation, batch, "
                             "steps, learning rates, seed, start, validation interval, time budget) taken from "
                             "its state; "
                             "the options given here must agree with it")
    parser.add_argument("--sigma", type=float, help="noise level on the 0-255 scale (default 15)")
    parser.add_argument("--preset", choices=["paper", "cpu"],
                        help="paper: 64 channels, batch 128, the paper's learning rates; cpu (default): "
                             "32 channels, batch 32, 4000 steps")
    parser.add_argument("--activation", choices=ACTIVATION_CHOICES,
                        help="learned 1-Lipschitz spline (default) or a 1-Lipschitz baseline")
    parser.add_argument("--conv", choices=["ortho", "spectral", "free"],
                        help="ortho (default); free = unconstrained convolutions (no guarantee)")
    parser.add_argument("--train-dir", default=str(data / "train400"),
                        help="training images (default: ../shared/data/train400)")
    parser.add_argument("--val-dir", default=str(data / "set12"),
                        help="validation images (default: ../shared/data/set12)")
    parser.add_argument("--batch-size", type=int, help="patches per step (default: the preset's)")
    parser.add_argument("--channels", type=int, help="override the preset's width")
    parser.add_argument("--depth", type=int, help="override the preset's number of convolutions")
    parser.add_argument("--steps", type=int,
                        help="total optimizer steps (default: the preset's); with --resume it may differ "
                             "from the run's only before the learning-rate decay of both")
    parser.add_argument("--minutes", type=float,
                        help="stop (and save) after this wall time; the learning rates decay at 75%% of "
                             "it (or of the steps, whichever comes first)")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="stop (validate and save) at this step, keeping the schedule of --steps; "
                             "rerun without it to go on")
    parser.add_argument("--lr-scale", type=float, help="multiply the preset's learning rates (default 1)")
    parser.add_argument("--lr-spline", type=float, metavar="LR",
                        help="learning rate of the spline coefficients instead of the preset's (times "
                             "--lr-scale)")
    parser.add_argument("--validate-every", type=int,
                        help="steps between validations and checkpoints (default 250)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0,
                        help="also save the training state when this much time passed since the last save "
                             "(default 10)")
    parser.add_argument("--seed", type=int, help="seed of the init and of the patch sampling (default 0)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the spline forward (where the native kernel is not used)")
    parser.add_argument("--spline-kernel", choices=("auto", "eager", "compiled", "native"), default="auto",
                        help="how splines run: auto (default) takes the C++ kernel on a CPU where it builds, "
                             "else compiled with --compile, else eager; a resumed run keeps its kernel")
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast of the convolutions (default: on for CUDA and for a CPU with "
                             "native bf16, AVX-512 BF16 or AMX); constraints, splines and loss stay float32")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="record the step once as a CUDA graph and replay it (one GPU process; "
                             "removes the per-kernel host cost)")
    parser.add_argument("--init-from", metavar="WEIGHTS",
                        help="start a new run from trained weights instead of a random init: a shipped name "
                             "(spline-sigma15), a denoiser file (a run's best.safetensors) or a training state, "
                             "of the same network; "
                             "its noise level may differ (fine-tuning, a warm start at another sigma)")
    parser.add_argument("--spline-init", choices=SPLINE_INIT_CHOICES,
                        help="what the splines of a run from a random init start as: identity (default, the "
                             "paper's), relu, absolute_value, maxmin or zero; with --init-from they start as "
                             "the source's")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def check(args: argparse.Namespace) -> None:
    """Refuse step counts and intervals that cannot be used."""
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be >= 1")
    if args.stop_at is not None and args.stop_at < 1:
        raise UserError("--stop-at must be >= 1")
    if args.lr_spline is not None and not args.lr_spline > 0:
        raise UserError(f"--lr-spline must be > 0, got {args.lr_spline:g}")
    if args.validate_every is not None and args.validate_every < 1:
        raise UserError("--validate-every must be >= 1")
    if not args.checkpoint_minutes > 0:
        raise UserError(f"--checkpoint-minutes must be > 0, got {args.checkpoint_minutes:g}")


#: The recipe options' values when neither given nor resumed (the preset fills batch, steps, rates).
RECIPE_DEFAULTS = {"sigma": 15.0, "preset": "cpu", "activation": "spline", "conv": "ortho", "validate_every": 250,
                   "seed": 0, "lr_scale": 1.0}


def _recorded_recipe(output: str, given: dict) -> dict:
    """The recipe a run's state recorded (``--resume``): the resolved settings of
    ``lipden.train.config.RECIPE_FIELDS`` plus the preset, width, depth, rate scale, validation
    interval and time budget. A given ``--preset`` or ``--lr-scale`` derives the batch, steps and the rates
    that came from the preset again (the resume then compares them with the recorded ones); a rate that
    was given (``--lr-spline``) stays."""
    import math
    from pathlib import Path

    from lipden.models.checkpoint import load_tensors
    from lipden.train.config import PREDATED_RECIPE, RECIPE_FIELDS, TRAINING_PRESETS

    state = Path(output) / "train_state.safetensors"
    if not state.is_file():
        raise UserError(f"--resume: {state} does not exist (nothing to go on with)")
    recorded = {**PREDATED_RECIPE, **load_tensors(state)[1].get("train_config", {})}
    keep = set(RECIPE_FIELDS) | {"preset", "channels", "depth", "validate_every", "max_minutes", "lr_scale"}
    if {"preset", "lr_scale"} & set(given):
        preset, scale = TRAINING_PRESETS.get(recorded.get("preset", "")), recorded.get("lr_scale") or 1.0
        keep -= {rate for rate in ("lr_conv", "lr_spline", "lr_scaling")  # those the preset gave
                 if preset is None or math.isclose(recorded.get(rate) or 0.0, preset[rate] * scale, rel_tol=1e-9)}
        keep -= {"batch_size", "steps"} if "preset" in given else set()
    return {key: value for key, value in recorded.items() if key in keep}


def run(args: argparse.Namespace) -> int:
    """Train (resuming the run in ``--output`` unless ``--no-resume``) and print a summary from rank 0;
    exit code 1 (from :func:`lipden.cli.main`) when training diverges."""
    check(args)
    import torch

    from lipden.train.loop import TrainConfig, train

    if args.resume and args.no_resume:
        raise UserError("--resume and --no-resume contradict each other")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipe = {"sigma": args.sigma, "preset": args.preset, "activation": args.activation, "conv": args.conv,
              "batch_size": args.batch_size, "steps": args.steps, "validate_every": args.validate_every,
              "seed": args.seed, "lr_scale": args.lr_scale, "max_minutes": args.minutes, "channels": args.channels,
              "depth": args.depth, "init_from": args.init_from, "spline_init": args.spline_init,
              "lr_spline": args.lr_spline}
    given = {key: value for key, value in recipe.items() if value is not None}
    base = _recorded_recipe(args.output, given) if args.resume else RECIPE_DEFAULTS
    config = TrainConfig(
        output=args.output, train_dir=args.train_dir, val_dir=args.val_dir,
        checkpoint_minutes=args.checkpoint_minutes, device=device, stop_at=args.stop_at,
        replan_steps=args.steps is not None,
        compile_spline=args.compile, spline_kernel=args.spline_kernel, mixed_precision=args.mixed_precision,
        cuda_graph=args.cuda_graph, **{**base, **given},
    )
    summary = train(config, resume=not args.no_resume, progress=not args.quiet)
    if summary["rank"] == 0:
        print(json.dumps(summary) if args.json else
              f"trained {summary['step']} steps in {summary['elapsed_s'] / 60:.1f} min; "
              f"best validation PSNR {summary['best_psnr']:.2f} dB; files in {summary['output']}")
    return 0
