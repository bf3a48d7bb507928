"""Timing, machine description and result writing shared by the benchmarks."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipden.io import atomic_write, atomic_write_text


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
    """Write ``text`` to ``path`` through :func:`lipden.io.atomic_write_text` (the folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    WRITTEN.append(path)


#: significant digits kept of every float of a result file (tables show at most 6)
DIGITS = 7


def compact(value: Any, digits: int = DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (JSON-ready)."""
    if isinstance(value, float):
        return value if not math.isfinite(value) or value == 0 else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: compact(item, digits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [compact(item, digits) for item in value]
    return value


def to_json(value: Any) -> str:
    """The compact JSON of a result: floats rounded (:func:`compact`), no indentation."""
    return json.dumps(compact(value), separators=(",", ":")) + "\n"


def table_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a literal ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def reshipped_prior(row: dict, key: str = "weights_sha256") -> str | None:
    """The prior of a stored row (or tuned entry) whose weights were reshipped after it was
    computed: the sha256 it recorded under ``key`` differs from the shipped card's (or the model
    is no longer shipped). ``None`` for a row without a prior or computed with today's weights.
    ``key="tuned_weights_sha256"``: the weights its stored parameters were tuned with."""
    from lipden.models.pretrained import denoiser_card

    parameters, recorded = row.get("parameters"), row.get(key)
    model = parameters.get("model") if isinstance(parameters, dict) else None
    if model is None or recorded is None:
        return None
    try:
        return None if denoiser_card(str(model))["sha256"] == recorded else str(model)
    except ValueError:
        return str(model)


def stale_prior_note(row: dict) -> str | None:
    """Why a stored row's numbers are not those of today's prior, or None: computed with its
    earlier weights, or solved with parameters tuned for them."""
    if (model := reshipped_prior(row)) is not None:
        return f"EARLIER WEIGHTS of {model}, reshipped since: to be re-run"
    if (model := reshipped_prior(row, "tuned_weights_sha256")) is not None:
        return f"parameters TUNED FOR EARLIER WEIGHTS of {model}: to be re-tuned"
    return None


def write_results(output: str, name: str, results: dict, markdown: str) -> None:
    """Write ``name.json`` and ``name.md`` atomically under ``output``."""
    folder = Path(output)
    for suffix, text in ((".json", to_json(results)), (".md", markdown)):
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


# --- figures -------------------------------------------------------------------------------------

#: largest width (pixels) and size (bytes) of a committed figure
FIGURE_WIDTH = 1000
FIGURE_MAX_BYTES = 200_000
#: PNG text field holding the fingerprint of the numbers a figure shows
FINGERPRINT_KEY = "lipden-data"


def _digestible(value: Any) -> Any:
    """Arrays and tensors as the hash of what a figure shows of them (8-bit levels of [0, 1])."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        levels = np.round(np.clip(np.nan_to_num(value.astype(np.float64)), -1e6, 1e6) * 255).astype(np.int64)
        return {"shape": list(value.shape), "sha256": hashlib.sha256(levels.tobytes()).hexdigest()}
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def fingerprint(data: Any) -> str:
    """A digest of the numbers (and labels) a figure is drawn from."""
    text = json.dumps(compact(data), sort_keys=True, default=_digestible)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def figure_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a figure written by :func:`save_figure`, None if none."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.info.get(FINGERPRINT_KEY)
    except OSError:
        return None


def compress_png(png: bytes, stamp: str | None = None, max_width: int = FIGURE_WIDTH,
                 max_bytes: int = FIGURE_MAX_BYTES) -> bytes:
    """A rendered figure as a palette PNG at most ``max_width`` wide and ``max_bytes`` large:
    grey figures in grey levels, fewer levels (256 to 32) and then fewer pixels until it fits."""
    from PIL import Image, PngImagePlugin

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    channels = np.asarray(image)
    if (channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all():
        image = image.convert("L")
    info = PngImagePlugin.PngInfo()
    if stamp is not None:
        info.add_text(FINGERPRINT_KEY, stamp)
    out = b""
    for scale in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
        width = min(image.width, round(max_width * scale))
        resized = image if width == image.width else image.resize(
            (width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
        for colours in (256, 128, 64, 32):
            buffer = io.BytesIO()
            resized.quantize(colours, dither=Image.Dither.NONE).save(buffer, format="PNG", optimize=True, pnginfo=info)
            out = buffer.getvalue()
            if len(out) <= max_bytes:
                return out
    return out


def save_figure(fig, path: Path, data: Any, **savefig: Any) -> bool:
    """Write a matplotlib figure compressed (:func:`compress_png`), unless ``path`` already holds
    a figure of the same ``data`` (the numbers it is drawn from, see :func:`fingerprint`):
    re-running a benchmark then leaves an unchanged figure alone. Closes ``fig``; True if written."""
    import matplotlib.pyplot as plt

    path = Path(path)
    stamp = fingerprint(data)
    try:
        if path.is_file() and figure_fingerprint(path) == stamp:
            print(f"{path}: same numbers, figure kept")
            return False
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", **savefig)
    finally:
        plt.close(fig)
    png = compress_png(buffer.getvalue(), stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    WRITTEN.append(path)
    return True
