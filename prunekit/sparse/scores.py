"""Saliency scores for unstructured pruning: SNIP, GraSP, SynFlow and magnitude.

``scores(model, method, batch)`` returns ``{"<module>.weight": tensor}`` for every conv and
linear layer. It works on a deep copy, so the model passed in (weights, BN statistics,
gradients, masks) is left exactly as it was. Weights already masked by
``prunekit.sparse.masks`` are scored through their masked value, so their scores are 0
(SNIP, SynFlow, magnitude); ``score_masks`` additionally keeps them pruned.

Which end to keep differs: SNIP, SynFlow and magnitude keep the largest scores, GraSP
removes the largest (``KEEP_LARGEST``).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masks import current_mask, keep_count, masks_from_scores, prunable_modules, raw_weight

KEEP_LARGEST = {"snip": True, "grasp": False, "synflow": True, "magnitude": True}
METHODS = tuple(KEEP_LARGEST)


def _check(method: str, batch) -> None:
    if method not in KEEP_LARGEST:
        raise ValueError(f"unknown score method {method!r}; valid: {', '.join(METHODS)}")
    if method in ("snip", "grasp"):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"{method} needs batch=(inputs, targets), got {type(batch).__name__}")


def _masked_weight(m: nn.Module) -> torch.Tensor:
    # m.weight is the parametrized (masked) tensor when a mask exists, else the parameter.
    return m.weight


def _weight_grads(model: nn.Module, mods: dict[str, nn.Module], loss: torch.Tensor, **kw):
    ws = [raw_weight(m) for m in mods.values()]
    return torch.autograd.grad(loss, ws, **kw)


def snip_scores(model: nn.Module, batch, include_classifier: bool = True) -> dict[str, torch.Tensor]:
    """|dL/dc| at c = 1 for a multiplicative gate c on each weight, i.e. |g * w|, normalised to sum 1."""
    net = copy.deepcopy(model)
    net.train()
    mods = prunable_modules(net, include_classifier)
    x, y = batch
    loss = F.cross_entropy(net(x), y)
    # The gradient w.r.t. the raw weight equals the gradient w.r.t. the masked weight on
    # kept entries and is multiplied by 0 below on pruned ones (w_eff is 0 there).
    grads = _weight_grads(net, mods, loss)
    out = {n: (g * _masked_weight(m)).abs().detach() for (n, m), g in zip(mods.items(), grads)}
    total = sum(s.sum() for s in out.values())
    return {n: s / total for n, s in out.items()} if total > 0 else out


def grasp_scores(model: nn.Module, batch, temperature: float = 200.0, reinit_classifier: bool = True,
                 include_classifier: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """S = -theta * (H g) with g, H of the loss on logits / T; GraSP removes the largest S.

    H g is a Hessian-vector product by double backprop: grad of (stop_grad(g) . g)."""
    net = copy.deepcopy(model)
    net.train()
    mods = prunable_modules(net, include_classifier)
    if reinit_classifier:
        # GraSP's code re-initialises the last layer (xavier) on its scoring copy only.
        last = list(prunable_modules(net, True).values())[-1]
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            w = raw_weight(last)
            fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
            std = math.sqrt(2.0 / (fan_in + fan_out))
            w.copy_(torch.randn(w.shape, generator=g) * std * (current_mask(last).to(w.dtype)
                                                                if current_mask(last) is not None else 1.0))
    x, y = batch
    g_stop = [g.detach() for g in _weight_grads(net, mods, F.cross_entropy(net(x) / temperature, y))]
    g = _weight_grads(net, mods, F.cross_entropy(net(x) / temperature, y), create_graph=True)
    z = sum((a * b).sum() for a, b in zip(g_stop, g))
    hg = torch.autograd.grad(z, [raw_weight(m) for m in mods.values()])
    return {n: (-_masked_weight(m) * h).detach() for (n, m), h in zip(mods.items(), hg)}


def synflow_scores(model: nn.Module, input_shape: tuple[int, ...] | None = None, include_classifier: bool = True,
                   example: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """|theta * dR/dtheta| with every parameter and buffer replaced by its absolute value,
    eval mode, all-ones input, R = sum of the output (data-free). Computed in float64: the
    product of many |theta| can overflow float32 in deep nets."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():  # parameters and BN running stats alike
            if t.is_floating_point():
                t.abs_()
    shape = input_shape if input_shape is not None else _input_shape(example)
    mods = prunable_modules(net, include_classifier)
    r = net(torch.ones((1, *shape), dtype=torch.float64)).sum()
    grads = _weight_grads(net, mods, r)
    return {n: (g * _masked_weight(m)).abs().detach().float() for (n, m), g in zip(mods.items(), grads)}


def _input_shape(example) -> tuple[int, ...]:
    if example is None:
        raise ValueError("synflow needs the input shape: pass batch=(inputs, targets), inputs, or input_shape=")
    x = example[0] if isinstance(example, (tuple, list)) else example
    return tuple(x.shape[1:])


def magnitude_scores(model: nn.Module, include_classifier: bool = True) -> dict[str, torch.Tensor]:
    return {n: _masked_weight(m).detach().abs().clone() for n, m in prunable_modules(model, include_classifier).items()}


def _module_scores(model, method, batch=None, include_classifier=True, **opts) -> dict[str, torch.Tensor]:
    _check(method, batch)
    if method == "snip":
        return snip_scores(model, batch, include_classifier)
    if method == "grasp":
        return grasp_scores(model, batch, include_classifier=include_classifier, **opts)
    if method == "synflow":
        return synflow_scores(model, opts.get("input_shape"), include_classifier, example=batch)
    return magnitude_scores(model, include_classifier)


def scores(model: nn.Module, method: str, batch=None, include_classifier: bool = True,
           **opts) -> dict[str, torch.Tensor]:
    """Scores keyed by parameter name (``"conv1.weight"``). ``batch`` is ``(inputs, targets)``;
    SynFlow only reads the input shape from it and magnitude ignores it. The model is not modified."""
    out = _module_scores(model, method, batch, include_classifier, **opts)
    return {f"{n}.weight": s for n, s in out.items()}


def score_masks(model: nn.Module, method: str, sparsity: float, batch=None, include_classifier: bool = True,
                **opts) -> dict[str, torch.Tensor]:
    """One-shot global masks (keyed by module name) from a score; entries already pruned stay pruned."""
    s = _module_scores(model, method, batch, include_classifier, **opts)
    return _top_k(model, s, sparsity, KEEP_LARGEST[method])


def _top_k(model, s: dict, sparsity: float, largest: bool) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    s = {n: (v if largest else -v).clone().float() for n, v in s.items()}
    for n, v in s.items():
        cm = current_mask(mods[n])
        if cm is not None:
            v[~cm] = -math.inf
    return masks_from_scores(s, sparsity, "global", largest=True)


def synflow_masks(model: nn.Module, sparsity: float, rounds: int = 100, input_shape=None, example=None,
                  include_classifier: bool = True) -> dict[str, torch.Tensor]:
    """Iterative SynFlow: ``rounds`` prune-rescore steps with density rho^((k+1)/rounds), rho = 1 - sparsity.

    Works on a copy that carries the masks; the last round hits the exact keep count."""
    if rounds < 1:
        raise ValueError(f"synflow needs rounds >= 1, got {rounds}")
    from .masks import apply_masks

    net = copy.deepcopy(model)
    shape = input_shape if input_shape is not None else _input_shape(example)
    mods = prunable_modules(net, include_classifier)
    if not any(current_mask(m) is not None for m in mods.values()):
        apply_masks(net, {n: torch.ones_like(raw_weight(m), dtype=torch.bool) for n, m in mods.items()})
    density = 1.0 - sparsity
    masks = None
    for k in range(rounds):
        d_k = density ** ((k + 1) / rounds)
        s = synflow_scores(net, shape, include_classifier)
        masks = _top_k(net, s, 1.0 - d_k if k < rounds - 1 else sparsity, True)
        apply_masks(net, masks)
    return masks


def total_weights(model: nn.Module, include_classifier: bool = True) -> int:
    return sum(raw_weight(m).numel() for m in prunable_modules(model, include_classifier).values())


__all__ = ["KEEP_LARGEST", "grasp_scores", "keep_count", "magnitude_scores", "score_masks", "scores",
           "snip_scores", "synflow_masks", "synflow_scores", "total_weights"]
