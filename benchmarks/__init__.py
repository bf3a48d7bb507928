"""Benchmarks run by ``python cli.py benchmark WHICH``; each writes JSON + Markdown under results/.

Each benchmark module exposes ``run(quick: bool = False, output: str = "results") -> dict``.
"""

from __future__ import annotations

import importlib

#: benchmark name -> (module, extra keyword arguments of its ``run``)
BENCHMARKS: dict[str, tuple[str, dict]] = {
    "denoise": ("benchmarks.denoise", {}),
    "claim": ("benchmarks.claim", {}),
    "deblur": ("benchmarks.reconstruction", {"kind": "deblur"}),
    "mri": ("benchmarks.reconstruction", {"kind": "mri"}),
    "speed": ("benchmarks.speed", {}),
    "training": ("benchmarks.training", {}),
    "fitting": ("benchmarks.fitting", {}),
    "activations": ("benchmarks.activations", {}),
    "layers": ("benchmarks.layers", {}),
    "large": ("benchmarks.large", {}),
    "curves": ("benchmarks.curves", {}),
    "report": ("benchmarks.report", {}),
}
NAMES = (*BENCHMARKS, "all")  # "all" runs every benchmark, then the report


def run_benchmark(which: str, quick: bool = False, output: str = "results", **reconstruction_options) -> int:
    """Run one benchmark (or ``all``). ``reconstruction_options`` (problems, rows, stride,
    device, force) go to the deblur / MRI benchmarks; the training benchmark takes the device and
    the denoise benchmark ``force``."""
    if which not in NAMES:
        raise ValueError(f"unknown benchmark {which!r}; choose from {', '.join(NAMES)}")
    for name in BENCHMARKS if which == "all" else (which,):
        module, kwargs = BENCHMARKS[name]
        if module == "benchmarks.reconstruction":
            kwargs = {**kwargs, **reconstruction_options}
        elif name == "training" and "device" in reconstruction_options:
            kwargs = {**kwargs, "device": reconstruction_options["device"]}
        elif name == "denoise" and "force" in reconstruction_options:
            kwargs = {**kwargs, "force": reconstruction_options["force"]}
        importlib.import_module(module).run(quick=quick, output=output, **kwargs)
    return 0
