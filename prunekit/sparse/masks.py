"""Binary weight masks through ``torch.nn.utils.parametrize``.

The weight stays a dense parameter (``module.parametrizations.weight.original``); forward
sees ``original * mask``. Masked entries therefore receive zero gradient, and because
``apply_masks`` also zeroes them in ``original``, SGD momentum and weight decay keep them
exactly zero: no re-masking hook is needed after the optimiser step.

Masks are keyed by module name (as in ``model.named_modules()``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..foundations.io import load_tensors, save_tensors

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class WeightMask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, w):
        return w * self.mask.to(w.dtype)


def prunable_modules(model: nn.Module, include_classifier: bool = True) -> dict[str, nn.Module]:
    """Conv and Linear layers in definition order; the classifier is the last of them."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if not include_classifier and mods:
        mods.pop(list(mods)[-1])
    return mods


def raw_weight(m: nn.Module) -> torch.Tensor:
    """The dense, unmasked parameter behind ``m.weight``."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def current_mask(m: nn.Module) -> torch.Tensor | None:
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p.mask
    return None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach (or replace) masks in place and zero the masked entries of the raw weights."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in mods:
            raise KeyError(f"mask for unknown module {name!r}")
        m = mods[name]
        if mask.shape != raw_weight(m).shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(raw_weight(m).shape)}")
        old = current_mask(m)
        if old is not None:
            old.copy_(mask.to(torch.bool))
        else:
            parametrize.register_parametrization(m, "weight", WeightMask(mask.to(raw_weight(m).device)))
        with torch.no_grad():
            raw_weight(m).mul_(mask.to(raw_weight(m).dtype))
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: current_mask(m).clone() for n, m in model.named_modules() if current_mask(m) is not None}


def unparametrize(m: nn.Module, value: torch.Tensor) -> None:
    """Drop every parametrization of ``m.weight`` and make ``value`` its plain parameter.

    Done per instance rather than with ``parametrize.remove_parametrizations``: that deletes
    the ``weight`` property from the generated Parametrized* class, which ``copy.deepcopy``
    shares between a model and its copies, so unmasking a copy would break the original.
    """
    value = value.detach().clone()
    del m._modules["parametrizations"]
    m.__class__ = m.__class__.__bases__[0]
    m.register_parameter("weight", nn.Parameter(value))


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake masks into plain weights (zeros stay zeros) and drop the parametrizations."""
    for _, m in model.named_modules():
        if not parametrize.is_parametrized(m, "weight"):
            continue
        if set(m.parametrizations.keys()) != {"weight"}:  # other tensors parametrized too: torch's way
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        else:
            unparametrize(m, m.weight)
    return model


def keep_count(total: int, sparsity: float) -> int:
    """Entries kept at a sparsity: floor(total * (1 - sparsity)), at least 1."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, int(math.floor(total * (1.0 - sparsity) + 1e-6)))


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global",
                      largest: bool = True) -> dict[str, torch.Tensor]:
    """Keep the top-k scores (global across layers, or per layer); exactly k entries kept."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    sign = 1.0 if largest else -1.0
    if scope == "layer":
        out = {}
        for n, s in scores.items():
            k = keep_count(s.numel(), sparsity)
            idx = torch.topk(sign * s.flatten().float(), k).indices
            m = torch.zeros(s.numel(), dtype=torch.bool)
            m[idx] = True
            out[n] = m.view_as(s)
        return out
    flat = torch.cat([sign * s.flatten().float() for s in scores.values()])
    k = keep_count(flat.numel(), sparsity)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, k).indices] = True
    out, o = {}, 0
    for n, s in scores.items():
        out[n] = keep[o: o + s.numel()].view_as(s)
        o += s.numel()
    return out


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global",
                    include_classifier: bool = True) -> dict[str, torch.Tensor]:
    """|w| top-k. Entries already masked score -inf, so iterative pruning only removes more."""
    mods = prunable_modules(model, include_classifier)
    scores = {}
    for n, m in mods.items():
        s = raw_weight(m).detach().abs().clone()
        cm = current_mask(m)
        if cm is not None:
            s[~cm] = -math.inf
        scores[n] = s
    return masks_from_scores(scores, sparsity, scope)


def random_masks(model: nn.Module, sparsity: float, scope: str = "layer", include_classifier: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    mods = prunable_modules(model, include_classifier)
    scores = {n: torch.rand(raw_weight(m).shape, generator=generator) for n, m in mods.items()}
    return masks_from_scores(scores, sparsity, scope)


def sparsity_report(model: nn.Module, include_classifier: bool = True) -> dict:
    """Sparsity over prunable (conv/linear) weights and over all parameters; papers differ."""
    mods = prunable_modules(model, include_classifier)
    pw = sum(m.weight.numel() for m in mods.values())
    pz = sum(int((m.weight == 0).sum()) for m in mods.values())
    with torch.no_grad():
        all_p = 0
        all_z = 0
        for mod in model.modules():
            for pname, p in mod.named_parameters(recurse=False):
                if pname == "original":
                    continue  # counted through the parametrized tensor below
                all_p += p.numel()
                all_z += int((p == 0).sum())
            if parametrize.is_parametrized(mod):  # every parametrized tensor, through its value
                for tname in mod.parametrizations.keys():
                    w = getattr(mod, tname)
                    all_p += w.numel()
                    all_z += int((w == 0).sum())
    return {"prunable_params": pw, "prunable_zeros": pz, "sparsity_prunable": pz / max(pw, 1),
            "total_params": all_p, "total_zeros": all_z, "sparsity_overall": all_z / max(all_p, 1),
            "compression": all_p / max(all_p - all_z, 1)}


def save_masks(path, masks: dict[str, torch.Tensor]) -> None:
    save_tensors(path, {k: v.to(torch.uint8) for k, v in masks.items()}, {"kind": "masks"})


def load_masks(path) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(path)
    return {k: v.bool() for k, v in tensors.items()}
