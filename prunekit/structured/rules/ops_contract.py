"""Op rules that contract dims: matmul, einsum, functional linear/embedding, attention."""
from __future__ import annotations

import numpy as np
import torch

from ..trace import propagate as P
from ..trace.capture import flat_tensors
from .ops_common import _arg, _tensors


def _contract(cap, operands, out_labels, out):
    """operands: list of (tensor, labels per dim). Labels shared between operands are coupled."""
    if any(len(set(labels)) != len(labels) for _, labels in operands):
        for t, _ in operands:
            cap.freeze_tensor(t)  # a repeated index (diagonal) mixes positions of one dim
        return [[] for _ in flat_tensors(out)]
    ops = []
    for t, labels in operands:
        ents = [(tuple(labels[d] for d in dims), arr) for dims, arr in cap.get(t)]
        present = {lab for lab, s in zip(labels, P.spread(t)) if s}
        ops.append(P.Operand(ents, present))
    res = P.merge(cap.book, ops, out_labels)
    return [P.to_dims(res, out_labels) for _ in flat_tensors(out)]


def matmul(cap, name, args, kwargs, out):
    a, b = args[0], args[1]
    if name == "rmatmul":
        a, b = b, a
    o = flat_tensors(out)[0]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() < 1 or b.dim() < 1:
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    la = list(range(a.dim()))
    lb = list(range(b.dim()))
    nb = max(a.dim(), b.dim()) - 2 if a.dim() >= 2 and b.dim() >= 2 else 0
    # batch dims aligned from the right, broadcast (size 1) ones private
    def batch(t, n_own):
        labs = []
        for k in range(n_own):
            d = k + nb - n_own
            labs.append(("b", d) if t.shape[k] != 1 else ("priv", id(t), k))
        return labs
    if a.dim() == 1:
        la = ["K"]
    else:
        la = batch(a, a.dim() - 2) + ["M", "K"]
    if b.dim() == 1:
        lb = ["K"]
    else:
        lb = batch(b, b.dim() - 2) + ["K", "N"]
    out_labels = [("b", d) for d in range(o.dim() - (a.dim() >= 2) - (b.dim() >= 2))]
    if a.dim() >= 2:
        out_labels.append("M")
    if b.dim() >= 2:
        out_labels.append("N")
    if len(out_labels) != o.dim():
        for t in (a, b):
            cap.freeze_tensor(t)
        return [[]]
    return _contract(cap, [(a, la), (b, lb)], out_labels, out)


def einsum(cap, name, args, kwargs, out):
    eq = args[0]
    ts = list(args[1:]) if not (len(args) == 2 and isinstance(args[1], (list, tuple))) else list(args[1])
    if not isinstance(eq, str) or "..." in eq or "->" not in eq:
        for t in flat_tensors(ts):
            cap.freeze_tensor(t)
        return [[]]
    lhs, rhs = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    if len(specs) != len(ts):
        for t in flat_tensors(ts):
            cap.freeze_tensor(t)
        return [[]]
    return _contract(cap, [(t, list(s)) for t, s in zip(ts, specs)], list(rhs), out)


def linear_fn(cap, name, args, kwargs, out):
    x, w = args[0], _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    o = flat_tensors(out)[0]
    batch = [("b", k) for k in range(x.dim() - 1)]
    operands = [(x, batch + ["I"]), (w, ["O", "I"] if w.dim() == 2 else ["I"])]
    if isinstance(b, torch.Tensor):
        operands.append((b, ["O"]))
    out_labels = batch + (["O"] if w.dim() == 2 else [])
    if len(out_labels) != o.dim():
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    return _contract(cap, operands, out_labels, out)


def addmm(cap, name, args, kwargs, out):
    c, a, b = args[0], args[1], args[2]
    o = flat_tensors(out)[0]
    if a.dim() != 2 or b.dim() != 2:
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    lc = ["M", "N"][2 - c.dim():] if c.dim() <= 2 else None
    if lc is None:
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    lc = [lab if s != 1 else ("priv", k) for k, (lab, s) in enumerate(zip(lc, c.shape))]
    return _contract(cap, [(c, lc), (a, ["M", "K"]), (b, ["K", "N"])], ["M", "N"], out)


def embedding_fn(cap, name, args, kwargs, out):
    idx, w = args[0], _arg(args, kwargs, 1, "weight")
    cap.freeze_tensor(idx)
    o = flat_tensors(out)[0]
    batch = [("b", k) for k in range(idx.dim())]
    return _contract(cap, [(w, ["V", "D"])], batch + ["D"], out)


def sdpa(cap, name, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    mask = _arg(args, kwargs, 3, "attn_mask")
    if q.dim() != k.dim() or q.dim() != v.dim() or q.dim() < 3:
        for t in (q, k, v):
            cap.freeze_tensor(t)
        return [[]]
    nb = q.dim() - 2
    bl = [("b", i) for i in range(nb)]
    rep = 1
    if kwargs.get("enable_gqa") and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
        rep = q.shape[-3] // k.shape[-3]  # grouped-query: query head h reads kv head h // rep
    if any(q.shape[i] != k.shape[i] * (rep if i == nb - 1 else 1) or k.shape[i] != v.shape[i] for i in range(nb)):
        for t in (q, k, v):
            cap.freeze_tensor(t)
        return [[]]

    def operand(t, labels, repeat):
        ents = []
        for dims, arr in cap.get(t):
            if repeat > 1 and nb - 1 in dims:
                arr = np.repeat(arr, repeat, axis=dims.index(nb - 1))
            ents.append((tuple(labels[d] for d in dims), arr))
        # a lone kv head repeated for every query head (enable_gqa) is a broadcast
        present = {lab for lab, s_ in zip(labels, P.spread(t)) if s_}
        if repeat > 1 and t.shape[nb - 1] > 1:
            present.add(labels[nb - 1])
        return P.Operand(ents, present)

    ops = [operand(q, bl + ["L", "E"], 1), operand(k, bl + ["S", "E"], rep), operand(v, bl + ["S", "F"], rep)]
    if isinstance(mask, torch.Tensor):
        # an additive mask/bias per head (T5 relative position bias) ties itself to the heads
        full = bl + ["L", "S"]
        shape = list(q.shape[:-2]) + [q.shape[-2], k.shape[-2]]
        off = len(full) - mask.dim()
        if off < 0:
            cap.freeze_tensor(mask)
        else:
            labels = [full[off + i] if mask.shape[i] == shape[off + i] else ("mask", i) for i in range(mask.dim())]
            ops.append(operand(mask, labels, 1))
    labels = bl + ["L", "F"]
    res = P.merge(cap.book, ops, labels)
    return [P.to_dims(res, labels) for _ in flat_tensors(out)]


def conv_fn(cap, name, args, kwargs, out):
    """``F.conv1d/2d/3d`` with a weight that a module holds, possibly transformed first
    (weight standardisation): output channels are weight dim 0 (and the bias), input
    channels weight dim 1. Statistics over a filter's fan-in (``w.std((1, 2, 3))``) keep
    dim 0 and freeze dim 1, so such a conv's inputs stay and its outputs prune exactly."""
    from .leaves import _at_channel_dim

    x, w = args[0], _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    g = int(_arg(args, kwargs, 6, "groups", 1))
    if not isinstance(w, torch.Tensor) or x.dim() not in (w.dim(), w.dim() - 1):
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    book = cap.book
    cd = 1 if x.dim() == w.dim() else 0
    on, passed = _at_channel_dim(book, cap.get(x), cd)  # positions are mixed by the kernel
    w_out = w_in = None
    for dims, arr in cap.get(w):
        if dims == (0,):
            w_out = arr
        elif dims == (1,) and g == 1:
            w_in = arr
        else:
            book.freeze(arr)  # kernel taps, and columns shared by conv groups
    cout, cin = w.shape[0], x.shape[cd]
    if g == 1:
        if on is not None and w_in is not None:
            book.join(on, w_in)
        else:
            for arr in (on, w_in):
                if arr is not None:
                    book.freeze(arr)
    elif g == cin == cout and w.shape[1] == 1:
        # depthwise: ``groups`` is a number passed in that would have to shrink with the channels
        for arr in (on, w_out):
            if arr is not None:
                book.freeze(arr)
    else:
        if on is not None:
            book.freeze(on)  # grouped: weight columns are shared by the conv groups; inputs kept
        if w_out is not None:
            cap.parts.append(list(w_out.reshape(g, -1)))
    if isinstance(b, torch.Tensor):
        for dims, arr in cap.get(b):
            if w_out is not None and dims == (0,):
                book.join(w_out, arr)
            else:
                book.freeze(arr)
    res = passed + ([((cd,), w_out)] if w_out is not None else [])
    return [res for _ in flat_tensors(out)]
