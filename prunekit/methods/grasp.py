"""GraSP (Wang et al. 2020): remove the weights whose removal least hurts gradient flow.

Score S = -theta * (H g) on logits / T (T = 200), from a class-balanced batch; the highest
scores are removed. See ``prunekit.sparse.scores.grasp_scores``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.scores import score_masks
from .registry import register
from .snip import AtInitMethod


def class_balanced_batch(data, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random training samples of every class (fewer if a class is smaller)."""
    g = torch.Generator().manual_seed(seed)
    y = data.y
    idx = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return data.get_batch(torch.cat(idx))


@dataclass
class GraSPHparams:
    samples_per_class: int = hp(10, "Scoring samples per class (paper: 10 for CIFAR-10).")
    temperature: float = hp(200.0, "Softmax temperature T: logits are divided by T before the loss.")
    reinit_classifier: bool = hp(True, "Re-initialise the classifier (xavier) on the scoring copy, as GraSP's code does.")
    from_init: bool = hp(True, "Score a fresh init (paper) instead of the pretrained model.")
    train_budget: str = hp("pretrain", "pretrain: train from scratch with the dense budget (paper); finetune: the fine-tune budget.", choices=("pretrain", "finetune"))
    include_classifier: bool = hp(True, "Also prune the classifier.")


@register
class GraSP(AtInitMethod):
    name = "grasp"
    Hparams = GraSPHparams

    def masks(self, model, target, ctx):
        batch = class_balanced_batch(ctx.data.train, self.hp.samples_per_class, ctx.seed)
        return score_masks(model, "grasp", target, batch, self.hp.include_classifier,
                           temperature=self.hp.temperature, reinit_classifier=self.hp.reinit_classifier,
                           seed=ctx.seed)
