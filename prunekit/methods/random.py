"""Random pruning: the sanity baseline every pruning paper should beat."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.masks import apply_masks, random_masks
from .base import PruningMethod
from .registry import register


@dataclass
class RandomHparams:
    scope: str = hp("layer", "layer: each layer at the target sparsity; global: uniform over all weights.", choices=("layer", "global"))
    include_classifier: bool = hp(True, "Also prune the last (classifier) layer.")


@register
class Random(PruningMethod):
    name = "random"
    Hparams = RandomHparams

    def prune(self, model, target, ctx):
        model = self.copy(model)
        g = torch.Generator().manual_seed(ctx.seed)
        return apply_masks(model, random_masks(model, target, self.hp.scope, self.hp.include_classifier, g))
