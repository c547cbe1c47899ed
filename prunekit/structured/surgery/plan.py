"""Kept-index plans: what a slimmed model kept, relative to the original model.

A plan is plain JSON::

    {"format": "prunekit-plan", "version": 1, "model": "CifarResNet",
     "slices": [{"tensor": "layer1.0.conv1.weight", "dim": 0, "size": 16, "keep": [0, 2, ...]}, ...],
     "attrs": {"layer1.0.conv1": {"out_channels": 12}, "blocks.0.attn": {"num_heads": 2}, ...}}

``size`` is the original length of that dimension and ``keep`` the original indices that
remain. Slices marked ``"virtual": true`` carry no tensor (a LayerNorm/GroupNorm without
affine parameters still records which channels it normalises over). Replaying a plan on
a freshly built model (``apply_plan``) reproduces the slim architecture exactly; applying
a second plan to an already slim model composes the two, so the stored plan always
refers to the original model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PLAN_KEY = "_prunekit_plan"


def empty_plan(model: nn.Module) -> dict:
    return {"format": "prunekit-plan", "version": 1, "model": type(model).__name__, "slices": [], "attrs": {}}


def get_plan(model: nn.Module) -> dict:
    """The kept-index plan stored on a slim model (an empty plan for an unpruned one)."""
    return getattr(model, PLAN_KEY, None) or empty_plan(model)


def _owner(model: nn.Module, tensor: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = tensor.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError as e:
        raise ValueError(f"plan refers to module {mod_name!r}, which this model does not have") from e
    return mod, attr


def apply_plan(model: nn.Module, plan: dict) -> nn.Module:
    """Slice ``model`` in place as ``plan`` says and store the composed plan on it."""
    if plan.get("format") != "prunekit-plan":
        raise ValueError("not a prunekit plan (missing format: prunekit-plan)")
    for s in plan["slices"]:
        if s.get("virtual"):
            continue
        mod, attr = _owner(model, s["tensor"])
        d = int(s["dim"])
        if attr in mod._parameters:
            t = mod._parameters[attr]
        elif attr in mod._buffers:
            t = mod._buffers[attr]
        elif hasattr(mod, "parametrizations") and attr in mod.parametrizations:
            raise ValueError(f"{s['tensor']} is parametrized (masked); call prunekit.sparse.remove_masks first")
        else:
            raise ValueError(f"plan refers to tensor {s['tensor']!r}, which is not a parameter or buffer here")
        if t is None or t.dim() <= d or t.shape[d] != int(s["size"]):
            shape = None if t is None else tuple(t.shape)
            raise ValueError(f"plan expects {s['tensor']} to have size {s['size']} in dim {d}, found shape {shape}")
        keep = torch.as_tensor(s["keep"], dtype=torch.long, device=t.device)
        new = t.detach().index_select(d, keep).clone()
        if attr in mod._parameters:
            mod._parameters[attr] = nn.Parameter(new, requires_grad=t.requires_grad)
        else:
            mod._buffers[attr] = new
    _sync_sizes(model, plan)
    for name, attrs in plan.get("attrs", {}).items():
        mod = model.get_submodule(name) if name else model
        for k, v in attrs.items():
            if k == "__class__":
                from ..rules.mha import CLASSES

                if v not in CLASSES:
                    raise ValueError(f"plan asks for unknown module class {v!r} on {name!r}")
                mod.__class__ = CLASSES[v]
                continue
            setattr(mod, k, tuple(v) if k == "normalized_shape" else v)
    _compose(model, plan)
    return model


# width attributes of modules whose plain parameters are sliced (MoE experts and routers):
# code reads them in forward (``x.reshape(-1, self.hidden_dim)``), so they follow the slices
WIDTH_ATTRS = ("hidden_dim", "hidden_size", "intermediate_dim", "intermediate_size", "moe_intermediate_size",
               "expert_dim", "ffn_dim", "input_dim", "output_dim")


def _sync_sizes(model: nn.Module, plan: dict) -> None:
    """Size attributes of modules sliced as plain parameters (transposed convs, RNNs, MoE
    experts), read back from their weights so that ``repr`` and code reading
    ``out_channels``/``hidden_size``/``intermediate_dim`` see the slim width."""
    from ..rules.leaves_rnn import sync_rnn

    cut: dict[str, dict[tuple, tuple]] = {}
    for s in plan["slices"]:
        if not s.get("virtual"):
            owner, _, attr = s["tensor"].rpartition(".")
            cut.setdefault(owner, {})[(attr, int(s["dim"]))] = (int(s["size"]), len(s["keep"]))
    for owner, dims in cut.items():
        mod = model.get_submodule(owner) if owner else model
        sizes: dict[int, set] = {}  # old size of a dim of this module's tensors -> its new sizes
        for attr, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            for d, n in enumerate(t.shape):
                old, new = dims.get((attr, d), (n, n))
                sizes.setdefault(old, set()).add(new)
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            mod.in_channels = mod.weight.shape[0]
            mod.out_channels = mod.weight.shape[1] * mod.groups
        elif isinstance(mod, nn.RNNBase):
            sync_rnn(mod)
        elif not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)):
            for attr in WIDTH_ATTRS:
                v = getattr(mod, attr, None)
                # an attribute equal to a sliced dim's old size takes the new one, unless two
                # dims of that size now differ (then which one it means is unknown)
                if isinstance(v, int) and not isinstance(v, bool) and len(sizes.get(v, ())) == 1:
                    setattr(mod, attr, next(iter(sizes[v])))


def _compose(model: nn.Module, plan: dict) -> None:
    old = getattr(model, PLAN_KEY, None)
    if not old:
        new = {**plan, "slices": [dict(s) for s in plan["slices"]], "attrs": {k: dict(v) for k, v in
                                                                               plan.get("attrs", {}).items()}}
        object.__setattr__(model, PLAN_KEY, new)
        return
    by_key = {(s["tensor"], int(s["dim"])): dict(s) for s in old["slices"]}
    for s in plan["slices"]:
        key = (s["tensor"], int(s["dim"]))
        if key in by_key:
            prev = by_key[key]
            prev["keep"] = [prev["keep"][i] for i in s["keep"]]
        else:
            by_key[key] = dict(s)
    attrs = {k: dict(v) for k, v in old.get("attrs", {}).items()}
    for k, v in plan.get("attrs", {}).items():
        attrs.setdefault(k, {}).update(v)
    object.__setattr__(model, PLAN_KEY, {**old, "slices": list(by_key.values()), "attrs": attrs})
