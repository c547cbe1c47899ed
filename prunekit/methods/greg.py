"""GReg-1 and GReg-2 (Wang et al., ICLR 2021, "Neural Pruning via Growing Regularization").

GReg-1: choose the pruned filters by L1 on the pretrained weights, then add a growing L2
penalty (grad += reg * W on those filters' weights and biases, reg rising on TPP's
schedule, then held at the ceiling for ``stabilise`` iterations) so they fade out while
the rest of the network compensates; then remove them.
GReg-2: first a growing L2 penalty on *all* filters of the layers to prune (up to
``pick_ceiling`` over ``pick_iters``), which lets filter magnitudes separate according to
how much the loss resists shrinking them; then choose by L1 and continue as GReg-1.

The schedule presets are TPP's (prunekit.methods.tpp.PRESETS); with scaled presets the
accumulated decay sum(lr * reg) is far smaller than in the paper, so pruned filters are
not yet near zero at removal: GReg is weakened more than TPP (whose stabilise phase zeroes
filters while training continues).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..training import Callback, train
from .base import PruningMethod
from .registry import register
from .tpp import PRESETS, phase_hparams
from .tpp_schedule import PlanRows, RegSchedule, PlanHparams, groups_of, selection_plan, ratios_for, slim_by_plan


class GrowingL2(Callback):
    """grad += reg(t) * param on ``rows`` for ``iters`` iterations, then stop training."""

    def __init__(self, rows: PlanRows, schedule: RegSchedule, iters: int):
        self.rows, self.schedule, self.iters, self.t = rows, schedule, iters, 0

    def after_backward(self, trainer):
        self.rows.add_l2_grad(self.schedule.value(self.t), weights=True, norms=False)

    def after_step(self, trainer):
        self.t += 1

    def should_stop(self, trainer):
        return self.t >= self.iters

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, state):
        self.t = int(state["t"])


@dataclass
class GRegHparams(PlanHparams):
    preset: str = hp("demo", f"Schedule preset (TPP's): {', '.join(PRESETS)}.", choices=tuple(PRESETS))
    stabilise: int | None = hp(None, "Iterations holding reg at the ceiling before removal (None: preset's).")
    pick_ceiling: float = hp(0.1, "GReg-2 only: reg ceiling of the uniform picking phase.")
    pick_iters: int | None = hp(None, "GReg-2 only: iterations of the picking phase (None: the preset's rise).")
    lr: float = hp(1e-3, "SGD learning rate of the regularisation phases.")
    momentum: float = hp(0.9, "SGD momentum.")
    weight_decay: float | None = hp(None, "Weight decay (None: the fine-tune one).")
    batch_size: int | None = hp(None, "Batch size (None: the fine-tune one).")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        self.schedule = RegSchedule(p["delta"], p["every"], p["ceiling"])
        if self.stabilise is None:
            self.stabilise = p["stabilise"]
        if self.pick_iters is None:
            self.pick_iters = self.schedule.rise_iters


class _GReg(PruningMethod):
    kind = "structured"
    target_name = "ratio"
    Hparams = GRegHparams

    def _phase(self, model, ctx, rows, schedule, iters):
        h = self.hp
        train(model, ctx.data, phase_hparams(iters, ctx, h.lr, h.momentum, h.weight_decay, h.batch_size),
              callbacks=[GrowingL2(rows, schedule, iters)], progress=ctx.progress, eval_test=False)

    def _greg1(self, model, groups, plan, ctx):
        rows = PlanRows(model, groups, plan)
        self._phase(model, ctx, rows, self.hp.schedule, self.hp.schedule.rise_iters + self.hp.stabilise)
        rows.zero()
        return slim_by_plan(model, ctx.example_inputs, plan, groups)


@register
class GReg1(_GReg):
    name = "greg1"

    def prune(self, model, target, ctx):
        model = self.copy(model)
        groups = groups_of(model, ctx.example_inputs)
        return self._greg1(model, groups, selection_plan(model, groups, target, self.hp, ctx.data), ctx)


@register
class GReg2(_GReg):
    name = "greg2"

    def prune(self, model, target, ctx):
        model = self.copy(model)
        groups = groups_of(model, ctx.example_inputs)
        ratios = ratios_for(groups, target, self.hp)
        everything = {g.id: torch.arange(g.size) for g in groups if ratios[g.id] > 0}
        h = self.hp
        pick = RegSchedule.reaching(h.pick_ceiling, h.pick_iters, h.schedule.every)
        self._phase(model, ctx, PlanRows(model, groups, everything), pick, h.pick_iters)
        return self._greg1(model, groups, selection_plan(model, groups, target, self.hp, ctx.data), ctx)
