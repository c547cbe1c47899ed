"""SynFlow (Tanaka et al. 2020): data-free, iterative conservation of synaptic flow.

100 rounds of score-and-prune with density rho^((k+1)/100); every parameter (BN too) is
replaced by its absolute value, the input is all ones and R is the summed output. Biases are
not pruned. See ``prunekit.sparse.scores.synflow_masks``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..foundations.hparams import hp
from ..sparse.scores import synflow_masks
from .registry import register
from .snip import AtInitMethod


@dataclass
class SynFlowHparams:
    rounds: int = hp(100, "Prune-rescore rounds (paper: 100).")
    from_init: bool = hp(True, "Score a fresh init (paper) instead of the pretrained model.")
    train_budget: str = hp("pretrain", "pretrain: train from scratch with the dense budget (paper); finetune: the fine-tune budget.", choices=("pretrain", "finetune"))
    include_classifier: bool = hp(True, "Also prune the classifier.")


@register
class SynFlow(AtInitMethod):
    name = "synflow"
    Hparams = SynFlowHparams

    def masks(self, model, target, ctx):
        return synflow_masks(model, target, self.hp.rounds, input_shape=ctx.data.input_shape,
                             include_classifier=self.hp.include_classifier)
