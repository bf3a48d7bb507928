"""Benchmarks run by ``python cli.py benchmark WHICH``; each writes JSON + Markdown under results/."""

from __future__ import annotations


def run_benchmark(which: str, quick: bool = False, output: str = "results") -> int:
    if which == "layers":
        from .layers import run

        run(quick=quick, output=output)
        return 0
    if which in ("mri", "deblur"):
        from .reconstruction import run as run_reconstruction

        run_reconstruction(which, quick=quick, output=output)
        return 0
    raise ValueError(f"unknown benchmark {which!r}")
