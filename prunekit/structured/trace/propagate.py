"""Propagation primitives: how channel entries move through dimension mappings.

An *entry* is ``(dims, slots)`` (see ``slots.py``). ``merge`` is the one general rule
behind element-wise ops, matmul/einsum, linear and attention: every input dimension gets
a label, inputs that share a label see the same positions, labels missing from the
output are contracted. ``reshape`` covers view/reshape/flatten/unflatten/squeeze.
"""
from __future__ import annotations

import numpy as np

from .slots import FROZEN, SlotBook

Entry = tuple[tuple[int, ...], np.ndarray]


def _canon(labels, arr):
    order = sorted(range(len(labels)), key=lambda k: repr(labels[k]))
    return tuple(labels[k] for k in order), np.transpose(arr, order)


class Operand:
    """One input of ``merge``: its entries relabelled, and the labels where it has size > 1."""

    def __init__(self, entries: list[tuple[tuple, np.ndarray]], present: set):
        self.entries = [_canon(lab, arr) for lab, arr in entries]
        self.present = present


def merge(book: SlotBook, ops: list[Operand], out_labels: list) -> list[tuple[tuple, np.ndarray]]:
    """Join entries that meet, freeze what meets untracked data, return output entries (labelled)."""
    # 1. interactions between every ordered pair of operands
    for i, a in enumerate(ops):
        for j, b in enumerate(ops):
            if i == j:
                continue
            for la, arr in a.entries:
                sa = set(la)
                shared = sa & b.present
                if not shared:
                    continue
                covered: set = set()
                for lb, brr in b.entries:
                    sb = set(lb)
                    if not (sa & sb):
                        continue
                    covered |= sb
                    if sa == sb:
                        book.join(arr, brr)
                    elif sb < sa:
                        axes = tuple(la.index(x) for x in lb)
                        if all(book.internal(arr, ax) for ax in axes):
                            # b varies only along positions inside our heads (a rotary table):
                            # heads go whole, so b is never sliced
                            book.freeze(brr)
                            continue
                        co = book.coarse_of(arr, axes)
                        book.join(co, brr)
                    elif sa < sb:
                        pass  # handled from b's side
                    elif i < j:
                        # they share some dims only (q and v share heads, not head dims):
                        # couple the blocks along the shared dims
                        common = tuple(x for x in la if x in sb)
                        ca = book.coarse_of(arr, tuple(la.index(x) for x in common))
                        cb = book.coarse_of(brr, tuple(lb.index(x) for x in common))
                        book.join(ca, cb)
                loose = [x for x in shared - covered if not book.internal(arr, la.index(x))]
                if loose:
                    # the other operand holds these channels but we cannot tell which is which
                    book.freeze(arr)
    # 2. output entries
    outs: list[tuple[tuple, np.ndarray]] = []
    seen: set = set()
    out_set = set(out_labels)
    for k, op in enumerate(ops):
        for la, arr in op.entries:
            kept = tuple(x for x in la if x in out_set)
            if len(kept) < len(la):
                gone = set(la) - out_set
                partners = any(gone & o.present for j, o in enumerate(ops) if j != k)
                if not partners and not all(book.internal(arr, la.index(x)) for x in gone):
                    # reduced or gathered without a partner: removing a channel changes the result
                    # (reducing within heads is fine: heads go whole)
                    book.freeze(arr)
                    continue
            if not kept:
                continue
            if len(kept) < len(la):
                axes = tuple(la.index(x) for x in kept)
                arr = book.coarse_of(arr, axes)
                la = kept
            key = frozenset(la)
            if key in seen:
                continue
            seen.add(key)
            outs.append((la, arr))
    # 3. drop coarse entries implied by finer ones; freeze partial overlaps
    final = []
    for la, arr in outs:
        sa = set(la)
        implied = False
        for lb, brr in outs:
            sb = set(lb)
            if sb == sa:
                continue
            if sa < sb:
                implied = True
            elif sa & sb and not sb < sa:
                book.freeze(arr)
                implied = True
        if not implied:
            final.append((la, arr))
    return final


def _sorted_entry(dims: list[int], arr) -> Entry:
    """An entry whose array axes follow ``dims``, re-ordered so the dims ascend."""
    order = sorted(range(len(dims)), key=lambda k: dims[k])
    return tuple(dims[k] for k in order), np.transpose(arr, order)


def to_dims(labelled, out_labels) -> list[Entry]:
    pos = {lab: d for d, lab in enumerate(out_labels)}
    return [_sorted_entry([pos[x] for x in la], arr) for la, arr in labelled]


def spread(t) -> list[bool]:
    """Per dim of tensor ``t``: True where it holds distinct positions. A dim of size 1, or
    one made by broadcasting (``expand`` of a size-1 dim: stride 0, every position is the
    same memory, e.g. the one kv head repeated for every query head) holds no channels, so
    it cannot clash with the channels another operand has there. Used by the contraction
    rules (matmul, einsum, attention) only: element-wise ops keep the size rule."""
    return [s > 1 and st != 0 for s, st in zip(t.shape, t.stride())]


def elementwise_operand(entries: list[Entry], shape, out_shape, tag) -> Operand:
    """Align an operand to the output from the right; broadcast (size-1) dims get private labels."""
    n, m = len(out_shape), len(shape)
    labels = []
    present = set()
    for k in range(m):
        d = k + n - m
        if shape[k] == out_shape[d]:
            labels.append(d)
            if shape[k] > 1:
                present.add(d)
        else:
            labels.append(("bcast", tag, k))
    ents = []
    for dims, arr in entries:
        ents.append((tuple(labels[d] for d in dims), arr))
    return Operand(ents, present)


def reshape_groups(src, dst):
    """Pair up runs of dims whose products match (size-1 dims ignored); None if impossible."""
    a = [d for d in range(len(src)) if src[d] != 1]
    b = [d for d in range(len(dst)) if dst[d] != 1]
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i >= len(a) or j >= len(b):
            return None
        gi, gj = [a[i]], [b[j]]
        pa, pb = src[a[i]], dst[b[j]]
        i += 1
        j += 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                gi.append(a[i])
                pa *= src[a[i]]
                i += 1
            else:
                if j >= len(b):
                    return None
                gj.append(b[j])
                pb *= dst[b[j]]
                j += 1
        groups.append((gi, gj))
    return groups


def simplify(dims: list[int], field: np.ndarray) -> Entry | None:
    """Drop axes along which the slot field does not vary (broadcast copies of a channel)."""
    keep = []
    for ax in range(field.ndim):
        first = np.take(field, [0], axis=ax)
        if field.shape[ax] > 1 and not np.array_equal(field, np.broadcast_to(first, field.shape)):
            keep.append(ax)
    idx = tuple(slice(None) if ax in keep else 0 for ax in range(field.ndim))
    reduced = field[idx]
    if not keep:
        return None
    return tuple(dims[ax] for ax in keep), np.ascontiguousarray(reduced)


def reshape(book: SlotBook, entries: list[Entry], src, dst, on_split=None) -> list[Entry]:
    groups = reshape_groups(list(src), list(dst))
    if groups is None:
        for _, arr in entries:
            book.freeze(arr)
        return []
    out = []
    for dims, arr in entries:
        touched = [g for g in groups if set(g[0]) & set(dims)]
        if not touched or any(src[d] == 1 for d in dims):
            book.freeze(arr)
            continue
        ins = sorted(d for g in touched for d in g[0])
        outs = sorted(d for g in touched for d in g[1])
        if not set(dims) <= set(ins):
            book.freeze(arr)
            continue
        full = [src[d] for d in ins]
        if int(np.prod(full)) > 20_000_000:
            book.freeze(arr)
            continue
        expanded = arr.reshape([src[d] if d in dims else 1 for d in ins])
        field = np.broadcast_to(expanded, full).reshape([dst[d] for d in outs])
        ent = simplify(outs, field)
        if ent is None:
            book.freeze(arr)
            continue
        if len(ent[0]) > len(dims) and on_split is not None:
            on_split(ent)
        out.append(ent)
    # two entries can end up on the same dim (flattening a tensor tracked along two dims):
    # one dim cannot carry two channel sets, so keep neither
    clash = [i for i, (d1, _) in enumerate(out) if any(set(d1) & set(d2) for j, (d2, _) in enumerate(out) if j != i)]
    whole = [i for i in clash if _tied_heads(book, out[i][1])]
    if len(whole) == 1:
        # whole heads (q's heads after attention) flattened with channels that every head
        # shares (the lone kv head's value dims, broadcast over the query heads): keeping
        # the heads and freezing the shared channels is exact. Each position becomes one
        # more position of its head's first channel (the head goes whole, so does it)
        dims, arr = out[whole[0]]
        out[whole[0]] = (dims, np.vectorize(lambda c: int(book.coarse[int(c)][0]), otypes=[np.int64])(arr))
        clash = [i for i in clash if i != whole[0]]
    for i in clash:
        book.freeze(out[i][1])
    return [e for i, e in enumerate(out) if i not in clash]


def _tied_heads(book: SlotBook, arr) -> bool:
    """True when every slot of ``arr`` is a coarse slot standing for one whole tied head."""
    if not book.coarse or not np.isin(arr, list(book.coarse)).all():
        return False
    return all(book.internal(book.coarse[int(c)].reshape(1, -1), 1) for c in np.unique(arr))


def permute(entries: list[Entry], perm: list[int]) -> list[Entry]:
    """Output dim k is input dim perm[k]."""
    inv = {src: k for k, src in enumerate(perm)}
    return [_sorted_entry([inv[d] for d in dims], arr) for dims, arr in entries]


def shift(entries: list[Entry], offset: int) -> list[Entry]:
    return [(tuple(d + offset for d in dims), arr) for dims, arr in entries]


def frozen_like(n: int) -> np.ndarray:
    return np.full(n, FROZEN, dtype=np.int64)
