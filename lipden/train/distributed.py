"""Several processes under ``torchrun``: the process group, and what ranks gather from each other."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


def start_process_group(device_type: str) -> bool:
    """Join torchrun's ranks (gloo on CPU, nccl on GPU) unless a group runs; True if started here."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gather_rng_states(sampler_state: Tensor, noise_state: Tensor, world: int,
                      device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Every rank's (patch sampler, noise) generator states, in rank order (all ranks call it)."""
    if world == 1:
        return [(sampler_state, noise_state)]
    gathered = []
    for state in (sampler_state, noise_state):
        local = state.to(device)  # NCCL gathers device tensors only
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        gathered.append([part.cpu() for part in parts])
    return list(zip(*gathered, strict=True))


def ranks_identical(model: nn.Module) -> bool:
    """Gather every rank's parameters and compare them exactly (all ranks get the answer)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])
