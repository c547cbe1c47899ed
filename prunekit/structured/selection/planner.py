"""Planning: which channels of which group to remove, from importance scores.

- ``mode="uniform"``: every group loses ``ratio`` of its channels (the L1/TPP setting).
- ``mode="global"``: channels are ranked across groups; each group's scores are first
  divided by their mean so groups of different scale compare fairly, then the lowest
  ``ratio`` of all channels (of the groups in the ranking) go.
- ``overrides``: ``{name pattern: ratio}``, the first pattern matching one of a group's
  producers (``group.producers``) sets that group's ratio (like TPP's ``--stage_pr``);
  ``skip``: patterns whose groups are not pruned (``--skip_layers``). A pattern matches
  a name equal to it, a glob match, or a name inside it (``"layer1"`` matches
  ``"layer1.0.conv1"``).
- Counts: a group of N channels loses ``ceil(ratio * N)`` (TPP/Li et al. round up),
  then its kept count is raised to a multiple of ``round_to`` (where possible) and never
  falls below one unit (one channel, or one attention head). Units (heads) are removed
  whole, and groups with ``parts`` lose equally many units in every part.
"""
from __future__ import annotations

import math
import re

import torch

from ..trace.capture import matches
from ..trace.groups import ChannelGroup


def check_ratio(ratio, what="ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {ratio}")
    return float(ratio)


def group_ratio(g: ChannelGroup, default, overrides: dict | None, skip) -> float | None:
    names = g.producers
    if skip and any(matches(n, skip) for n in names):
        return 0.0
    for pat, r in (overrides or {}).items():
        if any(matches(n, [pat]) for n in names):
            return r
    return default


def kept_units_per_part(g: ChannelGroup, n_remove_units: int, round_to: int) -> int:
    units = g.size // g.unit
    per = units // g.parts
    kept = units - n_remove_units
    kp = min(per, max(1, math.ceil(kept / g.parts)))
    step = math.lcm(round_to, getattr(g, "multiple", 1))  # a kernel's alignment (grouped_mm)
    while (kp * g.parts * g.unit) % step and kp < per:
        kp += 1
    return kp


def _member_units(g: ChannelGroup) -> list[set[int]]:
    """For every producer member, the units it has rows in (a producer may see only part of
    the group, e.g. one input of a concat that a later layer adds back into one stream)."""
    out = []
    for idx in [i for _, i in g.out_layers] + [i for _, _, i in g.params]:
        has = (idx >= 0) if idx.dim() == 1 else (idx >= 0).any(1)
        out.append(set((torch.nonzero(has).flatten() // g.unit).tolist()))
    return out


def choose(g: ChannelGroup, scores: torch.Tensor, kp: int) -> torch.Tensor:
    """Remove the lowest-scoring units in each part so that ``kp`` units per part remain,
    then give back the best unit of any producer that would lose all its rows (a layer
    cannot have zero outputs), keeping parts equal."""
    units = g.size // g.unit
    per = units // g.parts
    us = scores.reshape(units, g.unit).sum(1)
    removed: list[list[int]] = []
    for p in range(g.parts):
        part = us[p * per:(p + 1) * per]
        # stable order: ties broken by index so plans are reproducible
        order = torch.argsort(part, stable=True)
        removed.append([p * per + u for u in order[: per - kp].tolist()])
    members = _member_units(g)
    for _ in range(units):
        gone = {u for part in removed for u in part}
        starved = next((m for m in members if m and m <= gone), None)
        if starved is None:
            break
        best = max(starved, key=lambda u: float(us[u]))
        for p, part in enumerate(removed):
            if best in part:
                part.remove(best)
            elif part:
                part.remove(max(part, key=lambda u: float(us[u])))
    chans = [c for part in removed for u in part for c in range(u * g.unit, (u + 1) * g.unit)]
    return torch.tensor(sorted(chans), dtype=torch.long)


def role(g: ChannelGroup) -> tuple:
    """What a group is, irrespective of which layer: its producer's name with layer
    indices wildcarded (``encoder.layer.#.intermediate.dense``) and its shape in units."""
    return re.sub(r"\.\d+(?=\.|$)", ".#", g.name), g.size, g.unit, g.parts


def make_uniform(groups: list[ChannelGroup], scores: dict[int, torch.Tensor], out: dict[int, torch.Tensor],
                 round_to: int = 1) -> dict[int, torch.Tensor]:
    """Give every group of one role (the same layer type in every block) the same kept
    width: the median over the role, each group still dropping its own lowest-scoring
    units. A model whose blocks all have the same widths can be described by a standard
    config (HuggingFace's from_pretrained rebuilds it without prunekit)."""
    by_role: dict[tuple, list[ChannelGroup]] = {}
    for g in groups:
        if g.prunable and g.id in scores:
            by_role.setdefault(role(g), []).append(g)
    out = dict(out)
    for members in by_role.values():
        if len(members) < 2:
            continue
        removed = sorted(len(out.get(g.id, ())) // members[0].unit for g in members)
        n_remove = removed[len(removed) // 2]
        for g in members:
            kp = kept_units_per_part(g, n_remove, round_to)
            out.pop(g.id, None)
            if kp * g.parts < g.size // g.unit:
                out[g.id] = choose(g, scores[g.id], kp)
    return out


def plan_removal(groups: list[ChannelGroup], scores: dict[int, torch.Tensor], ratio: float, mode: str = "uniform",
                 overrides: dict | None = None, skip=(), round_to: int = 1,
                 uniform_layers: bool = False) -> dict[int, torch.Tensor]:
    """``{group id: LongTensor of channels to remove}`` (see the module doc); with
    ``uniform_layers`` every layer type keeps one width across blocks (``make_uniform``)."""
    if uniform_layers:
        plan = plan_removal(groups, scores, ratio, mode, overrides, skip, round_to)
        return make_uniform(groups, scores, plan, round_to)
    ratio = check_ratio(ratio)
    if mode not in ("uniform", "global"):
        raise ValueError(f"mode must be 'uniform' or 'global', got {mode!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    for pat, r in (overrides or {}).items():
        check_ratio(r, f"override ratio for {pat!r}")
    if isinstance(skip, str):
        skip = (skip,)
    out: dict[int, torch.Tensor] = {}
    ranked = []
    for g in groups:
        if not g.prunable or g.id not in scores:
            continue
        r = group_ratio(g, ratio if mode == "uniform" else None, overrides, skip)
        if r is None:
            ranked.append(g)
            continue
        units = g.size // g.unit
        kp = kept_units_per_part(g, math.ceil(r * units - 1e-9), round_to)
        if kp * g.parts < units:
            out[g.id] = choose(g, scores[g.id], kp)
    if ranked:
        # global ranking over units of mean-normalised scores
        entries = []
        total = 0
        for g in ranked:
            s = scores[g.id].float()
            us = s.reshape(-1, g.unit).sum(1)
            us = us / us.mean().clamp(min=1e-12)
            total += g.size
            for u, v in enumerate(us.tolist()):
                entries.append((v, g.id, u))
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        budget = ratio * total
        removed_units = {g.id: 0 for g in ranked}
        by_id = {g.id: g for g in ranked}
        spent = 0
        for v, gid, u in entries:
            g = by_id[gid]
            if spent + g.unit > budget + 1e-9:
                continue
            if removed_units[gid] + g.parts > g.size // g.unit - g.parts:
                continue  # keep at least one unit per part
            removed_units[gid] += 1
            spent += g.unit
        for g in ranked:
            units = g.size // g.unit
            kp = kept_units_per_part(g, removed_units[g.id], round_to)
            if kp * g.parts < units:
                out[g.id] = choose(g, scores[g.id], kp)
    return out
