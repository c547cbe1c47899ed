"""Network slimming (Liu et al., ICCV 2017): L1 on BN scaling factors, prune by |gamma|.

A sparsity phase trains a copy of the pretrained model with the subgradient
``s * sign(gamma)`` added to every BN gamma of the layers to prune (Liu et al. use
s = 1e-4 while training from scratch; here it is applied for ``epochs`` epochs to the
pretrained model, the usual way to retrofit it). Then channels are pruned by |gamma|:
``scope="global"`` (the paper) ranks all candidate channels together and removes the
ceil(ratio * total) smallest, never more than int(0.995 N) of one group; ``"layer"``
prunes each group at the ratio. Every pruned group needs a BN/LN on its channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..training import Callback, train
from .base import PruningMethod
from .registry import register
from .tpp import phase_hparams
from .tpp_schedule import (SelectHparams, channel_sum, groups_of, n_pruned, plan_from_scores, ratios_for,
                           slim_by_plan)


class GammaL1(Callback):
    def __init__(self, gammas, s: float):
        self.gammas, self.s = gammas, s

    @torch.no_grad()
    def after_backward(self, trainer):
        for p in self.gammas:
            if p.grad is not None:
                p.grad.add_(self.s * torch.sign(p))


def gamma_scores(model, groups) -> dict[int, torch.Tensor]:
    mods = dict(model.named_modules())
    out = {}
    for g in groups:
        norms = list(getattr(g, "norm_layers", []))
        if not norms:
            raise ValueError(f"network slimming needs a BatchNorm/LayerNorm on every pruned channel group; "
                             f"group {g.id} (layers {[n for n, _ in g.out_layers]}) has none")
        out[g.id] = sum(channel_sum(mods[n].weight.abs(), r, g.size) for n, r in norms) / len(norms)
    return out


def global_plan(groups, scores, ratios) -> dict[int, torch.Tensor]:
    """Smallest scores over all candidate groups together, with each group's cap respected."""
    cand = [g for g in groups if ratios[g.id] > 0]
    total = sum(n_pruned(ratios[g.id], g.size) for g in cand)
    flat = torch.cat([scores[g.id] for g in cand])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(cand)])
    chan = torch.cat([torch.arange(g.size) for g in cand])
    caps = [int(0.995 * g.size) for g in cand]
    taken: dict[int, list] = {g.id: [] for g in cand}
    for j in torch.argsort(flat, stable=True).tolist():
        if total == 0:
            break
        i = int(owner[j])
        if len(taken[cand[i].id]) < caps[i]:
            taken[cand[i].id].append(int(chan[j]))
            total -= 1
    return {gid: torch.tensor(sorted(v)) for gid, v in taken.items() if v}


@dataclass
class SlimmingHparams(SelectHparams):
    s: float = hp(1e-4, "L1 strength on BN gamma (Liu et al. 1e-4).")
    epochs: int = hp(2, "Epochs of the sparsity phase on the pretrained model (0 skips it).")
    lr: float = hp(1e-2, "SGD learning rate of the sparsity phase (constant).")
    scope: str = hp("global", "global (the paper: one |gamma| threshold) or layer (ratio in every group).", choices=("global", "layer"))

    def __post_init__(self):
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")


@register
class Slimming(PruningMethod):
    name = "slimming"
    kind = "structured"
    target_name = "ratio"
    Hparams = SlimmingHparams

    def prune(self, model, target, ctx):
        model = self.copy(model)
        groups = groups_of(model, ctx.example_inputs)
        ratios = ratios_for(groups, target, self.hp)
        chosen = [g for g in groups if ratios[g.id] > 0]
        gamma_scores(model, chosen)  # fail before training if some group has no BN
        mods = dict(model.named_modules())
        gammas = list({id(mods[n].weight): mods[n].weight for g in chosen for n, _ in g.norm_layers}.values())
        if self.hp.epochs:
            hp_ = phase_hparams(1, ctx, self.hp.lr, 0.9, None, None)
            hp_.epochs = self.hp.epochs
            train(model, ctx.data, hp_, callbacks=[GammaL1(gammas, self.hp.s)], progress=ctx.progress,
                  eval_test=False)
        scores = gamma_scores(model, chosen)
        plan = (global_plan(groups, scores, ratios) if self.hp.scope == "global"
                else plan_from_scores(groups, scores, ratios))
        return slim_by_plan(model, ctx.example_inputs, plan, groups)
