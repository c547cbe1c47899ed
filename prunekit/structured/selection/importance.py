"""Channel importance for a group (higher = more important = kept).

Built-in criteria and how each aggregates over the members of a group:

- ``l1``: sum over the group's conv/linear rows (``out_layers``), consumer columns
  (``in_layers``) and other sliced tensors (``params``) of the *mean* ``|w|`` of the
  channel's slice in that member. The mean (not the sum) keeps a member with a large
  fan-in from dominating; norm layers are left out (see ``bn_scale``).
- ``l2``: the same members, ``sqrt(sum over members of mean(w^2))``.
- ``l1-filter``: Li et al. 2017 filter norm: sum of ``|w|`` over the producer rows only
  (``out_layers`` and ``params``), the ranking of the "l1" runner method.
- ``bn_scale``: sum of ``|gamma|`` over the group's norm layers (network slimming);
  groups without an affine norm fall back to ``l1``.
- ``taylor``: first-order Taylor (Molchanov et al. 2019):
  ``(sum over every member slice of w * dL/dw)^2``; needs ``data=(inputs, targets)``
  (or ``data=inputs`` with a ``loss_fn(output)``) to compute gradients.
- ``random``: uniform noise from the given seed.

User criteria: pass a callable ``fn(model, group) -> Tensor[group.size]`` as
``criterion``, or ``register_criterion("name", fn)`` and use the name.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...foundations.registry import Registry
from ..trace.groups import ChannelGroup
from ...foundations.inputs import call_model as _run

CRITERIA: Registry = Registry("importance criterion")


def register_criterion(name: str, fn: Callable | None = None):
    """Register ``fn(model, group) -> Tensor[group.size]`` under ``name``."""
    return CRITERIA.register(name, fn)


def _tensor(model: nn.Module, name: str) -> torch.Tensor | None:
    owner, _, attr = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    t = getattr(mod, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def member_slices(model: nn.Module, group: ChannelGroup, kinds=("out", "in", "param", "norm")):
    """Yield ``(tensor, dim, idx)`` for every tensor the group slices."""
    mods = dict(model.named_modules())
    if "out" in kinds:
        for name, idx in group.out_layers:
            m = mods[name]
            yield m.weight, 0, idx
            if getattr(m, "bias", None) is not None:
                yield m.bias, 0, idx
    if "in" in kinds:
        for name, idx in group.in_layers:
            yield mods[name].weight, 1, idx
    if "param" in kinds:
        for name, dim, idx in group.params:
            t = _tensor(model, name)
            if t is not None:
                yield t, dim, idx
    if "norm" in kinds:
        for name, idx in group.norm_layers:
            m = mods[name]
            for p in ("weight", "bias"):
                t = getattr(m, p, None)
                if isinstance(t, torch.Tensor):
                    yield t, 0, idx


def per_channel(t: torch.Tensor, dim: int, idx: torch.Tensor, stat: Callable) -> torch.Tensor:
    """``stat`` of every position's slice along ``dim`` (rows of the moved tensor), gathered
    into group-channel order; channels a member does not see score 0."""
    rows = t.detach().float().cpu().movedim(dim, 0).reshape(t.shape[dim], -1)
    s = stat(rows)
    idx = idx if idx.dim() == 2 else idx[:, None]
    vals = s[idx.clamp(min=0)] * (idx >= 0)
    return vals.sum(1)


def _mean_abs(rows):
    return rows.abs().mean(1)


def _l1(model, group, kinds=("out", "in", "param")):
    score = torch.zeros(group.size)
    for t, dim, idx in member_slices(model, group, kinds):
        score += per_channel(t, dim, idx, _mean_abs)
    return score


@register_criterion("l1")
def l1(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    return _l1(model, group)


@register_criterion("l1-filter")
def l1_filter(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    score = torch.zeros(group.size)
    for t, dim, idx in member_slices(model, group, ("out", "param")):
        score += per_channel(t, dim, idx, lambda r: r.abs().sum(1))
    return score


@register_criterion("l2")
def l2(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    score = torch.zeros(group.size)
    for t, dim, idx in member_slices(model, group, ("out", "in", "param")):
        score += per_channel(t, dim, idx, lambda r: r.pow(2).mean(1))
    return score.sqrt()


@register_criterion("bn_scale")
def bn_scale(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    mods = dict(model.named_modules())
    score = torch.zeros(group.size)
    found = False
    for name, idx in group.norm_layers:
        w = getattr(mods[name], "weight", None)
        if isinstance(w, torch.Tensor):
            found = True
            score += per_channel(w, 0, idx, lambda r: r.abs()[:, 0])
    return score if found else _l1(model, group)


@register_criterion("random")
def random(model: nn.Module, group: ChannelGroup, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(group.size, generator=generator)


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in model output of type {type(out).__name__}; pass loss_fn=")


def taylor_scores(model: nn.Module, groups: list[ChannelGroup], data, loss_fn=None) -> dict[int, torch.Tensor]:
    """First-order Taylor importance for every group from one batch's gradients."""
    if data is None:
        raise ValueError("criterion 'taylor' needs data=(inputs, targets) (or data=inputs and loss_fn=) "
                         "to compute gradients")
    work = copy.deepcopy(model)
    work.eval()  # gradients of the deployed function; BN statistics stay fixed
    work.zero_grad(set_to_none=True)
    if loss_fn is None:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError("criterion 'taylor' without loss_fn needs data=(inputs, targets)")
        x, y = data
        loss = F.cross_entropy(_logits(_run(work, x)), y)
    else:
        loss = loss_fn(_run(work, data))
    loss.backward()
    out = {}
    for g in groups:
        s = torch.zeros(g.size)
        for t, dim, idx in member_slices(work, g):
            if t.grad is None:
                continue
            prod = (t.detach() * t.grad).float().cpu().movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)
            i = idx if idx.dim() == 2 else idx[:, None]
            s += (prod[i.clamp(min=0)] * (i >= 0)).sum(1)
        out[g.id] = s.pow(2)
    return out


def group_scores(model: nn.Module, groups: list[ChannelGroup], criterion="l1", data=None, loss_fn=None,
                 seed: int = 0) -> dict[int, torch.Tensor]:
    """``{group id: Tensor[size]}`` importance for every prunable group."""
    prunable = [g for g in groups if g.prunable]
    if criterion == "taylor":
        return taylor_scores(model, prunable, data, loss_fn)
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.id: random(model, g, gen) for g in prunable}
    fn = criterion if callable(criterion) else CRITERIA.get(criterion)
    out = {}
    for g in prunable:
        s = torch.as_tensor(fn(model, g), dtype=torch.float32).flatten()
        if s.numel() != g.size:
            raise ValueError(f"criterion returned {s.numel()} scores for group {g.id} of size {g.size}")
        out[g.id] = s
    return out


def check_criterion(criterion) -> None:
    if callable(criterion):
        return
    if criterion == "taylor":
        return
    CRITERIA.get(criterion)  # raises, listing the valid names


@register_criterion("taylor")
def _taylor_by_name(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    # listed in the registry; the real work happens once for all groups in ``taylor_scores``
    raise ValueError("criterion 'taylor' is computed for all groups at once: use "
                     "group_scores(..., criterion='taylor', data=(x, y)) or slim(..., data=(x, y))")
