"""L1-norm filter pruning (Li et al., ICLR 2017), structured.

Every coupled channel group loses ``ratio`` of its channels (rounded up), the ones whose
producing filters have the smallest L1 norm (``criterion="l1-filter"``: sum of |w| over
each filter, summed over the group's producers). The dense model is copied and slimmed
physically by ``prunekit.structured.slim``; fine-tuning is the runner's default.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..foundations.hparams import hp
from ..structured import slim
from ..structured.selection.importance import CRITERIA
from .base import PruningMethod
from .registry import register


@dataclass
class L1FilterHparams:
    criterion: str = hp("l1-filter", "Importance: l1-filter (Li et al.), l1 or l2 (all group members), bn_scale, "
                                     "random.", choices=lambda: CRITERIA.names())  # user-registered criteria count too
    mode: str = hp("uniform", "uniform: the ratio in every group; global: ranked across groups.", choices=("uniform", "global"))
    skip: list = hp([], "Name patterns of layers whose channels are kept (e.g. ['conv1']).")
    layer_ratios: dict = hp({}, "Per-layer ratios by name pattern, e.g. {'layer1*': 0.3}.")
    round_to: int = hp(1, "Keep channel counts at multiples of this (e.g. 8 for fast kernels).")
    ignore: list = hp([], "Module names whose channels are never pruned (passed to the analysis).")


@register
class L1Filter(PruningMethod):
    name = "l1"
    kind = "structured"
    target_name = "ratio"
    Hparams = L1FilterHparams

    def prune(self, model, target, ctx):
        return slim(model, ctx.example_inputs, target, criterion=self.hp.criterion, ignore=tuple(self.hp.ignore),
                    round_to=self.hp.round_to, mode=self.hp.mode, overrides=dict(self.hp.layer_ratios),
                    skip=tuple(self.hp.skip), seed=ctx.seed)
