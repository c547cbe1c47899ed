"""Op rules that pick positions: concat, stack, split/chunk, indexing, padding."""
from __future__ import annotations

import numpy as np
import torch

from ..trace import propagate as P
from ..trace.capture import flat_tensors
from .ops_common import _arg, _dim, _tensors
from .padding import PendingPad


def cat(cap, name, args, kwargs, out):
    ts = list(_arg(args, kwargs, 0, "tensors"))
    o = flat_tensors(out)[0]
    nd = o.dim()
    # torch.cat skips legacy empty 1-D tensors (an empty KV cache), and so does this rule
    ts = [t for t in ts if not (isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == 0 and nd > 1)]
    if any(not isinstance(t, torch.Tensor) or t.dim() != nd for t in ts):
        for t in flat_tensors(ts):
            cap.freeze_tensor(t)
        return [[]]
    d = _dim(int(_arg(args, kwargs, 1, "dim", 0)), nd)
    labels = [x if x != d else ("cat",) for x in range(nd)]
    parts, ops, any_on = [], [], False
    joint = [[(dims, arr) for dims, arr in cap.get(t) if d in dims and dims != (d,)] for t in ts]
    joined = None
    if any(joint):
        # joint entries (heads x head_dim) concatenated within heads (rotary): fine if every
        # input has one on the same dims and the cat axis lies inside heads
        dims0 = joint[0][0][0] if joint[0] else None
        ax = dims0.index(d) if dims0 else 0
        if all(len(j) == 1 and j[0][0] == dims0 and cap.book.internal(j[0][1], ax) for j in joint) and \
                len({tuple(np.delete(np.array(j[0][1].shape), ax)) for j in joint}) == 1:
            joined = (dims0, np.concatenate([j[0][1] for j in joint], axis=ax))
        else:
            for j in joint:
                for _, arr in j:
                    cap.book.freeze(arr)
    for k, t in enumerate(ts):
        on, rest = None, []
        for dims, arr in cap.get(t):
            if dims == (d,):
                on = arr
            elif d in dims:
                continue  # handled above
            else:
                rest.append((tuple(labels[v] for v in dims), arr))
        any_on |= on is not None
        parts.append(on if on is not None else P.frozen_like(t.shape[d]))
        # the cat dim is not shared between inputs; other dims are, position by position
        ops.append(P.Operand(rest, {x for x in range(nd) if x != d and t.shape[x] > 1}))
    res = P.to_dims(P.merge(cap.book, ops, labels), labels)
    if any_on:
        res.append(((d,), np.concatenate(parts)))
    if joined is not None:
        if any_on or any(set(dims) & set(joined[0]) for dims, _ in res):
            cap.book.freeze(joined[1])
        else:
            res.append(joined)
    return [res]


def stack(cap, name, args, kwargs, out):
    ts = list(_arg(args, kwargs, 0, "tensors"))
    o = flat_tensors(out)[0]
    if any(not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ts[0].shape) for t in ts):
        for t in flat_tensors(ts):
            cap.freeze_tensor(t)
        return [[]]
    d = _dim(int(_arg(args, kwargs, 1, "dim", 0)), o.dim())
    shape = tuple(ts[0].shape)
    ops = [P.elementwise_operand(cap.get(t), shape, shape, k) for k, t in enumerate(ts)]
    res = P.to_dims(P.merge(cap.book, ops, list(range(len(shape)))), list(range(len(shape))))
    return [[(tuple(v + (v >= d) for v in dims), arr) for dims, arr in res]]


def split(cap, name, args, kwargs, out):
    x = args[0]
    outs = flat_tensors(out)
    nd = x.dim()
    if name == "unbind":
        d = _dim(int(_arg(args, kwargs, 1, "dim", 0)), nd)
    else:
        d = _dim(int(_arg(args, kwargs, 2, "dim", 0)), nd)
    sizes = [t.shape[d] for t in outs] if name != "unbind" else None
    res = [[] for _ in outs]
    for dims, arr in cap.get(x):
        if d not in dims:
            for r in res:
                r.append((dims if name != "unbind" else tuple(v - (v > d) for v in dims), arr))
        elif dims == (d,) and name in ("chunk", "tensor_split", "split") and len(set(sizes)) == 1 \
                and isinstance(_arg(args, kwargs, 1, "chunks"), int) \
                and (name != "split" or _size_attr(cap, _arg(args, kwargs, 1, "chunks"))):
            # chunk(k) recomputes its sizes, so it stays correct if every chunk loses equally many;
            # split(n) into equal parts too, once a module attribute holding n is updated (heads)
            blocks = list(arr.reshape(len(outs), -1))
            cap.parts.append(blocks)
            for r, b in zip(res, blocks):
                r.append(((d,), b))
        elif len(dims) > 1 and (name == "unbind" or (name == "chunk" and len(set(sizes)) == 1)):
            # a packed projection unpacked (q, k, v = qkv.unbind(0)): the packing axis has a
            # fixed size, so every part must lose the same channels count
            ax = dims.index(d)
            parts = np.split(arr, len(outs), axis=ax)
            cap.parts.append([p_.ravel() for p_ in parts])
            for r, p_ in zip(res, parts):
                if name == "unbind":
                    r.append((tuple(v - (v > d) for v in dims if v != d), np.ascontiguousarray(p_.squeeze(ax))))
                else:
                    r.append((dims, np.ascontiguousarray(p_)))
        elif name != "unbind" and cap.book.internal(arr, dims.index(d)):
            ax, start = dims.index(d), 0
            for r, n in zip(res, sizes):
                r.append((dims, np.ascontiguousarray(np.take(arr, range(start, start + n), axis=ax))))
                start += n
        else:
            cap.book.freeze(arr)  # fixed split sizes or unbind: positions are hard-coded
    return res


def _size_attr(cap, n: int) -> bool:
    """split(n) with a fixed n is only safe if slimming updates n: the running module must
    hold it in an attribute that head pruning rewrites (``split_size``, ``all_head_size``)."""
    from ..surgery.slim import ALL_HEAD_ATTRS

    mod = cap._mods.get(cap.where()) if cap.where() != "<model>" else cap.model
    return any(getattr(mod, a, None) == n for a in ALL_HEAD_ATTRS)


def _full_slice(s: slice, n: int) -> bool:
    return range(n)[s] == range(n)


def getitem(cap, name, args, kwargs, out):
    x, idx = args[0], args[1]
    o = flat_tensors(out)[0]
    nd = x.dim()
    if not isinstance(idx, tuple):
        idx = (idx,)
    for t in flat_tensors(list(idx)):
        cap.freeze_tensor(t)  # index values are positions, not channels
    tensors = [i for i in idx if isinstance(i, torch.Tensor)]
    single = (len(tensors) == 1 and not tensors[0].is_floating_point() and tensors[0].dtype != torch.bool
              and not any(i is None for i in idx))
    bad = any(isinstance(i, (list, np.ndarray)) or isinstance(i, bool) for i in idx) or (tensors and not single)
    if bad:
        cap.freeze_tensor(x)
        return [[]]
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        if i is Ellipsis:
            expanded += [slice(None)] * (nd - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (nd - sum(1 for i in expanded if i is not None))
    mapping, d_in, d_out = {}, 0, 0
    for i in expanded:
        if i is None:
            d_out += 1
        elif isinstance(i, slice):
            mapping[d_in] = (d_out, i)
            d_in += 1
            d_out += 1
        elif isinstance(i, torch.Tensor):
            # one gather along this dim (a relative-position table): other dims keep their channels
            mapping[d_in] = (None, None)
            d_in += 1
            d_out += i.dim()
        else:
            mapping[d_in] = (None, i)
            d_in += 1
    if d_out != o.dim():
        cap.freeze_tensor(x)
        return [[]]
    res = []
    for dims, arr in cap.get(x):
        new_dims, index, ok, why = [], [], True, None
        for ax, d in enumerate(dims):
            out_d, sel = mapping[d]
            if sel is None:
                ok = False  # gathered positions along a channel dim
            elif out_d is not None and _full_slice(sel, x.shape[d]):
                new_dims.append(out_d)
                index.append(slice(None))
            elif cap.book.internal(arr, ax):
                # inside a head (rotary halves): heads go whole, so fixed positions stay right
                index.append(sel)
                if out_d is not None:
                    new_dims.append(out_d)
            else:
                ok = False
                if isinstance(sel, slice) and out_d is not None:
                    why = (f"slice [{sel.start}:{sel.stop}] of a {x.shape[d]}-channel dim (op getitem in "
                           f"{cap.where()}): its bounds are Python numbers fixed before the op (a fused projection "
                           "split by sizes computed from head counts, e.g. Phi-3's qkv_proj[..., :num_heads * "
                           "head_dim]); they would not follow pruning, so these channels stay")
        if not ok:
            if why is not None:
                prev = cap.book.marks[-1][1] if cap.book.marks else "frozen"
                cap.book.note(why)
                cap.book.freeze(arr)
                cap.book.note(prev)
            else:
                cap.book.freeze(arr)  # channel positions picked by hard-coded indices
            continue
        sub = arr[tuple(index)]
        if new_dims:
            res.append((tuple(new_dims), np.ascontiguousarray(sub)))
    return [res]


def setitem(cap, name, args, kwargs, out):
    for t in _tensors(args, kwargs):
        cap.freeze_tensor(t)
    return None


def pad(cap, name, args, kwargs, out):
    x = args[0]
    p = list(_arg(args, kwargs, 1, "pad"))
    mode = _arg(args, kwargs, 2, "mode", "constant")
    nd = x.dim()
    res = []
    for dims, arr in cap.get(x):
        amounts = {}
        for k in range(len(p) // 2):
            amounts[nd - 1 - k] = (p[2 * k], p[2 * k + 1])
        touched = [d for d in dims if d in amounts and amounts[d] != (0, 0)]
        if not touched:
            res.append((dims, arr))
            continue
        if len(dims) != 1 or mode != "constant" or min(amounts[dims[0]]) < 0:
            cap.book.freeze(arr)
            continue
        d = dims[0]
        b, a = amounts[d]
        # padded positions hold the pad value: kept channels shift by ``b``, and the padded
        # ones are channels of their own (every reader is a member of their group, so their
        # value never matters), removable only by lowering the pad amounts;
        # ``padding.settle`` looks for module attributes holding them after the run and
        # freezes these slots where there are none (amounts computed or hard-coded)
        before, after = cap.book.new(b), cap.book.new(a)
        if cap.frames:
            frame = cap.frames[-1]
            # pad pair k (entries 2k, 2k+1) pads dim nd-1-k
            cap.pending_pads.append(PendingPad(cap.where(), frame[0], frame[1], frame[2], list(p), d,
                                               nd - 1 - d, before, after))
        else:
            cap.book.freeze(before)
            cap.book.freeze(after)
        res.append((dims, np.concatenate([before, arr, after])))
    return [res]


def _positional(cap, x, dim, aligned):
    """Entries of ``x`` for an op that moves positions along ``dim`` only (gather, scatter,
    index_add over tokens): an entry on ``dim`` is frozen (its positions are picked by index
    values), an entry on the other dims passes when those dims line up position by position
    with the output (``aligned(d)``), else it is frozen."""
    res = []
    for dims, arr in cap.get(x):
        if dim in dims or not all(aligned(d) for d in dims):
            cap.book.freeze(arr)
        else:
            res.append((dims, arr))
    return res


def index_select(cap, name, args, kwargs, out):
    """``index_select(x, dim, index)``: rows picked along ``dim``; the other dims keep their channels."""
    x = args[0]
    for t in _tensors(args[1:], kwargs):
        cap.freeze_tensor(t)  # index values are positions
    d = _dim(int(_arg(args, kwargs, 1, "dim")), x.dim())
    return [_positional(cap, x, d, lambda _: True)]


def gather(cap, name, args, kwargs, out):
    """``gather(x, dim, index)``: ``out[..i..] = x[..index[..i..]..]`` along ``dim``; the output
    has the index's shape, so another dim of ``x`` keeps its channels only where the index
    spans it whole (DeBERTa's relative-position gather keeps the heads)."""
    x, index = args[0], _arg(args, kwargs, 2, "index")
    o = flat_tensors(out)[0]
    cap.freeze_tensor(index)
    if not isinstance(index, torch.Tensor) or index.dim() != x.dim():
        cap.freeze_tensor(x)
        return [[]]
    d = _dim(int(_arg(args, kwargs, 1, "dim")), x.dim())
    return [_positional(cap, x, d, lambda k: index.shape[k] == x.shape[k] == o.shape[k])]


def scatter_into(cap, name, args, kwargs, out):
    """``index_add/index_copy(self, dim, index, source)`` and ``scatter(_add)(self, dim, index,
    src)``: source rows land at the positions ``index`` names along ``dim`` (MoE routing adds
    each expert's output back to its tokens). Along every other dim, self, source and output
    are the same positions, so channels there are joined between self and source and pass
    through; channels on ``dim`` itself are frozen."""
    x = args[0]
    o = flat_tensors(out)[0]
    nd = x.dim()
    d = _dim(int(_arg(args, kwargs, 1, "dim")), nd)
    index = _arg(args, kwargs, 2, "index")
    src = _arg(args, kwargs, 3, "source" if name.startswith("index") else "src")
    if name == "index_fill":
        src = None  # a scalar value (or 0-d tensor) written at the indexed positions
    if isinstance(index, torch.Tensor):
        cap.freeze_tensor(index)
    if not isinstance(index, torch.Tensor) or tuple(o.shape) != tuple(x.shape):
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)
        return [[]]
    operands = [x]
    if isinstance(src, torch.Tensor) and src.dim() == 0:
        cap.freeze_tensor(src)
    elif isinstance(src, torch.Tensor):
        scatter = name.startswith("scatter")
        ok = src.dim() == nd and (not scatter or index.dim() == nd)
        # scatter reads src (and index) only over the index's extent on the other dims
        same = ok and all(src.shape[k] == x.shape[k] and (not scatter or index.shape[k] == x.shape[k])
                          for k in range(nd) if k != d)
        if not same:
            for t in (x, src):
                cap.freeze_tensor(t)
            return [[]]
        operands.append(src)
    ops = []
    for k, t in enumerate(operands):
        labels = [v if v != d else ("pos", k) for v in range(nd)]
        ents = []
        for dims, arr in cap.get(t):
            if d in dims:
                cap.book.freeze(arr)
            else:
                ents.append((tuple(labels[v] for v in dims), arr))
        ops.append(P.Operand(ents, {labels[v] for v in range(nd) if v != d and t.shape[v] > 1}))
    labels = [v if v != d else ("pos", 0) for v in range(nd)]
    return [P.to_dims(P.merge(cap.book, ops, labels), labels)]


def repeat_interleave(cap, name, args, kwargs, out):
    """``x.repeat_interleave(r, dim)`` with an int ``r``: every position along ``dim`` is
    repeated ``r`` times in place, so a channel there owns ``r`` neighbouring positions
    (MoE: each token copied once per chosen expert); other dims pass unchanged."""
    x = args[0]
    r = _arg(args, kwargs, 1, "repeats")
    d = _arg(args, kwargs, 2, "dim")
    if not isinstance(x, torch.Tensor):
        return None
    if isinstance(r, torch.Tensor) and r.numel() == 1:
        r = int(r)
    if d is None or not isinstance(r, int):
        for t in _tensors(args, kwargs):
            cap.freeze_tensor(t)  # flattened, or per-position repeat counts: positions shift
        return [[]]
    d = _dim(int(d), x.dim())
    return [[(dims, np.repeat(arr, r, axis=dims.index(d)) if d in dims else arr) for dims, arr in cap.get(x)]]


INDEX_RULES = {"repeat_interleave": repeat_interleave, "index_select": index_select, "gather": gather, "index_add": scatter_into,
               "index_copy": scatter_into, "index_fill": scatter_into, "scatter_add": scatter_into,
               "scatter": scatter_into}
