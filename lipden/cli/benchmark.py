"""``lipden benchmark``: speed and quality benchmarks, written under results/ (from a source checkout)."""

from __future__ import annotations

import argparse
import json
import sys

from lipden.cli._common import (
    UserError,
    add_command_parser,
    add_spline_kernel_option,
    check_device,
    spline_kernel,
)

EXAMPLES = """examples:
  python cli.py benchmark layers                 # spline vs ReLU block, eval-mode overhead
  python cli.py benchmark layers --quick --output results/
  python cli.py benchmark mri --quick            # PnP / RED / TV on 2 MRI test slices
  python cli.py benchmark claim                  # spline vs the other 1-Lipschitz activations at an equal budget
  python cli.py benchmark deblur                 # 8 blur problems (4 kernels x noise 0.01, 0.03), first 10 BSD68 images
  python cli.py benchmark mri --rows fbs-spline tv --stride 4   # a labelled subset, resumable
  python cli.py benchmark mri --rows fbs-free --chunk 4          # saves progress every 4 slices; rerun to resume
  python cli.py benchmark all --quick            # every benchmark on subsets (< 10 min on CPU)
  python cli.py benchmark report                 # rebuild results/README.md from the result files
  python cli.py benchmark speed --json --quiet   # one JSON object: the files written
  python cli.py benchmark training --device cuda # ms per training step, operator calls, GPU kernel time
"""

#: The benchmarks of ``benchmarks.run_benchmark``; all: every one, then the report.
BENCHMARKS = ["denoise", "claim", "deblur", "mri", "speed", "training", "fitting", "activations", "layers", "large", "curves",
              "report", "all"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``benchmark`` parser and its options."""
    parser = add_command_parser(subparsers, "benchmark", "speed and quality benchmarks (writes under results/)",
                                EXAMPLES)
    parser.add_argument("which", help="the benchmark to run; all: every one, then the report", choices=BENCHMARKS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--output", default="results", help="folder for JSON and Markdown results")
    parser.add_argument("--problems", nargs="+", help="deblur/mri: only these problem names")
    parser.add_argument("--rows", nargs="+", help="deblur/mri: only these rows (fbs-spline, tv, fbs-relu, ...)")
    parser.add_argument("--stride", type=int, default=1,
                        help="deblur/mri: every N-th test image (a labelled subset)")
    parser.add_argument("--device", default="cpu", help="deblur/mri/training: cpu or cuda")
    parser.add_argument("--force", action="store_true",
                        help="deblur/mri: recompute cached rows (a --stride row is re-taken from its full row "
                             "when one exists); denoise: measure every row again, not only those whose weights, "
                             "method or grid changed")
    parser.add_argument("--compile", action="store_true", help="the same as --spline-kernel compiled")
    parser.add_argument("--chunk", type=int, default=8,
                        help="deblur/mri: at most N test images per batched solve (0: all of a shape at once); "
                             "progress is saved after each batch and an interrupted row resumes there (default 8)")
    add_spline_kernel_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (the files written); messages go to stderr")


def check(args: argparse.Namespace) -> None:
    """Refuse a device, stride or batch size that cannot be used, before any work."""
    check_device(args.device)
    if args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    if args.compile and args.spline_kernel not in ("eager", "compiled"):
        raise UserError(f"--compile is --spline-kernel compiled; it contradicts --spline-kernel {args.spline_kernel}")
    if args.chunk < 0:
        raise UserError(f"--chunk must be >= 0 (0: all images of a shape at once), got {args.chunk}")


def run(args: argparse.Namespace) -> int:
    """Run one benchmark (or all); with ``--json``, stdout carries only one JSON object listing the files
    written, and the benchmarks' messages go to stderr."""
    check(args)
    with spline_kernel("compiled" if args.compile else args.spline_kernel):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        from benchmarks import run_benchmark
    except ImportError as error:  # installed without the source tree
        raise UserError("benchmarks run from a source checkout: python cli.py benchmark ...") from error
    import contextlib
    import time

    from benchmarks.common import WRITTEN

    options = {"problems": args.problems, "rows": args.rows, "stride": args.stride, "device": args.device,
               "force": args.force, "progress": not args.quiet, "chunk": args.chunk}
    started = time.perf_counter()
    WRITTEN.clear()
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        code = run_benchmark(args.which, quick=args.quick, output=args.output, **options)
    if args.json:
        print(json.dumps({"benchmark": args.which, "quick": args.quick, "output": args.output,
                          "files": [str(p) for p in WRITTEN], "seconds": round(time.perf_counter() - started, 1)}))
    return code
