"""What the commands share: the user-error type, shared options and checks of devices, files and folders.

Nothing here imports torch at module level: every command's ``--help`` imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Images with more pixels than this are tiled unless ``--tile`` says otherwise.
AUTO_TILE_PIXELS = 1024 * 1024
#: Tile size used for such images: activations of about 0.21 GB for a 64-channel model.
AUTO_TILE = 512
#: Activation names of ``--activation`` (the keys of ``lipden.nn.activations.ACTIVATIONS``, which
#: imports torch: a test keeps the two equal).
ACTIVATION_CHOICES = ["spline", "relu", "absolute_value", "prelu", "groupsort", "householder"]
#: Starts of ``--spline-init`` (``lipden.nn.splines.SPLINE_INITS``, kept equal by the same test).
SPLINE_INIT_CHOICES = ["identity", "relu", "absolute_value", "maxmin", "zero"]


class UserError(Exception):
    """A mistake in the command line or the input: reported in one line, exit code 2."""


def add_command_parser(subparsers: argparse._SubParsersAction, name: str, summary: str,
                       examples: str) -> argparse.ArgumentParser:
    """The parser of one command: its one-line ``summary`` in ``lipden --help``, its ``examples`` after
    its options."""
    return subparsers.add_parser(name, help=summary, epilog=examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """``--device``, ``--force`` and ``--json``, as the commands that write images spell them."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--json", action="store_true", help=json_help)


SPLINE_KERNEL_HELP = ("how the spline activations run on the CPU: eager (default), compiled (torch.compile) "
                      "or native (a C++ kernel built with this machine's compiler on first use, about a minute, "
                      "then cached; the same outputs, about 1.3x faster solves with the 64-channel priors)")


def add_spline_kernel_option(parser: argparse.ArgumentParser) -> None:
    """``--spline-kernel``, for the commands that evaluate denoisers many times."""
    parser.add_argument("--spline-kernel", choices=("eager", "compiled", "native"), default="eager",
                        help=SPLINE_KERNEL_HELP)


@contextlib.contextmanager
def spline_kernel(name: str) -> Iterator[None]:
    """Run the block with the spline kernel ``name``, then restore the previous one; ``native``
    where it cannot be built says so on stderr and runs eager."""
    import sys

    from lipden.nn.splines import native_spline_module, spline_backend

    with spline_backend(name):
        if name == "native" and native_spline_module() is None:
            from lipden.nn._native import build_error

            print(f"the native spline kernel could not be built ({build_error()}); using eager", file=sys.stderr)
            with spline_backend("eager"):
                yield
        else:
            yield


def check_stop_options(args: argparse.Namespace) -> None:
    """``--max-iter``, ``--tol`` and ``--accelerate`` of the commands that solve (reconstruct, tune)."""
    if args.max_iter is not None and args.max_iter < 1:
        raise UserError("--max-iter must be >= 1")
    if args.tol is not None and not args.tol > 0:
        raise UserError("--tol must be > 0")
    if args.accelerate is not None and args.accelerate < 0:
        raise UserError(f"--accelerate is an Anderson memory and must be >= 0, got {args.accelerate}")


def check_box_applies(method: str) -> None:
    """A ``UserError`` unless ``method`` takes box bounds (``--box``: pnp-fbs and red)."""
    from lipden.optim.base import BOUND_PARAMETERS, canonical_method, parameter_names

    if method == "tv" or BOUND_PARAMETERS[0] not in parameter_names(canonical_method(method)):
        raise UserError(f"--box applies to pnp-fbs and red, not {method}")


def check_device(name: str) -> torch.device:
    """``torch.device(name)`` if it exists on this machine, else a ``ValueError`` saying why."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def check_writable_folder(folder: Path) -> None:
    """A ``FileNotFoundError`` / ``PermissionError`` unless outputs can be created in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder is not writable: {folder}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (through links, case-insensitive file systems, ...)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_tile(tile: int | None) -> None:
    """A ``ValueError`` for a negative ``--tile``."""
    if tile is not None and tile < 0:
        raise ValueError(f"--tile must be >= 1 (or 0: never tile), got {tile}")


def tile_for(tile: int | None, shape: torch.Size | tuple[int, ...]) -> int | None:
    """The tile size to use: ``tile`` (0: never), else 512 above 1024 x 1024 pixels."""
    if tile == 0:
        return None
    if tile is not None:
        return tile
    return AUTO_TILE if shape[-2] * shape[-1] > AUTO_TILE_PIXELS else None
