"""Pieces shared by the regularisation-based structured methods (TPP, GReg-1, GReg-2) and
the other structured baselines: which channels to prune (per-layer L1), the growing
regularisation schedule, and what a pruning plan means for every weight and BN layer.

A *plan* is ``{group_id: LongTensor of group-channel indices to remove}`` over the channel
groups found by ``prunekit.structured.channel_groups``; a group couples every layer whose
output rows must be removed together (e.g. all convs feeding one residual sum), so
penalising or zeroing a plan always touches every member layer.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..foundations.hparams import hp

# --- schedule ----------------------------------------------------------------------------


@dataclass
class RegSchedule:
    """reg(t) = delta * floor(t / every), held at ``ceiling`` once reached (TPP/GReg)."""

    delta: float
    every: int
    ceiling: float

    def __post_init__(self):
        if not (self.delta > 0 and self.every >= 1 and self.ceiling > 0):
            raise ValueError(f"need delta > 0, every >= 1, ceiling > 0 (got {self.delta}, {self.every}, "
                             f"{self.ceiling})")

    @property
    def rise_iters(self) -> int:
        """First iteration at which reg equals the ceiling."""
        # The tolerance stops 1.0 / 1e-4 = 10000.000000000002 from costing an extra step.
        return math.ceil(self.ceiling / self.delta - 1e-9) * self.every

    def value(self, t: int) -> float:
        if t >= self.rise_iters:
            return self.ceiling
        return min(self.ceiling, self.delta * (t // self.every))

    @classmethod
    def reaching(cls, ceiling: float, iters: int, every: int = 10) -> "RegSchedule":
        """The schedule whose delta is scaled so the ceiling is reached after ``iters``."""
        if iters < every:
            raise ValueError(f"need iters >= every ({every}) to reach the ceiling, got {iters}")
        return cls(ceiling * every / iters, every, ceiling)


# --- which channels ----------------------------------------------------------------------


@dataclass
class SelectHparams:
    """Which layers are pruned, and at what ratio (shared by every structured method here)."""

    layers: list = hp(["*"], "Name patterns (fnmatch) of layers whose output channels are pruned at the "
                             "target ratio; a coupled group is pruned if any member matches. TPP's ResNet-56 "
                             "setting is ['layer*.conv1'].")
    layer_ratios: dict = hp({}, "Pattern -> ratio overrides (first match wins), like TPP's --stage_pr.")
    skip: list = hp([], "Patterns of layers never pruned (TPP's --skip_layers).")


def n_pruned(ratio: float, n: int) -> int:
    """ceil(ratio * n), capped at int(0.995 n) so a layer keeps at least one channel."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    k = math.ceil(ratio * n - 1e-9)  # 0.7 * 10 is 7.000000000000001 in floats: still 7
    return max(0, min(k, int(0.995 * n), n - 1))


def _matches(names, patterns) -> str | None:
    for p in patterns:
        if any(fnmatch.fnmatchcase(n, p) for n in names):
            return p
    return None


def group_ratio(group, ratio: float, sel: SelectHparams) -> float:
    names = [n for n, _ in group.out_layers]
    if not group.prunable or not names or _matches(names, sel.skip):
        return 0.0
    for pattern, r in sel.layer_ratios.items():
        if _matches(names, [pattern]):
            return float(r)
    return ratio if _matches(names, sel.layers) else 0.0


def l1_scores(model: nn.Module, group) -> torch.Tensor:
    """Mean |w| of each group channel's filter, averaged over the group's producing layers.

    A producer that does not see a channel has position -1 there (concat); a channel that
    spans k rows (2-D positions) scores the mean over its rows.
    """
    mods = dict(model.named_modules())
    total, seen = torch.zeros(group.size), torch.zeros(group.size)
    for name, rows in group.out_layers:
        per_row = mods[name].weight.detach().abs().flatten(1).mean(1).cpu()
        rows2 = rows.view(group.size, -1)
        valid = rows2 >= 0
        vals = torch.where(valid, per_row[rows2.clamp_min(0)], torch.zeros(()))
        has = valid.any(1)
        total[has] += (vals.sum(1) / valid.sum(1).clamp_min(1))[has]
        seen += has.float()
    return total / seen.clamp_min(1)


def channel_sum(per_row: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """Per group channel: the sum of ``per_row`` over that channel's valid positions in a member."""
    rows2 = rows.view(size, -1)
    valid = rows2 >= 0
    return torch.where(valid, per_row.detach().cpu()[rows2.clamp_min(0)], torch.zeros(())).sum(1)


def _pick(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable sort: ties go to the lower index, so selection is deterministic
    return torch.argsort(scores, stable=True)[:k]


def plan_from_scores(groups, scores: dict, ratios: dict) -> dict[int, torch.Tensor]:
    """For each group with ratio > 0: the n_pruned(ratio, size) channels of lowest score.

    Groups the engine marks with ``unit`` > 1 (heads) lose whole units scored by their sum;
    groups with ``parts`` > 1 (chunks, grouped convs) lose equally many in every part.
    """
    plan = {}
    for g in groups:
        r = ratios.get(g.id, 0.0)
        if r <= 0:
            continue
        unit, parts = getattr(g, "unit", 1), getattr(g, "parts", 1)
        per_part = g.size // parts
        chosen = []
        for p in range(parts):
            s = scores[g.id][p * per_part:(p + 1) * per_part].view(-1, unit).sum(1)
            units = _pick(s, n_pruned(r, len(s)))
            idx = (units[:, None] * unit + torch.arange(unit)).flatten() + p * per_part
            chosen.append(idx)
        idx = torch.sort(torch.cat(chosen)).values
        if len(idx):
            plan[g.id] = idx
    return plan


def ratios_for(groups, ratio: float, sel: SelectHparams) -> dict[int, float]:
    return {g.id: group_ratio(g, ratio, sel) for g in groups}


def l1_plan(model: nn.Module, groups, ratio: float, sel: SelectHparams | None = None) -> dict[int, torch.Tensor]:
    """TPP's selection: in every selected group, the ceil(pr N) channels of smallest L1."""
    sel = sel or SelectHparams()
    ratios = ratios_for(groups, ratio, sel)
    scores = {g.id: l1_scores(model, g) for g in groups if ratios[g.id] > 0}
    plan = plan_from_scores(groups, scores, ratios)
    if not plan and ratio > 0:
        raise ValueError(f"nothing to prune: no prunable channel group matches layers={sel.layers} "
                         f"(skip={sel.skip}); prunable groups produce "
                         f"{sorted({n for g in groups if g.prunable for n, _ in g.out_layers})}")
    return plan


@dataclass
class PlanHparams(SelectHparams):
    """SelectHparams plus the choice of selection rule, for the methods that prune a fixed plan
    (TPP, OrthP, GReg, Scratch)."""

    selection: str = hp("l1", "How the pruned channels are chosen. l1: the target is the pruning ratio and "
                              "each selected layer loses its smallest-L1 filters (the papers). latency: the target "
                              "is the fraction of measured latency removed (0.5 = twice as fast on this machine) "
                              "and the latency-aware planner allocates widths over every prunable group "
                              "(structured.selection.latency_aware; layers/layer_ratios/skip are not used).",
                        choices=("l1", "latency"))
    latency_batch: int = hp(1, "Batch size at which latency is measured when selection is latency.")


def _group_key(g) -> tuple:
    return tuple(g.members), g.size, g.unit


def selection_plan(model: nn.Module, groups, target: float, sel, data=None) -> dict[int, torch.Tensor]:
    """The method's removal plan over ``groups``: TPP's L1 choice at ratio ``target``, or, with
    ``sel.selection == "latency"``, the latency-aware plan for a speed-up of 1 / (1 - target)
    measured at ``sel.latency_batch`` (one thread, torch eager)."""
    if getattr(sel, "selection", "l1") != "latency":
        return l1_plan(model, groups, target, sel)
    from ..structured.selection.latency_aware import latency_plan

    if not 0.0 < target < 1.0:
        raise ValueError(f"selection 'latency': the target is the fraction of latency removed, in (0, 1); "
                         f"got {target}")
    if data is None:
        raise ValueError("selection 'latency' needs the data (example inputs at latency_batch)")
    plan, lgroups, _ = latency_plan(model, data.example_inputs(sel.latency_batch), 1.0 / (1.0 - target), threads=1)
    # the planner traced another batch size: its groups are the same channels, matched by layers
    by_key = {_group_key(g): g for g in groups}
    by_id = {g.id: g for g in lgroups}
    out = {}
    for gid, idx in plan.items():
        g = by_key.get(_group_key(by_id[gid]))
        if g is None:
            raise ValueError(f"latency-aware group {by_id[gid].name!r} has no counterpart in the method's groups")
        out[g.id] = idx
    return out


def groups_of(model: nn.Module, example_inputs, ignore=()):
    from ..structured import channel_groups

    return channel_groups(model, example_inputs, ignore=ignore)


def slim_by_plan(model: nn.Module, example_inputs, plan, groups) -> nn.Module:
    from ..structured import slim_with_plan

    return slim_with_plan(model, example_inputs, plan, groups=groups)


# --- what a plan means per layer -----------------------------------------------------------


def _valid(rows: torch.Tensor) -> torch.Tensor:
    """Positions a member really has (-1 marks channels it does not see), flattened."""
    rows = rows.flatten()
    return rows[rows >= 0]


class PlanRows:
    """A plan resolved to the rows of every affected conv/linear and BN/LN layer.

    ``entries`` keeps one item per pruned group, in the model's module order (TPP zeroes
    layers one after another in that order); ``out_masks``/``norm_masks`` are the union per
    layer (bool over dim 0 / over the norm's channels).
    """

    def __init__(self, model: nn.Module, groups, plan: dict):
        self.mods = dict(model.named_modules())
        order = {n: i for i, n in enumerate(self.mods)}
        by_id = {g.id: g for g in groups}
        unknown = sorted(set(plan) - set(by_id))
        if unknown:
            raise KeyError(f"plan names unknown channel groups {unknown}")
        self.entries = []
        self.out_masks: dict[str, torch.Tensor] = {}
        self.norm_masks: dict[str, torch.Tensor] = {}
        for gid, idx in plan.items():
            g, idx = by_id[gid], torch.as_tensor(idx, dtype=torch.long)
            if len(idx) == 0:
                continue
            outs = [(n, _valid(rows[idx])) for n, rows in g.out_layers]
            norms = [(n, _valid(rows[idx])) for n, rows in getattr(g, "norm_layers", [])]
            self.entries.append((gid, outs, norms))
            for store, items in ((self.out_masks, outs), (self.norm_masks, norms)):
                for n, r in items:
                    size = self.mods[n].weight.shape[0]
                    store.setdefault(n, torch.zeros(size, dtype=torch.bool))[r] = True
        self.entries.sort(key=lambda e: min(order[n] for n, _ in e[1]) if e[1] else 0)

    @torch.no_grad()
    def add_l2_grad(self, reg: float, weights: bool = True, norms: bool = True) -> None:
        """grad += reg * param on the pruned rows (GReg's growing L2; TPP's BN term)."""
        if reg == 0:
            return
        for store, on in ((self.out_masks, weights), (self.norm_masks, norms)):
            if not on:
                continue
            for n, mask in store.items():
                m = self.mods[n]
                for p in (m.weight, getattr(m, "bias", None)):
                    if p is not None and p.grad is not None:
                        p.grad[mask] += reg * p[mask]

    @torch.no_grad()
    def zero(self, first: int | None = None) -> None:
        """Zero pruned filters (weight rows, bias) and their BN entries for the first groups."""
        for _, outs, norms in self.entries[:first]:
            for n, r in outs + norms:
                m = self.mods[n]
                for p in (m.weight, getattr(m, "bias", None)):
                    if p is not None:
                        p[r] = 0
