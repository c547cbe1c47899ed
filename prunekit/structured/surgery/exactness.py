"""Exactness check: the slim model must compute what the original computes with the
removed channels zeroed.

The reference is a copy of the original where every removed slice of every parameter
is zeroed (conv/linear rows and bias entries, consumer columns, norm scale and shift,
embedding columns, free parameters): a removed channel is then exactly zero wherever a
kept channel could read it. Norms whose statistics run over the channel dimension
(LayerNorm, RMSNorm, GroupNorm) would still count the zeroed channels, so in the
reference they normalise over the kept channels only (and output zeros elsewhere), which
is what the slim norm does. Both models run in eval mode.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..trace.capture import custom_norm, flat_tensors
from .plan import get_plan
from .slim import _run


def _sliced_copy(mod: nn.Module, keep: torch.Tensor) -> nn.Module:
    small = copy.deepcopy(mod)
    for pname, p in list(small.named_parameters(recurse=False)):
        small._parameters[pname] = nn.Parameter(p.detach()[keep].clone())
    if hasattr(small, "normalized_shape"):
        small.normalized_shape = (len(keep),)
    return small


def _masked_norm(mod: nn.Module, keep: torch.Tensor):
    spec = custom_norm(mod)
    if spec is not None:
        small = _sliced_copy(mod, keep)

        def custom_hook(m, args, out):
            at = (Ellipsis, keep.to(out.device)) if spec == -1 else (slice(None), keep.to(out.device))
            y = torch.zeros_like(out)
            y[at] = small(args[0][at])
            return y
        return mod.register_forward_hook(custom_hook)

    def hook(m, args, out):
        x = args[0]
        keep_ = keep.to(x.device)
        y = torch.zeros_like(out)
        w = m.weight[keep_] if getattr(m, "weight", None) is not None else None
        b = m.bias[keep_] if getattr(m, "bias", None) is not None else None
        if isinstance(m, nn.GroupNorm):
            y[:, keep_] = F.group_norm(x[:, keep_], m.num_groups, w, b, m.eps)
        elif isinstance(m, nn.LayerNorm):
            y[..., keep_] = F.layer_norm(x[..., keep_], (len(keep_),), w, b, m.eps)
        else:  # RMSNorm
            y[..., keep_] = F.rms_norm(x[..., keep_], (len(keep_),), w, m.eps)
        return y
    return mod.register_forward_hook(hook)


def reference_model(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` with the plan's removed channels zeroed (see module doc)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for s in plan["slices"]:
            mod_name, _, attr = s["tensor"].rpartition(".")
            mod = ref.get_submodule(mod_name) if mod_name else ref
            keep = torch.as_tensor(s["keep"], dtype=torch.long)
            if s.get("virtual"):
                _masked_norm(mod, keep)
                continue
            t = getattr(mod, attr)
            mask = torch.ones(t.shape[s["dim"]], dtype=torch.bool)
            mask[keep] = False
            removed = mask.nonzero().flatten().to(t.device)
            if attr in ("running_mean", "running_var"):
                continue  # scale and shift are zeroed, so the statistics no longer matter
            t.index_fill_(int(s["dim"]), removed, 0.0)
    _mask_functional_norms(ref, plan)
    return ref


def _mask_functional_norms(ref: nn.Module, plan: dict) -> None:
    """Functional channel norms (``F.layer_norm``/``rms_norm``/``group_norm`` on a block's
    own parameters, see ``ops_norm``) normalise over the kept channels in the reference
    too: the call is recognised by its sliced weight or bias."""
    kept = {}
    for s in plan["slices"]:
        if s.get("virtual") or int(s["dim"]) != 0:
            continue
        mod_name, _, attr = s["tensor"].rpartition(".")
        t = getattr(ref.get_submodule(mod_name) if mod_name else ref, attr, None)
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            kept[id(t)] = torch.as_tensor(s["keep"], dtype=torch.long)
    if not kept:
        return
    from torch.overrides import TorchFunctionMode

    class KeptNorms(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in ("layer_norm", "rms_norm", "group_norm"):
                names = {"layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
                         "rms_norm": ("input", "normalized_shape", "weight", "eps"),
                         "group_norm": ("input", "num_groups", "weight", "bias", "eps")}[name]
                a = dict(zip(names, args), **kwargs)
                keep = next((kept[id(a[k])] for k in ("weight", "bias") if id(a.get(k)) in kept), None)
                if keep is not None:
                    x = a["input"]
                    keep = keep.to(x.device)
                    at = (Ellipsis, keep) if name != "group_norm" else (slice(None), keep)
                    sub = {k: (v[keep] if isinstance(v, torch.Tensor) and k in ("weight", "bias") else v)
                           for k, v in a.items() if k != "input"}
                    if name != "group_norm":
                        sub["normalized_shape"] = (len(keep),)
                    y = torch.zeros_like(func(*args, **kwargs))
                    y[at] = func(x[at], **sub)
                    return y
            return func(*args, **kwargs)

    forward = ref.forward

    def masked_forward(*args, **kwargs):
        with KeptNorms():
            return forward(*args, **kwargs)

    ref.forward = masked_forward


@torch.no_grad()
def check_exact(model: nn.Module, slim_model: nn.Module, plan: dict | None = None, inputs=None) -> float:
    """Max abs difference between ``slim_model`` and ``model`` with the removed channels
    zeroed, on ``inputs`` (a tensor, tuple or dict of kwargs), in eval mode.

    ``plan`` defaults to the kept-index plan stored on ``slim_model`` by ``slim`` /
    ``slim_with_plan``. A correct slimming gives an error at float rounding level (< 1e-5).
    """
    if inputs is None:
        raise ValueError("check_exact needs inputs to run both models on")
    plan = plan if plan is not None else get_plan(slim_model)
    ref = reference_model(model, plan)
    ref.eval()
    was = slim_model.training
    slim_model.eval()
    try:
        a = flat_tensors(_run(ref, inputs))
        b = flat_tensors(_run(slim_model, inputs))
    finally:
        slim_model.train(was)
    if [t.shape for t in a] != [t.shape for t in b]:
        raise AssertionError(f"output shapes differ: {[tuple(t.shape) for t in a]} vs {[tuple(t.shape) for t in b]}")
    err = 0.0
    for x, y in zip(a, b):
        if x.is_floating_point():
            err = max(err, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
        elif not torch.equal(x, y):
            err = float("inf")
    return err
