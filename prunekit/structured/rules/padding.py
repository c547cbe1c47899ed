"""Channels inserted by ``F.pad`` (CIFAR option-A shortcuts) and the attributes behind them.

``F.pad`` along a channel dim inserts constant channels before and after the input's
channels. When a residual addition meets them, the other branch's channels at those
positions are coupled to nothing but each other, so they form their own group; removing
some of them needs the pad amounts lowered, which is only possible when the amounts come
from module attributes (``self.pad_before``). Values alone cannot say which attribute
feeds which side (``pad_before == pad_after == 8``) or whether an equal-valued attribute
(``stride``) is used at all, so after the traced forward every candidate attribute is
raised by one and the module rerun up to that pad call (counted in the same order as
during capture, then stopped): an attribute is accepted when exactly its side's amount
moved by one. One attribute feeding both sides makes both sides lose equally many
channels. Anything else (amounts computed from shapes, closures, literals) freezes the
padded channels: never wrong, only less pruning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..trace.capture import PAD_FUNCS
from .ops_common import _arg


@dataclass
class PendingPad:
    owner: str  # module whose forward ran the pad ("<model>" for the top level)
    args: tuple
    kwargs: dict
    call: int  # 1-based number of this pad call within the owner's call
    pad: list
    dim: int
    pair: int  # entries 2*pair (before) and 2*pair+1 (after) of ``pad`` pad ``dim``
    before: np.ndarray  # slots of the inserted channels
    after: np.ndarray


class _Stop(Exception):
    pass


class _Probe(TorchFunctionMode):
    """Records the ``pad`` argument of the ``call``-th pad call, then stops the forward."""

    def __init__(self, call: int):
        super().__init__()
        self.call, self.n, self.seen = call, 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PAD_FUNCS:
            self.n += 1
            if self.n == self.call:
                self.seen = [int(v) for v in _arg(args, kwargs, 1, "pad")]
                raise _Stop
        return func(*args, **kwargs)


def _probe(mod, pp: PendingPad):
    probe = _Probe(pp.call)
    try:
        with torch.no_grad(), probe:
            mod(*pp.args, **pp.kwargs)
    except _Stop:
        pass
    except Exception:
        return None  # the changed attribute broke the forward: it proves nothing
    return probe.seen


def _candidates(mod, values) -> list[str]:
    # every int attribute with a pad amount's value; the probe tells which (if any) feed it
    return [k for k, v in vars(mod).items() if type(v) is int and v in values]


def _sides(mod, pp: PendingPad, base: list) -> dict[str, str] | None:
    """{attribute: "before" | "after" | "both"} feeding the padded amounts, or None."""
    b, a = pp.pad[2 * pp.pair], pp.pad[2 * pp.pair + 1]
    sides = {}
    for name in _candidates(mod, {v for v in (b, a) if v > 0}):
        old = getattr(mod, name)
        try:
            setattr(mod, name, old + 1)
            seen = _probe(mod, pp)
        finally:
            setattr(mod, name, old)
        if seen is None or len(seen) != len(base):
            continue
        delta = [s - o for s, o in zip(seen, base)]
        moved = {i for i, v in enumerate(delta) if v}
        if moved == {2 * pp.pair} and delta[2 * pp.pair] == 1:
            sides[name] = "before"
        elif moved == {2 * pp.pair + 1} and delta[2 * pp.pair + 1] == 1:
            sides[name] = "after"
        elif moved == {2 * pp.pair, 2 * pp.pair + 1} and delta[2 * pp.pair] == delta[2 * pp.pair + 1] == 1:
            sides[name] = "both"
    need = [s for s, n in (("before", b), ("after", a)) if n > 0]
    for s in need:
        if sum(1 for v in sides.values() if v in (s, "both")) != 1:
            return None  # no attribute, or several, drive this side
    if "both" in sides.values() and (b != a or len(sides) != 1):
        return None
    return sides


def settle(cap) -> None:
    """Record each pad call whose amounts live in attributes; freeze the others' channels."""
    pending, cap.pending_pads = cap.pending_pads, []
    if not pending:
        return
    model = cap.model
    was = model.training
    model.eval()
    try:
        baselines: dict = {}
        for pp in pending:
            mod = model if pp.owner == "<model>" else cap._mods[pp.owner]
            sides = None
            if _candidates(mod, {v for v in (pp.pad[2 * pp.pair], pp.pad[2 * pp.pair + 1]) if v > 0}):
                key = (id(pp.args), pp.call)
                if key not in baselines:
                    baselines[key] = _probe(mod, pp)
                base = baselines[key]
                if base == [int(v) for v in pp.pad]:  # the rerun reaches the same call
                    sides = _sides(mod, pp, base)
            if not sides:
                cap.book.freeze(pp.before)
                cap.book.freeze(pp.after)
                continue
            if "both" in sides.values():
                cap.parts.append([pp.before, pp.after])  # one amount for both sides: equal removal
            owner = "" if pp.owner == "<model>" else pp.owner
            cap.record("pad", owner, pp.dim, np.concatenate([pp.before, pp.after]), before=len(pp.before),
                       attrs=sides, key=tuple(sorted(sides.items())))
    finally:
        model.train(was)


def attribute_updates(mod, attrs: dict[str, str], n_before: int, positions) -> dict[str, int]:
    """New attribute values once the padded channels at ``positions`` (of the record's
    before-then-after slots) are removed."""
    pos = [int(p) for p in positions if p >= 0]
    lost = {"before": sum(1 for p in pos if p < n_before), "after": sum(1 for p in pos if p >= n_before)}
    lost["both"] = lost["before"]
    if "both" in attrs.values() and lost["before"] != lost["after"]:
        raise ValueError(f"padding in {type(mod).__name__} uses one amount for both sides; "
                         f"remove equally many padded channels before and after")
    return {name: getattr(mod, name) - lost[side] for name, side in attrs.items()}
