"""Magnitude pruning: keep the largest |w| (global across layers or per layer)."""
from __future__ import annotations

from dataclasses import dataclass

from ..foundations.hparams import hp
from ..sparse.masks import apply_masks, magnitude_masks
from .base import PruningMethod
from .registry import register


@dataclass
class MagnitudeHparams:
    scope: str = hp("global", "global: one threshold over all layers; layer: same sparsity in every layer.", choices=("global", "layer"))
    include_classifier: bool = hp(True, "Also prune the last (classifier) layer.")


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    Hparams = MagnitudeHparams

    def prune(self, model, target, ctx):
        model = self.copy(model)
        return apply_masks(model, magnitude_masks(model, target, self.hp.scope, self.hp.include_classifier))
