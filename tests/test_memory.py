"""``lipden.memory``: the glibc setting that lets large freed buffers be reused."""

import pathlib
import platform
import subprocess
import sys

import pytest

from lipden.memory import freed_memory_kept, keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_keep_freed_memory_is_idempotent_and_reported():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    assert freed_memory_kept() is first
    assert first is GLIBC


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_command_line_applies_it_and_the_library_does_not():
    code = (
        "import lipden, lipden.cli\n"
        "from lipden.memory import freed_memory_kept\n"
        "before = freed_memory_kept()\n"
        "try:\n    lipden.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(before, freed_memory_kept())\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False True"
