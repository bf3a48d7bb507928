"""``lipden publish``: ship a training run as ``weights/<name>`` with a measured model card."""

from __future__ import annotations

import argparse
import json

from lipden.cli._common import add_command_parser

EXAMPLES = """examples:
  python cli.py publish checkpoints/spline-sigma15 --name spline-sigma15 --force   # replace a shipped model
  python cli.py publish runs/paper15 --name spline-paper-sigma15 --json
Measures BSD68 PSNR (../shared/data/bsd68) and the certified bound first; the shipped
weights and card are replaced only when both are measured.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``publish`` parser and its options."""
    parser = add_command_parser(subparsers, "publish",
                                "ship a trained run as weights/<name> with a measured model card", EXAMPLES)
    parser.add_argument("run", help="training output folder (with best.safetensors)")
    parser.add_argument("--name", required=True, help="e.g. spline-sigma15")
    parser.add_argument("--force", action="store_true", help="replace a shipped model of that name")
    parser.add_argument("--json", action="store_true", help="print the model card as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Publish the run's best model and print its card (BSD68 PSNR, certified bound, sha256)."""
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
