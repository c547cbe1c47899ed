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
