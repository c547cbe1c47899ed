"""Rules for leaf modules: conv, linear, norms, embedding, and opaque modules.

A leaf creates fresh slots for its output channels (conv/linear rows, embedding columns)
and records which slots its input channels (weight columns) and per-channel parameters
(norms) carry. Entries on other dims pass through where the op is position-wise.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..trace.capture import Capture, custom_norm, flat_tensors


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


def _reparametrized(mod) -> bool:
    """The weight is computed (``parametrize``, old-style ``weight_norm``), not stored."""
    return bool(getattr(mod, "parametrizations", None)) or hasattr(mod, "weight_g")


def grouped_columns(book, on, g):
    """Input channels of a grouped conv: channel ``i*n + q`` (conv group ``i``, ``n`` per
    group) is read by weight column ``q`` of group ``i``'s rows, and dim 1 of the weight
    is shared by all groups, so column ``q`` can only go for every group at once: the
    ``g`` channels ``q, n+q, 2n+q...`` become one channel (with ``g`` positions upstream).
    Returns the column slots, or None (frozen) when a group has a single column."""
    n = len(on) // g
    if n <= 1:
        book.freeze(on)  # depthwise multiplier: removing a column would remove a whole group
        return None
    blocks = on.reshape(g, n)
    for k in range(1, g):
        book.join(blocks[0], blocks[k])
    return blocks[0].copy()


def conv_transpose(cap: Capture, name: str, mod, x, out, ents) -> None:
    """``nn.ConvTranspose{1,2,3}d``: weight is ``(in, out/groups, *kernel)``, so input
    channels are weight dim 0 and output channels weight dim 1 (and the bias). They are
    recorded as sliced parameters; ``plan.apply_plan`` syncs ``in_channels``/``out_channels``.
    Grouped: input channel ``c`` owns weight row ``c`` (groups must lose equally many),
    output channel ``i*m + q`` of group ``i`` is column ``q`` of that group's rows, shared
    across groups (see ``grouped_columns``)."""
    book = cap.book
    cd = 1 if x.dim() == len(mod.kernel_size) + 2 else 0
    on, passed = _at_channel_dim(book, ents, cd)
    g = mod.groups
    if on is not None:
        cap.record("param", f"{name}.weight", 0, on)
        if g > 1:
            cap.parts.append(list(on.reshape(g, -1)))
    m = mod.out_channels // g
    cols = cap.out_slots(name, m)
    cap.record("param", f"{name}.weight", 1, cols)
    if g > 1 and m == 1:
        book.freeze(cols)
    slots = np.tile(cols, g)
    if mod.bias is not None:
        cap.record("param", f"{name}.bias", 0, slots)
    cap.set(out, passed + [((cd,), slots)])


def opaque(cap: Capture, args, kwargs) -> None:
    for t in flat_tensors(list(args) + list(kwargs.values())):
        cap.freeze_tensor(t)


def handle(cap: Capture, name: str, mod: nn.Module, args, kwargs, out) -> None:
    if isinstance(mod, nn.MultiheadAttention):
        from . import mha

        if not mha.handle(cap, name, mod, args, kwargs, out):
            opaque(cap, args, kwargs)
        return
    from .ops_heads import head_norm_leaf

    if head_norm_leaf(cap, name, mod, args, kwargs, out):  # a norm over head_dim, after the head split
        return
    if isinstance(mod, nn.RNNBase):
        from .leaves_rnn import handle as rnn

        if not rnn(cap, name, mod, args, kwargs, out):
            opaque(cap, args, kwargs)
        return
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
        opaque(cap, args, kwargs)
        return
    ents = cap.get(x)
    book = cap.book
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        conv_transpose(cap, name, mod, x, out, ents)
        return
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
            # grouped: prune outputs equally in every conv group; inputs see grouped_columns
            if on is not None and _reparametrized(mod):
                book.freeze(on)  # weight norm over the columns (wav2vec2 pos_conv): slicing them changes it
            elif on is not None:
                col = grouped_columns(book, on, g)
                if col is not None:
                    cap.record("in", name, 1, col)
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
