"""SNIP (Lee et al. 2019): keep the weights with the largest |g * w| on one batch at init.

Also holds ``AtInitMethod``, the shared shape of the pruning-at-initialisation baselines
(SNIP, GraSP, SynFlow): score a fresh, seeded ``ctx.build_model()`` (as the papers do,
or the pretrained model with ``from_init: false``), apply a global top-k mask, and train
from scratch with the dense training budget (``ctx.pretrain``), since an at-init mask has
no trained weights to fine-tune.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.masks import apply_masks
from ..sparse.scores import score_masks
from ..training import train
from .base import PruningMethod
from .registry import register


class AtInitMethod(PruningMethod):
    """Subclasses implement ``masks(model, target, ctx)``; hparams need from_init and train_budget."""

    def start_model(self, model, ctx):
        if not self.hp.from_init:
            return self.copy(model)
        torch.manual_seed(ctx.seed)
        return ctx.build_model()

    def masks(self, model, target, ctx) -> dict:
        raise NotImplementedError

    def prune(self, model, target, ctx):
        net = self.start_model(model, ctx)
        return apply_masks(net, self.masks(net, target, ctx))

    def finetune(self, model, ctx):
        if self.hp.train_budget not in ("pretrain", "finetune"):
            raise ValueError(f"train_budget must be 'pretrain' or 'finetune', got {self.hp.train_budget!r}")
        hp_ = ctx.pretrain if (self.hp.from_init and self.hp.train_budget == "pretrain") else ctx.finetune
        return train(model, ctx.data, hp_, callbacks=self.callbacks(model, ctx), progress=ctx.progress)


@dataclass
class SNIPHparams:
    batch_size: int = hp(128, "Samples in the one scoring batch (paper: 100-128).")
    from_init: bool = hp(True, "Score a fresh init (paper) instead of the pretrained model.")
    train_budget: str = hp("pretrain", "pretrain: train from scratch with the dense budget (paper); finetune: the fine-tune budget.", choices=("pretrain", "finetune"))
    include_classifier: bool = hp(True, "Also prune the classifier.")


@register
class SNIP(AtInitMethod):
    name = "snip"
    Hparams = SNIPHparams

    def masks(self, model, target, ctx):
        return score_masks(model, "snip", target, ctx.batch(self.hp.batch_size), self.hp.include_classifier)
