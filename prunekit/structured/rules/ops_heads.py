"""Rules for ops that work inside attention heads, after the head split.

Per-head q/k norms (Qwen3, Gemma3, OLMo-style ``q_norm``/``k_norm``): a LayerNorm/RMSNorm
whose normalised dim is ``head_dim``, applied to a tensor already split into
``(heads, head_dim)``. Its statistics run within one head and its weight is shared by
every head, so removing whole heads leaves the other heads' outputs unchanged and the
weight is not sliced. The channel entry passes when the normalised axis lies inside the
head ties (``SlotBook.internal``); a norm over a dim that is *not* split into tied heads
keeps the usual rule (``leaves.py`` / ``ops_norm.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..trace.capture import custom_norm, flat_tensors
from .ops_common import _arg


def _within_heads(cap, entries, cd):
    """Entries for a norm over dim ``cd`` if every entry touching ``cd`` is a head split whose
    ``cd`` axis lies inside heads (None otherwise: the normal norm rule applies)."""
    hit = False
    for dims, arr in entries:
        if cd not in dims:
            continue
        if len(dims) < 2 or not cap.book.internal(arr, dims.index(cd)):
            return None
        hit = True
    return list(entries) if hit else None


def _norm_dim(mod: nn.Module, x: torch.Tensor) -> int | None:
    """The dim a norm module normalises over alone, or None (several dims, channels-first)."""
    if isinstance(mod, (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())) \
            and custom_norm(mod) is None:
        return x.dim() - 1 if len(mod.normalized_shape) == 1 else None
    spec = custom_norm(mod)
    return x.dim() - 1 if spec == -1 else None


def head_norm_leaf(cap, name: str, mod: nn.Module, args, kwargs, out) -> bool:
    """A norm leaf over ``head_dim`` of a head split; True when handled here."""
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        return False
    try:
        cd = _norm_dim(mod, x)
    except Exception:
        return False
    w = getattr(mod, "weight", None)
    if cd is None or (isinstance(w, torch.Tensor) and (w.dim() != 1 or w.shape[0] != x.shape[cd])):
        return False
    ents = _within_heads(cap, cap.get(x), cd)
    if ents is None:
        return False
    # the weight indexes positions within a head, shared by all heads: it is never sliced
    cap.set(out, ents)
    return True


def layer_norm(cap, name, args, kwargs, out):
    """``F.layer_norm``/``F.rms_norm`` over ``head_dim`` of a head split; else ``ops_norm``."""
    from .ops_norm import layer_norm as plain

    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    ents = _within_heads(cap, cap.get(x), x.dim() - 1) if k == 1 else None
    if ents is None:
        return plain(cap, name, args, kwargs, out)
    for key, i in (("weight", 2), ("bias", 3)):
        t = _arg(args, kwargs, i, key) if (key == "weight" or name == "layer_norm") else None
        if isinstance(t, torch.Tensor):
            cap.freeze_tensor(t)  # shared by every head
    return [ents for _ in flat_tensors(out)]


HEAD_RULES = {"layer_norm": layer_norm, "rms_norm": layer_norm}

__all__ = ["HEAD_RULES", "head_norm_leaf"]
