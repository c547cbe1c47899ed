"""Iterative magnitude pruning with rewinding (Lottery Ticket; Frankle et al., OpenLTH).

Each level removes ``rate`` (20%) of the remaining weights by global |w| of the trained
network, rewinds the survivors to their values at iteration k (the rewind point) and
retrains. Levels follow 1 - (1 - rate)^l, clamped so that every requested target is hit
exactly; ``imp_path`` walks one trajectory through several targets, so a sweep over
sparsities costs one IMP run, not one per target.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.masks import apply_masks, magnitude_masks
from ..training import train
from ..training.callbacks import RecordAt
from .base import PruningMethod
from .registry import register


def imp_schedule(targets, rate: float = 0.2) -> list[float]:
    """Sparsity after each level: geometric 1 - (1 - rate)^l steps, plus every target exactly."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    targets = sorted(targets)
    if not targets or not all(0.0 < t < 1.0 for t in targets):
        raise ValueError(f"targets must be in (0, 1), got {targets}")
    out, s = [], 0.0
    for t in targets:
        while True:
            nxt = 1.0 - (1.0 - s) * (1.0 - rate)
            if nxt >= t - 1e-9:
                break
            out.append(nxt)
            s = nxt
        if not out or out[-1] < t:
            out.append(t)
            s = t
    return out


def imp_path(trained, rewind_state: dict, schedule, include_classifier: bool = True):
    """Yield ``(sparsity, net)`` per level: ``net`` holds the rewound weights under the level's mask.
    The caller trains ``net`` in place before asking for the next level (masks come from it)."""
    if any(hasattr(m, "parametrizations") for m in trained.modules()):
        raise ValueError("imp_path needs the unmasked trained dense model (level 0)")
    template = copy.deepcopy(trained)
    current = trained
    for s in schedule:
        masks = magnitude_masks(current, s, "global", include_classifier)  # pruned stay pruned
        net = copy.deepcopy(template)
        net.load_state_dict(rewind_state)
        apply_masks(net, masks)
        yield s, net
        current = net


@dataclass
class IMPHparams:
    rate: float = hp(0.2, "Fraction of the remaining weights removed per level (paper: 0.2).")
    level_epochs: int = hp(0, "Training epochs per level with the dense (pretrain) settings; 0 = ctx.finetune epochs.")
    rewind_iteration: int = hp(0, "Rewind point when the runner recorded none (0 = init); IMP then trains its own level 0.")
    include_classifier: bool = hp(True, "Also prune the classifier (OpenLTH leaves it dense for LeNet/VGG).")


@register
class IMP(PruningMethod):
    name = "imp"
    Hparams = IMPHparams

    def level_hparams(self, ctx):
        epochs = self.hp.level_epochs or ctx.finetune.epochs
        return dataclasses.replace(ctx.pretrain, epochs=epochs, milestones=[])

    def prune(self, model, target, ctx):
        if ctx.rewind_state is not None:
            trained, rewind = model, ctx.rewind_state
        else:  # no rewind point for this dense model: train our own level 0 and record one
            torch.manual_seed(ctx.seed)
            trained = ctx.build_model()
            rec = RecordAt(self.hp.rewind_iteration)
            train(trained, ctx.data, self.level_hparams(ctx), callbacks=[rec], progress=ctx.progress)
            rewind = rec.state if rec.state is not None else trained.state_dict()
        schedule = imp_schedule([target], self.hp.rate)
        net = None
        for i, (s, net) in enumerate(imp_path(trained, rewind, schedule, self.hp.include_classifier)):
            if i < len(schedule) - 1:  # the last level is trained by finetune()
                train(net, ctx.data, self.level_hparams(ctx), progress=ctx.progress)
        return net

    def finetune(self, model, ctx):
        return train(model, ctx.data, self.level_hparams(ctx), progress=ctx.progress)
