"""Channel shuffles: ``pixel_shuffle``/``pixel_unshuffle`` and the ShuffleNet reshape
``x.view(B, g, C // g, H, W).transpose(1, 2).reshape(B, C, H, W)``.

A view that splits a channel dim in two is taken for a split into attention heads, whose
rows go whole (``view`` ties them). When the split tensor only goes through permutes and
is merged back into one dim, it was a channel permutation instead: the tie is undone. If
the merge transposed the two factors (a shuffle), channel ``q`` of every one of the ``g``
blocks lands next to the others, and the slim model shuffles ``g`` blocks of fewer
channels, so it slices consistently only if the same ``q`` goes from every block: those
``g`` channels are joined into one (each block loses the same positions; ``g`` is fixed).
"""
from __future__ import annotations

import numpy as np

from ..trace.capture import flat_tensors
from .ops_common import _arg


class Split:
    """A channel dim split in two by a view, not yet used by anything but permutes."""

    def __init__(self, tie: tuple, rows: np.ndarray):
        self.tie, self.rows, self.pinned = tie, rows, False


def _splits(cap) -> dict:
    return cap.__dict__.setdefault("shuffle_splits", {})


def on_split(cap, out, tie, rows) -> None:
    if rows.ndim == 2:
        _splits(cap)[id(out)] = Split(tie, rows)


def track(cap, rule_kind: str, ins, outs) -> None:
    """Permutes, views and copies carry a split along; any other use pins its tie for good
    (that op may have relied on heads going whole)."""
    sp = _splits(cap)
    if not sp:
        return
    for t in ins:
        s = sp.get(id(t))
        if s is None:
            continue
        if rule_kind == "carry":  # a view that is no merge-back pins it in ``merged``
            for o in outs:
                sp[id(o)] = s
        else:
            s.pinned = True


def merged(cap, x, res) -> None:
    """Called by ``view`` with its result entries: undo the tie of a split merged back."""
    s = _splits(cap).get(id(x))
    if s is None or s.pinned:
        return
    flat = s.rows.ravel()
    for dims, arr in res:
        if len(dims) != 1 or arr.shape != flat.shape:
            continue
        if np.array_equal(arr, flat):
            pass  # split and merged back in order: nothing moved
        elif np.array_equal(arr, s.rows.T.ravel()):
            for k in range(1, len(s.rows)):
                cap.book.join(s.rows[0], s.rows[k])
        else:
            continue
        if any(t is s.tie for t in cap.ties):
            cap.ties.remove(s.tie)
            cap.book.tie_row[s.rows] = -1
        s.pinned = True  # one merge per split
        return
    s.pinned = True  # merged into something else: the tie stays


def pixel_shuffle(cap, name, args, kwargs, out):
    """``(B, C*r*r, H, W) -> (B, C, H*r, W*r)``: output channel ``c`` is made of input channels
    ``c*r*r ... c*r*r + r*r - 1``, which go together (joined into one channel); for
    ``pixel_unshuffle`` every input channel becomes ``r*r`` consecutive output channels."""
    x = args[0]
    r = int(_arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"))
    o = flat_tensors(out)[0]
    nd = x.dim()
    cd = nd - 3
    res = []
    for dims, arr in cap.get(x):
        if dims == (cd,):
            if name == "pixel_shuffle":
                blocks = arr.reshape(-1, r * r)
                for k in range(1, r * r):
                    cap.book.join(blocks[:, 0], blocks[:, k])
                res.append((dims, blocks[:, 0].copy()))
            else:
                res.append((dims, np.repeat(arr, r * r)))
        elif max(dims) < cd:
            res.append((dims, arr))
        else:
            cap.book.freeze(arr)  # spatial positions are rearranged
    if o.dim() != nd:
        for _, arr in res:
            cap.book.freeze(arr)
        res = []
    return [res]


SHUFFLE_RULES = {"pixel_shuffle": pixel_shuffle, "pixel_unshuffle": pixel_shuffle}
