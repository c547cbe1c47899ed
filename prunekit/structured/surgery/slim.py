"""Physical slimming: ``slim_with_plan`` removes given group channels from a model.

The removal is turned into a kept-index plan (``plan.py``) over parameters and buffers
(conv/linear weights and biases, norm affine parameters and running statistics,
embedding tables, free parameters) plus module attributes (``out_channels``,
``in_features``, ``num_features``, ``normalized_shape``, ``groups`` of depthwise convs,
attention ``num_heads``, pad amounts of option-A shortcuts...), and the plan is applied
to a copy of the model.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import torch
import torch.nn as nn

from ..trace.capture import custom_norm
from ..trace.groups import ChannelGroup, channel_groups
from ..rules.padding import attribute_updates
from .plan import apply_plan, empty_plan
from ...foundations.inputs import call_model as _run

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "num_key_value_heads",
              "num_kv_heads", "n_kv_heads", "kv_heads")
ALL_HEAD_ATTRS = ("all_head_size", "inner_dim", "inner_size", "split_size")
# modules that keep a sliced tensor's size in a plain attribute: (class name, tensor, dim) -> attribute
SIZE_ATTRS = {("Conv1D", "weight", 1): "nf", ("Conv1D", "weight", 0): "nx"}  # HF GPT-2 style Conv1D


def _check(groups_by_id: dict[int, ChannelGroup], pruned: dict) -> dict[int, torch.Tensor]:
    clean = {}
    if not isinstance(pruned, dict):
        raise TypeError("pruned must be a dict {group id: LongTensor of channel indices}, "
                        f"got {type(pruned).__name__}")
    for gid, idx in pruned.items():
        if gid not in groups_by_id:
            raise KeyError(f"no channel group with id {gid!r}; valid ids: 0..{len(groups_by_id) - 1}")
        g = groups_by_id[gid]
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if idx.numel() == 0:
            continue
        if not g.prunable:
            raise ValueError(f"group {gid} ({g.name}) cannot be pruned: {g.reason}")
        if idx.min() < 0 or idx.max() >= g.size:
            raise ValueError(f"group {gid} has {g.size} channels; got index out of range [{idx.min()}, {idx.max()}]")
        idx = torch.unique(idx)
        if idx.numel() >= g.size:
            raise ValueError(f"group {gid} ({g.name}): cannot remove all {g.size} channels; keep at least one")
        if g.unit > 1:
            units = idx // g.unit
            counts = torch.bincount(units, minlength=g.size // g.unit)
            if ((counts != 0) & (counts != g.unit)).any():
                raise ValueError(f"group {gid} ({g.name}) is pruned in whole units of {g.unit} channels "
                                 f"(attention heads); got a partial unit")
        if g.parts > 1:
            counts = torch.bincount(idx // (g.size // g.parts), minlength=g.parts)
            if (counts != counts[0]).any():
                raise ValueError(f"group {gid} ({g.name}) must lose equally many channels in each of its "
                                 f"{g.parts} blocks (GroupNorm groups / chunk / grouped conv); got {counts.tolist()}")
        clean[gid] = idx
    return clean


def removal_plan(model: nn.Module, groups: list[ChannelGroup], pruned: dict) -> dict:
    """The kept-index plan (relative to ``model``) that removes ``pruned`` group channels."""
    by_id = {g.id: g for g in groups}
    pruned = _check(by_id, pruned)
    removed: dict[tuple, set] = defaultdict(set)
    heads: dict[str, list] = defaultdict(list)
    pads: dict[str, list] = defaultdict(list)
    for gid, idx in pruned.items():
        g = by_id[gid]
        for kind, lst in (("out", g.out_layers), ("norm", g.norm_layers), ("in", g.in_layers)):
            for name, m in lst:
                pos = m[idx].flatten()
                removed[(kind, name, 0)].update(pos[pos >= 0].tolist())
        for tname, dim, m in g.params:
            pos = m[idx].flatten()
            removed[("param", tname, dim)].update(pos[pos >= 0].tolist())
        for module, pad_attrs, n_before, m in g.pads:
            pads[module].append((pad_attrs, n_before, m[idx].flatten()))
        gone = set(idx.tolist())
        for module, h, d in g.heads:
            firsts = g.head_rows.get((module, h))
            # a unit may stand for several heads (grouped-query: one kv head, h/len(firsts) query heads)
            dropped = sum(1 for f in firsts if f in gone) * (h // len(firsts)) if firsts else idx.numel() // d
            sole = sum(1 for m2, _, _ in g.heads if m2 == module) == 1  # no kv heads go with these
            heads[module].append((h, d, dropped, sole))
    mods = dict(model.named_modules())
    for (kind, name, _), rem in removed.items():
        if kind == "out" and len(rem) >= mods[name].weight.shape[0]:
            raise ValueError(f"this removal leaves {name} with no output channels; keep at least one of its rows")
    plan = empty_plan(model)
    slices, attrs = plan["slices"], plan["attrs"]

    def cut(tensor_name, t, dim, rem):
        n = t.shape[dim]
        keep = [i for i in range(n) if i not in rem]
        slices.append({"tensor": tensor_name, "dim": dim, "size": n, "keep": keep})
        return len(keep)

    for (kind, name, dim), rem in removed.items():
        if not rem:
            continue
        if kind == "param":
            owner, _, attr = name.rpartition(".")
            mod = mods[owner]
            t = getattr(mod, attr)
            k = cut(name, t, dim, rem)
            if isinstance(mod, nn.Embedding) and attr == "weight" and dim == 1:
                attrs.setdefault(owner, {})["embedding_dim"] = k
            size_attr = SIZE_ATTRS.get((type(mod).__name__, attr, dim))
            if size_attr is not None:
                attrs.setdefault(owner, {})[size_attr] = k
            continue
        mod = mods[name]
        a = attrs.setdefault(name, {})
        if kind == "out":
            k = cut(f"{name}.weight", mod.weight, 0, rem)
            if getattr(mod, "bias", None) is not None:
                cut(f"{name}.bias", mod.bias, 0, rem)
            if isinstance(mod, nn.Linear):
                a["out_features"] = k
            else:
                depthwise = mod.groups == mod.in_channels == mod.out_channels
                a["out_channels"] = k
                if depthwise:
                    a["in_channels"] = k
                    a["groups"] = k
        elif kind == "in":
            k = cut(f"{name}.weight", mod.weight, 1, rem)
            if isinstance(mod, nn.Linear):
                a["in_features"] = k
            else:
                a["in_channels"] = k * mod.groups
        else:  # norm
            n = None
            for pname in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(mod, pname, None)
                if isinstance(t, torch.Tensor):
                    n = cut(f"{name}.{pname}", t, 0, rem)
            custom = custom_norm(mod) is not None
            if isinstance(mod, nn.GroupNorm):
                size = mod.num_channels
            elif isinstance(mod, nn.modules.batchnorm._NormBase):
                size = mod.num_features
            elif custom:
                size = mod.weight.shape[0]
            else:
                size = mod.normalized_shape[-1]
            if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)) or type(mod).__name__ == "RMSNorm" or custom:
                # no tensor may exist (affine=False); record the channel set for exactness checks
                slices.append({"tensor": f"{name}.#channels", "dim": 0, "size": size, "virtual": True,
                               "keep": [i for i in range(size) if i not in rem]})
            n = size - len(rem)
            if isinstance(mod, nn.GroupNorm):
                a["num_channels"] = n
            elif isinstance(mod, nn.modules.batchnorm._NormBase):
                a["num_features"] = n
            elif not custom or hasattr(mod, "normalized_shape"):
                a["normalized_shape"] = [n]
    for module, lst in heads.items():
        mod = mods.get(module if module != "<model>" else "", model)
        for h, d, removed_units, sole in lst:
            kv_groups = getattr(mod, "num_key_value_groups", None)
            if sole and type(kv_groups) is int and kv_groups == h:
                # one kv head read by all h query heads (multi-query, HF repeat_kv): it now
                # serves the query heads that are left. With kv heads in the same group
                # (grouped-query) whole kv groups go and the ratio stays
                attrs.setdefault(module if module != "<model>" else "", {})["num_key_value_groups"] = \
                    h - removed_units
            for attr in HEAD_ATTRS:
                if getattr(mod, attr, None) == h and isinstance(h, int):
                    attrs.setdefault(module if module != "<model>" else "", {})[attr] = h - removed_units
            for attr in ALL_HEAD_ATTRS:
                if getattr(mod, attr, None) == h * d:
                    attrs.setdefault(module if module != "<model>" else "", {})[attr] = (h - removed_units) * d
    for module, lst in pads.items():
        mod = mods[module]
        for pad_attrs, n_before, pos in lst:
            # fewer padded channels: the module's pad-amount attributes go down accordingly
            attrs.setdefault(module, {}).update(attribute_updates(mod, pad_attrs, n_before, pos.tolist()))
    for name, mod in mods.items():
        if isinstance(mod, nn.MultiheadAttention) and any(e["tensor"].startswith(name + ".") for e in slices):
            # stock MHA needs heads x head_dim == embed_dim; the slim class reads sizes from weights
            a = attrs.setdefault(name, {})
            a["__class__"] = "SlimMultiheadAttention"
            cols = next((e for e in slices if e["tensor"] == f"{name}.in_proj_weight" and e["dim"] == 1), None)
            if cols is not None:
                a["embed_dim"] = a["kdim"] = a["vdim"] = len(cols["keep"])
    plan["attrs"] = {k: v for k, v in attrs.items() if v}
    return plan


def slim_with_plan(model: nn.Module, example_inputs, pruned: dict, groups: list[ChannelGroup] | None = None,
                   inplace: bool = False, validate: bool = True) -> nn.Module:
    """Remove exactly the given channels and return the physically smaller model.

    ``pruned``: ``{group id: LongTensor of group-channel indices to remove}``, group ids
    from ``channel_groups(model, example_inputs)`` on this same model (pass ``groups`` to
    skip re-analysing). Returns a deep copy unless ``inplace``. The kept-index plan
    (relative to the original model, composed over repeated slimming) is stored on the
    returned model, so ``save_pruned`` works on it. With ``validate`` the slim model is
    run once on every example input and must produce outputs of the original shapes
    (``RuntimeError`` otherwise; ``slim`` instead freezes the groups involved and retries).
    """
    from ..trace.examples import as_list

    if groups is None:
        groups = channel_groups(model, example_inputs)
    plan = removal_plan(model, groups, pruned)
    target = model if inplace else copy.deepcopy(model)
    apply_plan(target, plan)
    if validate and plan["slices"]:
        for x in as_list(model, example_inputs):
            failure = validation_failure(model if not inplace else None, target, x)
            if failure is not None:
                raise failure.error()
    return target


def _shapes(out):
    from ..trace.capture import flat_tensors

    return [tuple(t.shape) for t in flat_tensors(out)]


class Failure:
    """Why a slim model failed validation: ``kind`` is "raised", "shapes" or "inexact";
    ``module`` the innermost module running when it raised ("<model>" for the root's own
    forward); ``op`` the last torch op called; ``advice`` what to do by hand."""

    def __init__(self, kind: str, message: str, module: str | None = None, op: str | None = None,
                 advice: str = "", exc: BaseException | None = None):
        self.kind, self.message, self.module, self.op, self.advice, self.exc = kind, message, module, op, advice, exc

    def __str__(self) -> str:
        return self.message

    def error(self) -> RuntimeError:
        err = RuntimeError(f"{self.message}. {self.advice}".strip() if self.advice else self.message)
        err.__cause__ = self.exc
        return err


class _LastOp(torch.overrides.TorchFunctionMode):
    """Remembers the last torch op and its arguments (for the advice on a failure)."""

    def __init__(self):
        super().__init__()
        self.name, self.args = None, ()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from ..trace.capture import _op_name

        self.name, self.args = _op_name(func), args
        return func(*args, **(kwargs or {}))


def _advice(slim: nn.Module, where: str, done: list[str], op: str | None, args) -> str:
    """A hand fix for a slim model that raised in ``where``: never "ignore the whole model"."""
    if where != "<model>":
        return ("Some code probably hard-codes a channel count the analysis cannot see (e.g. a reshape to a size "
                f"read from a config). Pass the module consuming those channels in ignore=[...] (here perhaps "
                f"{where!r}) to keep them")
    # the root's own forward raised: name the op, the attribute holding a size it used, and
    # the innermost submodule that ran last (its channels feed that op)
    mod = slim
    sizes = [a for a in _flat_ints(args)]
    attrs = [f"{k}={v}" for k, v in vars(mod).items()
             if not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool) and v > 1 and v in sizes]
    text = f"The model's own forward ({type(mod).__name__}) failed"
    if op:
        text += f" in op {op!r}" + (f" with sizes {sizes}" if sizes and op in ("view", "reshape") else "")
    if attrs:
        text += (f"; attribute {', '.join(attrs)} of the model holds one of those sizes: a head count or width read "
                 "from an attribute slim does not update (it updates num_heads, num_attention_heads, heads, "
                 "all_head_size and similar)")
    last = done[-1] if done else None
    if last:
        text += f". Pass the submodule producing those channels in ignore=[{last!r}] to keep them"
    return text


def _flat_ints(args) -> list[int]:
    out = []
    for a in args:
        if isinstance(a, (list, tuple, torch.Size)):
            out += _flat_ints(a)
        elif isinstance(a, int) and not isinstance(a, bool):
            out.append(a)
    return out


@torch.no_grad()
def run_tracked(slim: nn.Module, inputs):
    """Run ``slim`` in eval mode; returns (output, None) or (None, Failure of kind "raised")."""
    was = slim.training
    slim.eval()
    stack: list[str] = []
    done: list[str] = []
    hooks = []

    def enter(name):
        def pre(mod, args):
            stack.append(name or "<model>")
        return pre

    def leave(mod, args, out):
        done.append(stack.pop())  # returns None: the output is left alone

    for n, m in slim.named_modules():
        hooks.append(m.register_forward_pre_hook(enter(n)))
        hooks.append(m.register_forward_hook(leave))
    last = _LastOp()
    try:
        with last:
            return _run(slim, inputs), None
    except Exception as e:
        where = stack[-1] if stack else "<model>"
        msg = f"the slimmed model no longer runs: module {where!r} raised {type(e).__name__}: {e}"
        return None, Failure("raised", msg, where, last.name, _advice(slim, where, done, last.name, last.args), e)
    finally:
        for h in hooks:
            h.remove()
        slim.train(was)


@torch.no_grad()
def validation_failure(original, slim, inputs) -> Failure | None:
    """None when ``slim`` runs on ``inputs`` with the output shapes of ``original``."""
    out, failure = run_tracked(slim, inputs)
    if failure is not None:
        return failure
    got = _shapes(out)
    if original is not None:
        ow = original.training
        original.eval()
        try:
            want = _shapes(_run(original, inputs))
        finally:
            original.train(ow)
        if want != got:
            return Failure("shapes", f"slimming changed the output shapes from {want} to {got}")
    return None
