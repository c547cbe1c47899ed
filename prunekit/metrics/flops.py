"""FLOPs through ``torch.utils.flop_counter``.

``flops(model, inputs)`` returns dense FLOPs and *effective* FLOPs, where each conv or
linear layer's count is scaled by the density of its (masked) weight - the usual way
unstructured sparsity is credited (only non-zero weights multiply). Structured pruning
needs no credit: the slim model is simply smaller.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..sparse.masks import prunable_modules
from ..foundations.inputs import call_model as _run


@torch.no_grad()
def flops(model: nn.Module, inputs) -> dict:
    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        _run(model, inputs)
    model.train(was)
    per_module = counter.get_flop_counts()
    dense = int(counter.get_total_flops())
    saved = 0.0
    for name, m in prunable_modules(model).items():
        # FlopCounterMode keys modules as "<RootClass>.<attribute path>".
        counts = per_module.get(f"{type(model).__name__}.{name}", {})
        layer = sum(counts.values())
        w = m.weight
        density = float((w != 0).sum()) / w.numel()
        saved += layer * (1.0 - density)
    return {"dense": dense, "effective": int(round(dense - saved))}
