"""``lipden certify``: the certified upper and the measured lower Lipschitz bound of a denoiser."""

from __future__ import annotations

import argparse
import json

from lipden.cli._common import ACTIVATION_CHOICES, UserError, add_command_parser

EXAMPLES = """examples:
  python cli.py certify                          # the paper's architecture, 40x40 images
  python cli.py certify --model spline-sigma15 --size 256
  python cli.py certify --preset cpu --size 256 --activation relu --json
"""

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``certify`` parser and its options."""
    parser = add_command_parser(subparsers, "certify", "certified and measured Lipschitz bounds of a denoiser",
                                EXAMPLES)
    parser.add_argument("--model", help="shipped model name or .safetensors path (default: a random-init preset)")
    parser.add_argument("--preset", choices=["paper", "cpu"], default="paper",
                        help="architecture of the random-init model (paper: 64 channels, cpu: 32)")
    parser.add_argument("--activation", default="spline", choices=ACTIVATION_CHOICES,
                        help="activation of the random-init model")
    parser.add_argument("--size", type=int, nargs="+", default=[40], metavar="N",
                        help="image size: N or H W (default 40)")
    parser.add_argument("--points", type=int, default=2, help="random points for the lower bound")
    parser.add_argument("--power-iterations", type=int, default=10, help="per point, for the lower bound")
    parser.add_argument("--ascent-steps", type=int, default=20,
                        help="gradient ascent on the gain, for the lower bound")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init and of the points")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def check(args: argparse.Namespace) -> None:
    """Refuse an image size or iteration counts that cannot be used."""
    if len(args.size) not in (1, 2) or min(args.size) < 1:
        raise UserError("--size takes one or two positive integers")
    if min(args.points, args.power_iterations, args.ascent_steps) < 0 or args.points < 1:
        raise UserError("--points must be >= 1 and iteration counts >= 0")


def run(args: argparse.Namespace) -> int:
    """Certify a shipped model (``--model``) or a random-init preset on images of ``--size``; print
    the bounds and whether the denoiser (hence ``(Id + N)/2``) is certified."""
    check(args)
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
    report = {
        "model": label,
        "input_shape": list(shape),
        "lipschitz_lower": lower,
        "lipschitz_upper": upper,
        "certified_1_lipschitz": upper <= 1 + 1e-4,
        "averaged_upper": model.averaged().lipschitz_certificate(shape),
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
