"""Command-line interface: ``python cli.py COMMAND``, ``python -m lipden COMMAND`` or the ``lipden`` console command.

Each command lives in its own module, listed in :data:`COMMANDS`; the module is imported only
when its parser is built or the command runs, and imports torch and friends only inside its
``run(args)``. This module holds what every command shares: one-line errors (exit code 2),
SIGTERM handled like Ctrl-C (exit codes 143 and 130) and out-of-memory reported in one line.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

from lipden.cli._common import UserError

__all__ = ["COMMANDS", "UserError", "build_parser", "main", "subcommands"]

#: command name -> the module that defines it (``add_parser(subparsers)`` and ``run(args) -> int``),
#: in the order ``lipden --help`` lists them.
COMMANDS: dict[str, str] = {
    "denoise": "lipden.cli.denoise",
    "certify": "lipden.cli.certify",
    "train": "lipden.cli.train",
    "publish": "lipden.cli.publish",
    "reconstruct": "lipden.cli.reconstruct",
    "tune": "lipden.cli.tune",
    "benchmark": "lipden.cli.benchmark",
}


def command_module(name: str) -> types.ModuleType:
    """The module of command ``name`` (imported on first use)."""
    return importlib.import_module(COMMANDS[name])


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``lipden`` parser with the subcommands ``commands`` (default: every one in :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="lipden",
        description="1-Lipschitz learned-spline denoisers and provably convergent reconstruction.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS if commands is None else commands:
        command_module(name).add_parser(subparsers)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make the usage errors of the parser and its subcommands one line on stderr (exit code 2)."""

    def error(self: argparse.ArgumentParser, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    stack = [parser]
    while stack:
        current = stack.pop()
        current.error = types.MethodType(error, current)  # type: ignore[method-assign]
        stack.extend(subcommands(current).values())


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line, building only the named command's parser when the first word names one
    (the top-level parser has no option but ``--help``, so the first word is the command)."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser([words[0]] if words and words[0] in COMMANDS else None)
    _one_line_errors(parser)
    return parser.parse_args(words)


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


def _install_termination_handlers() -> dict[int, Any]:
    """SIGTERM raises :class:`Terminated`, SIGALRM redelivers a lost one; returns the previous handlers
    (none outside the main thread, where handlers cannot be set)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        _Termination.requested = _Termination.handled = False
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
        if hasattr(signal, "SIGALRM"):
            previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _retry_termination)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    _Termination.handled = True
    if previous:
        _set_retry_timer(0)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _fail(command: str, text: str, code: int = 2) -> int:
    sys.stderr.write(f"lipden {command}: error: {text}\n")  # one write: ranks sharing stderr do not interleave
    sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 1 (training diverged), 2 (bad input, one line on stderr),
    130 (interrupted by Ctrl-C) or 143 (SIGTERM). Outputs are written atomically, so an
    interrupted batch keeps every finished output and leaves no partial file."""
    from lipden.memory import keep_freed_memory

    keep_freed_memory()  # large activations reuse freed buffers (about 2x faster on CPU)
    args = _parse(argv)
    from lipden.optim.reconstruct import SolverError  # imports torch: only once a command runs

    module = command_module(args.command)
    previous = _install_termination_handlers()
    try:
        return module.run(args)
    except (UserError, ValueError, OSError, SolverError) as error:
        text = str(error)
        if hasattr(args, "no_guarantee"):  # the API's keyword, as this command spells it
            text = text.replace("pass guarantee=False", "pass --no-guarantee")
        return _fail(args.command, text)
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
            return _fail(args.command, str(error), code=1)
        if not _out_of_memory(error):
            raise
        return _fail(args.command, "out of memory" + getattr(module, "OUT_OF_MEMORY_HINT", ""))
    finally:
        _restore_handlers(previous)


if __name__ == "__main__":
    sys.exit(main())
