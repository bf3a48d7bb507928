"""Timing, machine description and result writing shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from lipden.io import deferred_signals


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _memory_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, None where there is none."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def peak_memory_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM; ``ru_maxrss`` where /proc is missing)."""
    peak = _memory_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak_memory_mib() -> float:
    """Reset the peak resident memory to the current one (Linux; so earlier peaks, e.g. at import,
    cannot hide a computation's) and return it in MiB; elsewhere the peak so far.

    A computation's own peak is then ``peak_memory_mib() - reset_peak_memory_mib()`` taken around it.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except OSError:
        pass
    current = _memory_status_mib("VmRSS")
    return current if current is not None else peak_memory_mib()


def device_name(device: str | torch.device) -> str:
    """``cpu`` or the GPU's name (``NVIDIA H200``) for a torch device string."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def interleaved_medians(functions: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time (s) of each function, runs interleaved so drift hits all alike."""
    for f in functions.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


#: files written by this process through ``write_text_atomic`` (``benchmark --json`` lists them)
WRITTEN: list[Path] = []


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file in the same folder (mode 0644);
    an interrupt is held until the rename is done, so the file is complete or untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_signals():
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates owner-only files
        os.replace(tmp.name, path)
    WRITTEN.append(path)


def table_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a literal ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def write_results(output: str, name: str, results: dict, markdown: str) -> None:
    """Write ``name.json`` and ``name.md`` atomically under ``output``."""
    folder = Path(output)
    for suffix, text in ((".json", json.dumps(results, indent=2) + "\n"), (".md", markdown)):
        write_text_atomic(folder / f"{name}{suffix}", text)
    print(f"wrote {folder / name}.json and {folder / name}.md")


def operator_calls(function: Callable[[], None]) -> int:
    """PyTorch operator calls made by one run of ``function`` (outermost ``aten::`` calls,
    views included; those an operator makes internally are not counted). Each costs host
    time whatever the device; on a GPU most launch a kernel, so when the kernels are small
    their number, not the arithmetic, sets the step time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return sum(
        1 for event in profiler.events()
        if event.name.startswith("aten::") and not (event.cpu_parent and event.cpu_parent.name.startswith("aten::"))
    )
