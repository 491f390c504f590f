"""The few distributed helpers the losses and the engine need (no-ops in one process)."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "reduce_mean"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes, so loss normalisers (number of positives) match MMDetection's."""
    if not is_distributed():
        return t
    t = t.clone().float()
    dist.all_reduce(t.div_(world_size()))
    return t
