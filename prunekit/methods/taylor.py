"""First-order Taylor importance (Molchanov et al., CVPR 2019), structured.

Removing a group channel zeroes every parameter belonging to it (its filter rows and
biases in all coupled producing layers, its BN gamma/beta); to first order the loss then
changes by -sum(g * w) over those parameters. Importance = that sum squared, averaged
over ``batches`` minibatches of the training set (computed per batch, as the paper does,
so gradients of opposite sign across batches do not cancel). The channels of smallest
importance are pruned, per layer at the target ratio.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..foundations.hparams import hp
from .base import PruningMethod
from .registry import register
from .tpp_schedule import SelectHparams, channel_sum, groups_of, plan_from_scores, ratios_for, slim_by_plan


def taylor_scores(model, groups, data, batches: int, batch_size: int, seed: int) -> dict[int, torch.Tensor]:
    mods = dict(model.named_modules())
    scores = {g.id: torch.zeros(g.size) for g in groups}
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    was = model.training
    model.train()  # the loss landscape the network is fine-tuned in (BN in batch mode)
    for b in range(batches):
        idx = order[(b * batch_size) % len(data):][:batch_size]
        x, y = data.get_batch(idx)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for g in groups:
                s = torch.zeros(g.size)
                for name, rows in list(g.out_layers) + list(getattr(g, "norm_layers", [])):
                    m = mods[name]
                    for p in (m.weight, getattr(m, "bias", None)):
                        if p is not None and p.grad is not None:
                            per_row = (p * p.grad).flatten(1).sum(1) if p.dim() > 1 else p * p.grad
                            s += channel_sum(per_row, rows, g.size)
                scores[g.id] += s.pow(2) / batches
    model.zero_grad(set_to_none=True)
    model.train(was)
    return scores


@dataclass
class TaylorHparams(SelectHparams):
    batches: int = hp(10, "Minibatches the importance is averaged over.")
    batch_size: int = hp(64, "Minibatch size for the importance estimate.")


@register
class Taylor(PruningMethod):
    name = "taylor"
    kind = "structured"
    target_name = "ratio"
    Hparams = TaylorHparams

    def prune(self, model, target, ctx):
        model = self.copy(model)
        groups = groups_of(model, ctx.example_inputs)
        ratios = ratios_for(groups, target, self.hp)
        chosen = [g for g in groups if ratios[g.id] > 0]
        scores = taylor_scores(model, chosen, ctx.data.train, self.hp.batches, self.hp.batch_size, ctx.seed)
        return slim_by_plan(model, ctx.example_inputs, plan_from_scores(groups, scores, ratios), groups)
