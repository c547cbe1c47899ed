"""Small helpers shared by the op rules."""
from __future__ import annotations

import torch


def _dim(d, nd):
    return d + nd if d < 0 else d


def _arg(args, kwargs, i, key, default=None):
    if key in kwargs:
        return kwargs[key]
    return args[i] if len(args) > i else default


def _tensors(args, kwargs):
    return [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]


def last_dim_slots(cap, t: torch.Tensor, dim: int | None = None):
    """The channel slots on ``t``'s feature dim (default: the last), or None; channels on any
    other dim are frozen (modules that mix positions, such as attention and recurrences,
    cannot keep them apart)."""
    dim = t.dim() - 1 if dim is None else dim
    on = None
    for dims, arr in cap.get(t):
        if dims == (dim,):
            on = arr
        else:
            cap.book.freeze(arr)
    return on
