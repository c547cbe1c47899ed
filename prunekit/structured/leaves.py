"""Rules for leaf modules: conv, linear, norms, embedding, and opaque modules.

A leaf creates fresh slots for its output channels (conv/linear rows, embedding columns)
and records which slots its input channels (weight columns) and per-channel parameters
(norms) carry. Entries on other dims pass through where the op is position-wise.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .capture import Capture, custom_norm, flat_tensors


def _split(entries, dim):
    """(entry exactly on ``dim``, entries touching dim jointly, entries elsewhere)."""
    on, joint, rest = None, [], []
    for dims, arr in entries:
        if dims == (dim,):
            on = arr
        elif dim in dims:
            joint.append(arr)
        else:
            rest.append((dims, arr))
    return on, joint, rest


def _at_channel_dim(book, entries, cd):
    """For a layer that mixes everything from channel dim ``cd`` on: the entry exactly on
    ``cd`` and the entries wholly before it pass; any other channel touching ``cd`` or a
    later dim is mixed by the layer, so it is frozen."""
    on, joint, rest = _split(entries, cd)
    passed = []
    for arr in joint:
        book.freeze(arr)
    for dims, arr in rest:
        if min(dims) < cd:
            passed.append((dims, arr))
        else:
            book.freeze(arr)
    return on, passed


def opaque(cap: Capture, args, kwargs) -> None:
    for t in flat_tensors(list(args) + list(kwargs.values())):
        cap.freeze_tensor(t)


def handle(cap: Capture, name: str, mod: nn.Module, args, kwargs, out) -> None:
    if isinstance(mod, nn.MultiheadAttention):
        from . import mha

        if not mha.handle(cap, name, mod, args, kwargs, out):
            opaque(cap, args, kwargs)
        return
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        opaque(cap, args, kwargs)
        return
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        opaque(cap, args, kwargs)  # transposed convs: weight layout (in, out/groups); kept whole
        return
    ents = cap.get(x)
    book = cap.book
    spec = custom_norm(mod)
    if spec is not None:
        keep = []
        nd = x.dim()
        cd = nd - 1 if spec == -1 else 1
        for dims, arr in ents:
            if dims == (cd,) and tuple(out.shape) == tuple(x.shape) and x.shape[cd] == mod.weight.shape[0]:
                cap.record("norm", name, 0, arr, reducing="custom")
                keep.append((dims, arr))
            elif cd in dims:
                book.freeze(arr)
            else:
                keep.append((dims, arr))
        cap.set(out, keep)
        return
    if isinstance(mod, nn.modules.conv._ConvNd):
        cd = 1 if x.dim() == len(mod.kernel_size) + 2 else 0
        on, passed = _at_channel_dim(book, ents, cd)  # spatial dims: the conv mixes them
        g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        if g == 1:
            if on is not None:
                cap.record("in", name, 1, on)
            slots = cap.out_slots(name, cout)
            cap.record("out", name, 0, slots)
        elif g == cin == cout:
            # depthwise: output channel c is input channel c, so they are one channel
            slots = on if on is not None else book.new(cout)
            if on is None:
                book.freeze(slots)
            cap.record("out", name, 0, slots, depthwise=True)
        else:
            # grouped: keep the inputs, prune outputs equally in every conv group
            if on is not None:
                book.freeze(on)
            slots = cap.out_slots(name, cout)
            cap.record("out", name, 0, slots)
            cap.parts.append(list(slots.reshape(g, -1)))
        cap.set(out, passed + [((cd,), slots)])
    elif isinstance(mod, nn.Linear):
        ld = x.dim() - 1
        on, joint, rest = _split(ents, ld)
        for arr in joint:
            book.freeze(arr)
        if on is not None:
            cap.record("in", name, 1, on)
        slots = cap.out_slots(name, mod.out_features)
        cap.record("out", name, 0, slots)
        cap.set(out, rest + [((out.dim() - 1,), slots)])
    elif isinstance(mod, (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())):
        k = len(mod.normalized_shape)
        nd = x.dim()
        kind = "ln" if isinstance(mod, nn.LayerNorm) else "rms"
        keep = []
        for dims, arr in ents:
            if k == 1 and dims == (nd - 1,):
                cap.record("norm", name, 0, arr, reducing=kind)
                keep.append((dims, arr))
            elif max(dims) >= nd - k:
                book.freeze(arr)
            else:
                keep.append((dims, arr))
        cap.set(out, keep)
    elif isinstance(mod, nn.GroupNorm):
        on, joint, rest = _split(ents, 1)
        for arr in joint:
            book.freeze(arr)
        keep = []
        for dims, arr in rest:
            if min(dims) < 1:
                keep.append((dims, arr))
            else:
                book.freeze(arr)  # statistics run over spatial dims
        if on is not None:
            cap.record("norm", name, 0, on, reducing="gn")
            cap.parts.append(list(on.reshape(mod.num_groups, -1)))
            keep.append(((1,), on))
        cap.set(out, keep)
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        cd = 1 if x.dim() >= 2 else 0
        on, keep = _at_channel_dim(book, ents, cd)  # statistics run over the later dims
        if on is not None:
            cap.record("norm", name, 0, on)
            keep.append(((cd,), on))
        cap.set(out, keep)
    elif isinstance(mod, nn.Embedding):
        for _, arr in ents:
            book.freeze(arr)
        slots = cap.out_slots(name, mod.embedding_dim)
        cap.record("emb", name, 1, slots)
        cap.set(out, [((out.dim() - 1,), slots)])
    else:
        opaque(cap, args, kwargs)
