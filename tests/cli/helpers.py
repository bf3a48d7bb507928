"""Helpers of the command-line tests: run ``lipden.cli.main`` in-process and check one-line errors."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from PIL import Image

from lipden.cli import main
from tests.helpers import ROOT

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: Reconstruct options that keep a bad-input case fast.
FAST = ["--max-iter", "3", "--quiet"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in a fresh process, from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def cli(capsys, *args) -> tuple[int, str, str]:
    """``lipden.cli.main(ARGS)`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, pattern: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def new_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


def valid_file(folder: Path, suffix: str) -> Path:
    data = (np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8)
    path = folder / f"valid{suffix}"
    if suffix == ".npy":
        np.save(path, data.astype(np.float32) / 255)
    else:
        Image.fromarray(data).save(path)
    return path

