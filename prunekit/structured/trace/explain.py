"""Coverage report: ``explain(model, example_inputs)`` says which groups prune and why others don't.

Each group comes with its id, size, member modules and, when frozen, the reason. Frozen
channels all end up joined to slot ``FROZEN``; to say *why*, the join graph is cut at
every freeze edge and each frozen channel is traced to the freezes that reached its own
component. Each freeze is attributed to what was running when it was made (``SlotBook.note``):
an op without a rule, an op whose rule keeps the channels (hard-coded indices...), a leaf
module, an ignored module, the model output, pad amounts no attribute holds.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from .groups import analyse
from .slots import FROZEN, components

INDEX_OPS = {"getitem", "setitem", "__getitem__", "__setitem__", "index_select", "gather", "scatter", "take",
             "index", "index_put", "split", "split_with_sizes", "unbind", "narrow", "select"}


@dataclass
class GroupInfo:
    id: int
    size: int
    members: list[str]
    prunable: bool
    reason: str = ""
    layers: list[str] = field(default_factory=list)  # "name:out" / "name:in" / "name:norm" / "tensor:param"


@dataclass
class Explanation:
    groups: list[GroupInfo]
    unknown_ops: list[str]

    @property
    def prunable(self) -> list[GroupInfo]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[GroupInfo]:
        return [g for g in self.groups if not g.prunable]

    def to_dict(self) -> dict:
        return {"groups": [vars(g) for g in self.groups], "unknown_ops": list(self.unknown_ops)}

    def _rows(self):
        for g in self.groups:
            members = ", ".join(g.members[:4]) + (f" (+{len(g.members) - 4})" if len(g.members) > 4 else "")
            yield [str(g.id), str(g.size), "yes" if g.prunable else "no", members, g.reason]

    def to_markdown(self) -> str:
        head = ["group", "size", "prunable", "members", "why frozen"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self._rows()]
        return "\n".join(lines + [self._summary()])

    def _summary(self) -> str:
        n = sum(g.size for g in self.prunable)
        total = sum(g.size for g in self.groups)
        text = f"\n{len(self.prunable)} of {len(self.groups)} groups prunable ({n} of {total} channels)"
        if self.unknown_ops:
            text += f"; ops without a rule: {', '.join(sorted(set(self.unknown_ops)))}"
        return text

    def __str__(self) -> str:
        head = ["group", "size", "prunable", "members", "why frozen"]
        rows = list(self._rows())
        widths = [min(60, max(len(head[i]), *(len(r[i]) for r in rows))) if rows else len(head[i])
                  for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
        return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows]) + "\n" + self._summary().strip()


def _describe(what: str, unknown: set[str]) -> str:
    if what.startswith("op "):
        name, _, where = what[3:].partition(" in ")
        if f"{name} in {where}" in unknown:
            return f"op {name} has no channel rule (in {where})"
        if name in INDEX_OPS:
            return f"positions picked by hard-coded indices (op {name} in {where})"
        return f"op {name} in {where} cannot carry these channels"
    if what == "model output":
        return "channels reach a model output"
    if what.startswith("module "):
        return f"leaf {what[7:]} keeps them"
    return what


def freeze_reasons(cap):
    """({component of the join graph without freeze edges: what froze it, first cause first},
    component label per slot)."""
    book = cap.book
    if not book._a:
        return {}, None
    lens = np.array([len(x) for x in book._a])
    a, b = book.edges()
    arr = np.repeat(np.arange(len(lens)), lens)
    fz = (a == FROZEN) | (b == FROZEN)
    lab = components(book.next, a[~fz], b[~fz])
    seeds = np.where(a[fz] == FROZEN, b[fz], a[fz])
    starts = [m[0] for m in book.marks]
    unknown = set(cap.unknown)
    out: dict[int, list[str]] = {}
    for s, k in zip(seeds.tolist(), arr[fz].tolist()):
        if s == FROZEN:
            continue
        i = bisect.bisect_right(starts, k) - 1
        why = _describe(book.marks[i][1], unknown) if i >= 0 else "frozen"
        lst = out.setdefault(int(lab[s]), [])
        if why not in lst:
            lst.append(why)
    return out, lab


def explain(model: nn.Module, example_inputs, ignore=()) -> Explanation:
    """Analyse ``model`` (as ``channel_groups`` does, same groups and ids) and say for every
    frozen group why; ``str()`` / ``.to_markdown()`` render a table."""
    cap = analyse(model, example_inputs, ignore)
    reasons, lab = freeze_reasons(cap)
    records = {(r.kind, r.name): r for r in cap.records.values()}
    infos = []
    for g in cap.groups:
        layers = [f"{n}:out" for n, _ in g.out_layers] + [f"{n}:in" for n, _ in g.in_layers] + \
                 [f"{n}:norm" for n, _ in g.norm_layers] + [f"{n}:param" for n, _, _ in g.params]
        reason = g.reason
        if not g.prunable and reason.startswith("channels reach a model output, an ignored module") and lab is not None:
            # a per-producer frozen group: its rows' own components say what froze them
            r = records.get(("out", g.members[0]))
            whys: list[str] = []
            if r is not None:
                rows = g.out_layers[0][1].numpy()
                for c in dict.fromkeys(lab[r.slots[rows]].tolist()):
                    for w in reasons.get(c, []):
                        if w not in whys:
                            whys.append(w)
            reason = "; ".join(whys[:3]) + (f" (+{len(whys) - 3} more)" if len(whys) > 3 else "") if whys else reason
        infos.append(GroupInfo(g.id, g.size, list(g.members), g.prunable, reason, layers))
    return Explanation(infos, list(cap.unknown))
