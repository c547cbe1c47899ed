"""Process-group helpers so the same training code runs alone or under torchrun (gloo on CPU)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE/RANK env vars); return (rank, world)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
        return dist.get_rank(), world
    return 0, 1


def batch_order(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """The local index batches of one epoch.

    One permutation per (seed, epoch) is cut into global batches; rank r takes every
    world-th element of each. The union over ranks of step s is exactly the global
    batch a single process would see, so DDP's gradient average equals the
    single-process gradient when local batches are equal in size.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    out = []
    for s in range(0, n, batch_size):
        b = perm[s: s + batch_size]
        if world > 1:
            if len(b) < world:
                break  # too few samples left to give every rank one
            b = b[: len(b) - len(b) % world][rank::world]
        out.append(b)
    return out
