from __future__ import annotations

import torch.nn as nn


def _tensors(model: nn.Module):
    # With parametrize masks, count the effective (masked) weight, not the raw one.
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if name != "original":
                yield p
        if hasattr(mod, "parametrizations"):
            for pname in mod.parametrizations.keys():
                yield getattr(mod, pname)


def count_params(model: nn.Module) -> int:
    return sum(t.numel() for t in _tensors(model))


def count_nonzero(model: nn.Module) -> int:
    return sum(int((t != 0).sum()) for t in _tensors(model))
