"""A run's folder: the lock a running trainer holds, and the optimizer state as flat tensors
(what a resumable training-state file stores beside the model)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

#: File in a run's folder that the running trainer holds locked.
LOCK_NAME = "train.lock"


class RunLocked(ValueError):
    """Another live process is training into the same output folder."""


@contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold ``output/train.lock`` for the duration of a run, so that a second trainer never
    writes into a folder a running one holds (they would interleave one log and one state).

    An advisory ``flock`` on POSIX: the kernel drops it when its process dies, so the lock of a
    killed run is taken over at once; elsewhere (no ``fcntl``) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    output.mkdir(parents=True, exist_ok=True)
    handle = open(output / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(f"{output} is being trained by {holder}; wait for it, stop it, or use another "
                            f"--output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state as ``train.optim.<index>.<key>`` tensors."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"train.optim.{index}.{key}"] = torch.as_tensor(value)
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Load the state that :func:`flatten_optimizer` wrote (other tensors are ignored)."""
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("train.optim."):
            _, _, index, key = name.split(".", 3)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def remove_partial_writes(output: Path) -> list[Path]:
    """Delete the hidden ``.<name>.*.part`` files that :func:`lipden.io.atomic_write` leaves
    when its process is killed mid-write (SIGKILL cannot be caught). Only call it while
    holding the run's lock: no live writer then owns such a file. Returns what was removed."""
    removed = sorted(output.glob(".*.part"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def read_log(folder: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``log.csv`` (step, elapsed_s, loss_per_patch, val_psnr, lr_factor) as
    numbers, in file order; empty cells are left out, and so is a row a live trainer is still
    writing (no ``elapsed_s``). ``[]`` when the run has no log."""
    import csv

    path = Path(folder) / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [{key: float(value) for key, value in row.items() if key and value}
                for row in csv.DictReader(handle)]
    return [row for row in rows if "step" in row and "elapsed_s" in row]


def patches_at(state_metadata: dict, step: int) -> int:
    """Patches the weights of a run had seen at ``step``, from its training state's metadata: the
    step's batches over all ranks, plus those of the weights a warm-started run began from."""
    batch = int(state_metadata.get("train_config", {}).get("batch_size") or 0)
    initial = int((state_metadata.get("warm_start") or {}).get("patches_seen") or 0)
    return initial + int(step) * batch * int(state_metadata.get("world_size", 1))
