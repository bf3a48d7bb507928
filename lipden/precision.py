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
