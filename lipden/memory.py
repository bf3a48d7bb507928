"""Keep large freed CPU buffers for reuse instead of handing them back to the OS (glibc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on free, so each new activation of that size page-faults on first
touch. A denoiser's activations on a batch of images are larger than that (8 x 32 x 256 x
256 float32 = 64 MiB), and the page faults then cost more than the arithmetic
(``python cli.py benchmark speed`` measures it; results/speed.md).

``keep_freed_memory()`` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, so a freed
block is reused by the next allocation of that size) and a high ``M_TRIM_THRESHOLD`` (freed
memory at the top of the heap is kept up to that amount). It changes the whole process's
allocator, so the command-line entry point calls it, not the library on import. Peak memory
is unchanged; the process keeps what it freed until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_STATE = {"applied": False}


def keep_freed_memory(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Make glibc reuse freed large blocks; returns True if applied (False off glibc).

    Safe to call more than once; a no-op on macOS, Windows or musl.
    """
    if _STATE["applied"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_bytes)))
    _STATE["applied"] = applied
    return applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _STATE["applied"]
