"""Measured damage of narrowing one role: the loss table of ``latency_slim(cost="sensitivity")``.

Why measure it: every importance proxy (L1, Taylor, the kept share) scores a layer's channels
one by one, so none of them sees that a first conv cut to 1 of 8 channels is a bottleneck the
rest of the net cannot undo. On VGG-11 w0.125 / 28x28 digits the latency table makes exactly that
cut the cheapest way to 2x, and every proxy took it (PROTOCOL 4.5). Narrowing one role at a
time and reading the loss on a few hundred labelled samples is the per-layer sensitivity
analysis of Li et al. (ICLR 2017) and the empirical proposal scoring of NetAdapt (Yang et al.,
ECCV 2018), made additive so the same knapsack allocates with it: the loss of an allocation
is predicted as the sum of its roles' loss increases, as its latency is the sum of their savings.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...foundations.inputs import call_model
from ..surgery.slim import slim_with_plan
from .importance import _logits


def check_data(data) -> None:
    """One line before any work: the loss needs labelled samples."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor)):
        raise ValueError("cost 'sensitivity' needs data=(inputs, targets): labelled samples to measure the loss on")


def loss_on(model: nn.Module, data) -> float:
    """Mean cross-entropy of ``model`` on ``data = (inputs, targets)``; logits found as Taylor
    scoring finds them (a tensor, ``.logits`` or the first output)."""
    inputs, targets = data
    with torch.inference_mode():
        out = _logits(call_model(model.eval(), inputs))
    return float(F.cross_entropy(out.float(), targets.long()))


def sensitivity_table(model: nn.Module, x, groups, widths: dict, role_plan, data) -> dict:
    """{role: {kept units per part: loss increase over dense, >= 0}} for every width in
    ``widths`` ({role: [kp, ...]}), each role narrowed alone (``role_plan(role, kp)`` gives its
    removal plan). A width the model cannot take costs ``inf``: the allocation never picks it."""
    base = loss_on(model, data)
    table = {}
    for name, kps in widths.items():
        row = {}
        for kp in kps:
            plan = role_plan(name, kp)
            if not plan:
                row[kp] = 0.0  # full width: nothing removed
                continue
            try:
                slim = slim_with_plan(model, x, plan, groups=groups, validate=False)
            except Exception:  # noqa: BLE001 - as in measure_table: a width the model cannot take
                row[kp] = math.inf
                continue
            row[kp] = max(0.0, loss_on(slim, data) - base)
        table[name] = row
    return table
