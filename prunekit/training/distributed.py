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


def batch_order(n: int, batch_size: int, seed: int, epoch: int, world: int = 1) -> list[torch.Tensor]:
    """The global index batches of one epoch.

    One permutation per (seed, epoch) is cut into global batches. Under DDP every rank
    loads and augments the whole global batch with the same generator state, then keeps
    every world-th sample (``local_slice``). The union over ranks is exactly the global
    batch a single process would see, with the same augmentation, so DDP's gradient
    average equals the single-process gradient (local batches are equal in size: a
    global batch is trimmed to a multiple of the world size).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    out = []
    for s in range(0, n, batch_size):
        b = perm[s: s + batch_size]
        if world > 1:
            if len(b) < world:
                break  # too few samples left to give every rank one
            b = b[: len(b) - len(b) % world]
        out.append(b)
    return out


def local_slice(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return t if world == 1 else t[rank::world]
