"""L1 + OrthP (Wang et al. 2021, "Dynamical Isometry: The Missing Ingredient for Neural
Network Pruning"): after L1 filter pruning, replace every conv/linear weight of the slim
model by the orthogonal factor of its own QR decomposition, restoring dynamical isometry.

Per layer: W as rows x cols (out x in*k*k), transposed when rows < cols so QR gives
orthonormal columns; Q <- Q * sign(diag R) (the unique QR with positive diagonal, so the
result depends only on W); transpose back; multiply by the activation gain (1 for a linear
network, sqrt(2) for ReLU). For a linear MLP whose layers do not widen, the product of the
weights then has orthonormal rows: every Jacobian singular value is exactly 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..foundations.hparams import hp
from .base import PruningMethod
from .registry import register
from .tpp_schedule import PlanHparams, groups_of, selection_plan, slim_by_plan

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_gain(model: nn.Module) -> float:
    """sqrt(2) if the network uses ReLU anywhere, else 1 (identity activations)."""
    relu = any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    return math.sqrt(2.0) if relu else 1.0


@torch.no_grad()
def orthogonalize_(model: nn.Module, gain: float | None = None) -> nn.Module:
    """OrthP in place on every conv/linear weight of ``model``; returns it."""
    g = default_gain(model) if gain is None else float(gain)
    for m in model.modules():
        if not isinstance(m, LAYERS) or getattr(m, "groups", 1) != 1:
            continue
        w = m.weight
        a = w.reshape(w.shape[0], -1).double()
        flip = a.shape[0] < a.shape[1]
        if flip:
            a = a.t()
        q, r = torch.linalg.qr(a, mode="reduced")
        sign = torch.sign(torch.diagonal(r))
        sign[sign == 0] = 1  # a zero column (dead filter) would otherwise zero its Q column
        q = q * sign
        if flip:
            q = q.t()
        w.copy_((g * q).reshape(w.shape).to(w.dtype))
    return model


@dataclass
class OrthPHparams(PlanHparams):
    gain: float | None = hp(None, "Activation gain (None: sqrt(2) if the net has ReLU, else 1).")


@register
class L1OrthP(PruningMethod):
    name = "l1-orthp"
    kind = "structured"
    target_name = "ratio"
    Hparams = OrthPHparams

    def prune(self, model, target, ctx):
        model = self.copy(model)
        groups = groups_of(model, ctx.example_inputs)
        slim = slim_by_plan(model, ctx.example_inputs, selection_plan(model, groups, target, self.hp, ctx.data), groups)
        return orthogonalize_(slim, self.hp.gain)
