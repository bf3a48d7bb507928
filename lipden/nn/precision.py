"""Autocast control: the constraints, splines and losses are computed in the parameters' precision."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def autocast_disabled(device_type: str) -> AbstractContextManager:
    """A block where autocast is off on ``device_type``, so mixed precision never reaches a
    constraint (orthogonalisation, slope clipping, knot lookup). A plain block for device
    types autocast does not know (e.g. ``"meta"``, used for shape-only runs)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # no autocast for this device type
        return nullcontext()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where oneDNN's bf16
    convolutions beat float32 ones; elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def default_mixed_precision(device_type: str) -> bool:
    """Whether training autocasts its convolutions to bfloat16 by default on this device:
    on a GPU, and on a CPU with native bf16 (:func:`cpu_has_fast_bf16`)."""
    if device_type == "cuda":
        return True
    return device_type == "cpu" and cpu_has_fast_bf16()
