"""Scratch: the slim architecture L1 pruning would give, re-initialised and trained from scratch.

The pruned channels are chosen by L1 on the pretrained weights (so the architecture is
exactly the L1 baseline's); the weights then come from a fresh ``ctx.build_model()`` (a
new random initialisation with the model's own init scheme, seed ``ctx.seed + 1`` so it
differs from the dense model's), slimmed with the same plan. Training budget: by default
the dense model's (``ctx.pretrain``: its epochs and LR schedule, the "Scratch-E" budget
of the literature), since fine-tuning LRs like 1e-3 are meaningless from scratch;
``budget="finetune"`` uses the fine-tuning hyperparameters instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..training import train
from .base import PruningMethod
from .registry import register
from .tpp_schedule import PlanHparams, groups_of, selection_plan, slim_by_plan


@dataclass
class ScratchHparams(PlanHparams):
    budget: str = hp("pretrain", "pretrain: train with the dense model's hyperparameters; finetune: with the "
                                 "fine-tuning ones.", choices=("pretrain", "finetune"))

    def __post_init__(self):
        if self.budget not in ("pretrain", "finetune"):
            raise ValueError(f"scratch budget must be 'pretrain' or 'finetune', got {self.budget!r}")


def fresh_slim(model, plan, groups, ctx, seed: int):
    """A newly initialised model of the same architecture, slimmed with ``plan``."""
    torch.manual_seed(seed)
    fresh = ctx.build_model()
    fresh_groups = groups_of(fresh, ctx.example_inputs)
    sizes = {g.id: g.size for g in fresh_groups}
    if any(sizes.get(g.id) != g.size for g in groups if g.id in plan):
        raise RuntimeError("ctx.build_model() gives a model whose channel groups differ from the pruned one's")
    return slim_by_plan(fresh, ctx.example_inputs, plan, fresh_groups)


@register
class Scratch(PruningMethod):
    name = "scratch"
    kind = "structured"
    target_name = "ratio"
    Hparams = ScratchHparams

    def prune(self, model, target, ctx):
        groups = groups_of(model, ctx.example_inputs)
        plan = selection_plan(model, groups, target, self.hp, ctx.data)
        return fresh_slim(model, plan, groups, ctx, ctx.seed + 1)

    def finetune(self, model, ctx):
        hp = ctx.pretrain if self.hp.budget == "pretrain" else ctx.finetune
        return train(model, ctx.data, hp, progress=ctx.progress)
