"""Op rules that keep or reshape dims: element-wise ops, views, permutes, reductions, pooling."""
from __future__ import annotations

import torch

from . import ops_shuffle as shuffle
from ..trace import propagate as P
from ..trace.capture import flat_tensors
from .ops_common import _arg, _dim, _tensors


POOL = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3,
        "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1,
        "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
        "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3,
        "adaptive_max_pool1d_with_indices": 1, "adaptive_max_pool2d_with_indices": 2,
        "interpolate": -1, "upsample": -1, "upsample_nearest": -1, "upsample_bilinear": -1}


def elementwise(cap, name, args, kwargs, out):
    outs = flat_tensors(out)
    o = outs[0]
    ops = []
    for k, t in enumerate(_tensors(args, kwargs)):
        if t.dim() > o.dim():
            for x in _tensors(args, kwargs):
                cap.freeze_tensor(x)
            return [[] for _ in outs]
        ops.append(P.elementwise_operand(cap.get(t), tuple(t.shape), tuple(o.shape), k))
    res = P.to_dims(P.merge(cap.book, ops, list(range(o.dim()))), list(range(o.dim())))
    return [res for _ in outs]


def first_only(cap, name, args, kwargs, out):
    x = args[0]
    o = flat_tensors(out)[0]
    if tuple(o.shape) != tuple(x.shape):
        cap.freeze_tensor(x)
        return [[]]
    return [cap.get(x)]


def view(cap, name, args, kwargs, out):
    x = args[0]
    o = flat_tensors(out)[0]
    if tuple(o.shape) == tuple(x.shape):
        return [cap.get(x)]

    def on_split(ent):
        dims, arr = ent
        rows = arr.reshape(-1, arr.shape[-1])
        tie = (cap.where(), rows, arr.shape[-2])
        cap.ties.append(tie)
        cap.book.tie(rows)
        shuffle.on_split(cap, o, tie, arr)  # maybe a channel shuffle: untied if merged back

    res = P.reshape(cap.book, cap.get(x), tuple(x.shape), tuple(o.shape), on_split)
    shuffle.merged(cap, x, res)
    if name in ("view", "reshape") and o.dim() == x.dim() + 1 and o.dim() >= 3 and o.shape[-2] == 1:
        # (..., D) -> (..., 1, D): a split into one head of hard-coded size D; the head can
        # only go whole (and a lone head cannot go at all)
        for dims, arr in res:
            if dims == (o.dim() - 1,):
                on_split(((o.dim() - 2, o.dim() - 1), arr.reshape(1, -1)))
    return [res]


def permute(cap, name, args, kwargs, out):
    x = args[0]
    nd = x.dim()
    if name in ("permute",):
        perm = args[1:] if len(args) > 2 or not isinstance(_arg(args, kwargs, 1, "dims"), (list, tuple)) \
            else _arg(args, kwargs, 1, "dims")
        perm = [_dim(int(p), nd) for p in perm]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a = _dim(int(_arg(args, kwargs, 1, "dim0")), nd)
        b = _dim(int(_arg(args, kwargs, 2, "dim1")), nd)
        perm = list(range(nd))
        perm[a], perm[b] = perm[b], perm[a]
    elif name in ("movedim", "moveaxis"):
        src = _arg(args, kwargs, 1, "source")
        dst = _arg(args, kwargs, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        order = [None] * nd
        for s, d in zip(src, dst):
            order[_dim(d, nd)] = _dim(s, nd)
        rest = iter([i for i in range(nd) if i not in [_dim(s, nd) for s in src]])
        perm = [o if o is not None else next(rest) for o in order]
    elif name in ("t", "get_T"):
        perm = list(range(nd))[::-1]
    else:  # mT, mH, adjoint
        perm = list(range(nd))
        perm[-1], perm[-2] = perm[-2], perm[-1]
    return [P.permute(cap.get(x), perm)]


def expand(cap, name, args, kwargs, out):
    x = args[0]
    o = flat_tensors(out)[0]
    return [P.shift(cap.get(x), o.dim() - x.dim())]


def softmax_like(cap, name, args, kwargs, out):
    x = args[0]
    nd = x.dim()
    d = _arg(args, kwargs, 1, "dim", None)
    if name == "normalize":
        d = kwargs.get("dim", args[2] if len(args) > 2 else 1)
    if d is None:
        for _, arr in cap.get(x):
            cap.book.freeze(arr)
        return [[] for _ in flat_tensors(out)]
    d = _dim(int(d), nd)
    keep = []
    for dims, arr in cap.get(x):
        if d in dims and not cap.book.internal(arr, dims.index(d)):
            cap.book.freeze(arr)
        else:
            keep.append((dims, arr))  # normalising within a head is unaffected by removing heads
    return [keep for _ in flat_tensors(out)]


def reduce(cap, name, args, kwargs, out):
    x = args[0]
    if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return elementwise(cap, name, args, kwargs, out)
    nd = x.dim()
    d = _arg(args, kwargs, 1, "dim", None)
    if name == "norm":
        d = kwargs.get("dim", args[2] if len(args) > 2 else None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and name not in ("norm",)
                              and isinstance(args[2], bool) else False))
    outs = flat_tensors(out)
    if d is None or (isinstance(d, (list, tuple)) and len(d) == 0):
        cap.freeze_tensor(x)
        return [[] for _ in outs]
    ds = {_dim(int(v), nd) for v in (d if isinstance(d, (list, tuple)) else [d])}
    if outs[0].dim() == nd:
        keepdim = True
    keep = []
    for dims, arr in cap.get(x):
        hit = ds & set(dims)
        if hit and len(hit) < len(dims) and all(cap.book.internal(arr, dims.index(v)) for v in hit):
            # reduced within heads only: what is left is per head
            kept_axes = tuple(i for i, v in enumerate(dims) if v not in hit)
            arr = cap.book.coarse_of(arr, kept_axes)
            dims = tuple(v for v in dims if v not in hit)
            if not keepdim:
                dims = tuple(v - sum(1 for r in ds if r < v) for v in dims)
            keep.append((dims, arr))
        elif hit:
            cap.book.freeze(arr)
        elif keepdim:
            keep.append((dims, arr))
        else:
            keep.append((tuple(v - sum(1 for r in ds if r < v) for v in dims), arr))
    return [keep for _ in outs]


def pool(cap, name, args, kwargs, out):
    x = args[0]
    k = POOL[name]
    nd = x.dim()
    if k == -1:
        k = nd - 2
    keep = []
    for dims, arr in cap.get(x):
        if max(dims) >= nd - k:
            cap.book.freeze(arr)
        else:
            keep.append((dims, arr))
    outs = flat_tensors(out)
    if outs[0].dim() != nd:
        for _, arr in keep:
            cap.book.freeze(arr)
        keep = []
    return [keep for _ in outs]


def repeat(cap, name, args, kwargs, out):
    x = args[0]
    o = flat_tensors(out)[0]
    off = o.dim() - x.dim()
    res = []
    for dims, arr in cap.get(x):
        if all(o.shape[d + off] == x.shape[d] for d in dims):
            res.append((tuple(d + off for d in dims), arr))
        else:
            cap.book.freeze(arr)
    return [res]
