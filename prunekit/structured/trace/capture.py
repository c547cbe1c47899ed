"""Graph capture: record one real forward pass and propagate channel slots through it.

Capture is a tracing of the actual forward (``torch.overrides.TorchFunctionMode`` plus
module forward hooks) on the user's ``example_inputs``, with shapes taken from the real
tensors. Compared with ``torch.fx.symbolic_trace`` it needs no leaf-module configuration
for Python control flow, keyword inputs (``input_ids=``, ``pixel_values=``) or dict-like
outputs (HF ``ModelOutput``), and it is fast: every op is analysed once as it runs.

Conv, Linear, the norms, Embedding and ``nn.MultiheadAttention`` (with their stock torch
forward), and libraries' own RMSNorm/LayerNorm classes (see ``custom_norm``), are leaf
modules: their insides are not recorded. Every other op is handled by a rule in ``ops.py``; an op with
no rule makes the channels it touches unprunable instead of guessing (the documented
fallback: the analysis never fails on an unknown op, it only prunes less). If the forward
itself raises, ``TraceError`` names the module and the operation that was running and
suggests ``ignore=`` (ignored modules run as opaque leaves: their channels are frozen).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .propagate import Entry
from .slots import FROZEN, SlotBook

PAD_FUNCS = frozenset({torch.nn.functional.pad, torch._C._nn.pad})


class TraceError(RuntimeError):
    """The model's forward could not be recorded on the example inputs."""


@dataclass
class Record:
    """Positions along one dimension of a layer weight or a parameter that are channels.

    kind: "out" (conv/linear weight rows), "in" (conv/linear weight columns), "norm"
    (per-channel norm parameters), "param" (a parameter/buffer used outside a leaf
    module, sliced along ``dim``), "emb" (embedding columns), "pad" (constant channels a
    ``F.pad`` inserts along ``dim``, whose amounts live in module attributes: ``name`` is
    the module, ``extra`` says which attributes; see ``padding.py``).
    """

    kind: str
    name: str
    dim: int
    slots: np.ndarray
    extra: dict = field(default_factory=dict)


OPAQUE = (nn.MultiheadAttention,)
LEAVES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          nn.Embedding, nn.RNNBase) + OPAQUE + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _op_name(func) -> str:
    n = getattr(func, "__name__", None) or repr(func)
    if n == "__get__":
        n = "get_" + getattr(getattr(func, "__self__", None), "__name__", "?")
    return n


def flat_tensors(obj, depth=0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    out: list[torch.Tensor] = []
    if depth > 3:
        return out
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "values") and not isinstance(obj, type)):
        try:
            vals = list(obj.values())
        except Exception:
            return out
        for v in vals:
            out += flat_tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += flat_tensors(v, depth + 1)
    return out


def matches(name: str, patterns) -> bool:
    for p in patterns:
        if isinstance(p, str) and (name == p or fnmatch.fnmatchcase(name, p) or name.startswith(p + ".")):
            return True
    return False


class Capture:
    def __init__(self, model: nn.Module, ignore=()):
        self.model = model
        self.book = SlotBook()
        self.ann: dict[int, list[Entry]] = {}
        self._alive: list[torch.Tensor] = []
        self.records: dict[tuple, Record] = {}
        self._seen: dict[tuple, np.ndarray] = {}
        self._mods = dict(model.named_modules())
        # (module, rows that are pruned as whole units, number of heads the module reshapes into)
        self.ties: list[tuple[str, np.ndarray, int]] = []
        self.parts: list[list[np.ndarray]] = []  # blocks that must lose equally many channels
        self.multiple: list[tuple[np.ndarray, int]] = []  # channels whose kept count a kernel needs aligned
        self.unknown: list[str] = []
        self.taint: dict[int, np.ndarray] = {}
        self.stack: list[str] = []
        # one frame per entry of ``stack``: [args, kwargs, pad calls seen so far in that call]
        self.frames: list[list] = []
        self.pending_pads: list = []  # pad calls whose amount attributes are checked after the run
        self.leaf_depth = 0
        self.last_op = "<start>"
        self._out_cache: dict[str, np.ndarray] = {}
        self.trace: list[tuple[str, str]] = []  # (module, op or "module") per recorded step, in order
        ignore_types = tuple(t for t in ignore if isinstance(t, type))
        ignore_names = [t for t in ignore if isinstance(t, str)]
        self.ignored = {n for n, m in model.named_modules()
                        if n and (matches(n, ignore_names) or (ignore_types and isinstance(m, ignore_types)))}
        self.params: dict[int, str] = {}
        for n, p in model.named_parameters():
            self.params.setdefault(id(p), n)
        for n, b in model.named_buffers():
            self.params.setdefault(id(b), n)

    # ---- annotations -------------------------------------------------------------
    def get(self, t: torch.Tensor) -> list[Entry]:
        if id(t) in self.taint:
            # a tensor that depends on channels without carrying them as a dim (attention
            # weights averaged over heads): any use of it keeps those channels
            self.book.freeze(self.taint.pop(id(t)))
        e = self.ann.get(id(t))
        # integer buffers are indices (position ids), not channels
        if e is None and id(t) in self.params and t.is_floating_point():
            e = []
            for d, s in enumerate(t.shape):
                if s > 1:
                    slots = self.book.new(s)
                    # 3+ dims: a stack of weight matrices (MoE experts), a layer's weight
                    self.record("param", self.params[id(t)], d, slots, layer=t.dim() >= 3)
                    e.append(((d,), slots))
            self.set(t, e)
        return e or []

    def set(self, t: torch.Tensor, entries: list[Entry]) -> None:
        self._alive.append(t)
        self.ann[id(t)] = entries

    def freeze_tensor(self, t: torch.Tensor) -> None:
        for _, arr in self.get(t):
            self.book.freeze(arr)

    def _tensor_key(self, kind, name, dim):
        """(id of the weight tensor, dim) a record indexes: tied weights share channels."""
        if kind == "pad":
            return None  # no tensor behind padded channels
        if kind == "param":
            owner, _, attr = name.rpartition(".")
            t = getattr(self._mods.get(owner), attr, None)
        else:
            t = getattr(self._mods.get(name), "weight", None)
            dim = {"out": 0, "in": 1, "norm": 0, "emb": 1}[kind]
        return (id(t), dim) if isinstance(t, torch.Tensor) else None

    def record(self, kind, name, dim, slots, **extra) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        # a module padding one dim twice, with different amount attributes, makes two records
        own = (kind, name, dim) if kind != "pad" else (kind, name, dim, extra["key"])
        for key in (own, self._tensor_key(kind, name, dim)):
            if key is None:
                continue
            old = self._seen.get(key)
            if old is None:
                self._seen[key] = slots
            elif old.shape == slots.shape:
                # a module called twice, or a weight tied between modules (shared embeddings
                # and LM heads): the same tensor positions are the same channels
                self.book.join(old, slots)
            else:
                self.book.freeze(old)
                self.book.freeze(slots)
        if own not in self.records:
            self.records[own] = Record(kind, name, dim, slots, extra)

    def out_slots(self, name: str, n: int) -> np.ndarray:
        if name not in self._out_cache:
            self._out_cache[name] = self.book.new(n)
        return self._out_cache[name]

    def where(self) -> str:
        return self.stack[-1] if self.stack else "<model>"

    # ---- running -----------------------------------------------------------------
    def run(self, example_inputs):
        from ..rules import leaves, ops

        handles = []
        leaf_names = set()
        for name, m in self.model.named_modules():
            is_leaf = bool(name) and (name in self.ignored or (isinstance(m, LEAVES) and _stock_forward(m))
                                      or custom_norm(m) is not None)
            if is_leaf:
                leaf_names.add(name)
            handles.append(m.register_forward_pre_hook(self._pre(name, is_leaf), with_kwargs=True))
            handles.append(m.register_forward_hook(self._post(name, is_leaf, leaves), with_kwargs=True))
        self._ops = ops
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), _Mode(self):
                if isinstance(example_inputs, dict):
                    out = self.model(**example_inputs)
                elif isinstance(example_inputs, (tuple, list)):
                    out = self.model(*example_inputs)
                else:
                    out = self.model(example_inputs)
        except TraceError:
            raise
        except Exception as e:
            where = self.where()
            mod = dict(self.model.named_modules()).get(where, self.model) if where != "<model>" else self.model
            raise TraceError(
                f"could not trace the forward: module {where!r} ({type(mod).__name__}) failed at operation "
                f"{self.last_op!r}: {type(e).__name__}: {e}. Check that example_inputs match the model's forward; "
                f"if this module cannot run under tracing, pass its name in ignore=[{where!r}] so it runs as an "
                f"opaque leaf (its channels are then never pruned).") from e
        finally:
            for h in handles:
                h.remove()
            self.model.train(was)
        outs = flat_tensors(out)
        if not outs:
            raise TraceError(f"the model returned {type(out).__name__} with no tensors in it; "
                             "channel analysis needs tensor outputs (tensor, tuple, dict or ModelOutput)")
        self.book.note("model output")
        for t in outs:
            self.freeze_tensor(t)  # channels that reach an output are never pruned
        from ..rules.padding import settle

        self.book.note("pad amounts held by no module attribute")
        settle(self)  # reruns modules (hooks removed) to find the attributes holding pad amounts
        return out

    def _pre(self, name, is_leaf):
        def hook(mod, args, kwargs):
            if self.leaf_depth:
                if is_leaf:
                    self.leaf_depth += 1
                return None
            if is_leaf:
                self.leaf_depth = 1
            self.stack.append(name or "<model>")
            self.frames.append([args, kwargs, 0])
            return None
        return hook

    def _post(self, name, is_leaf, leaves):
        def hook(mod, args, kwargs, out):
            if is_leaf:
                self.leaf_depth -= 1
                if self.leaf_depth:
                    return None
                self.stack.pop()
                self.frames.pop()
                self.trace.append((name, "module"))
                self.book.note(f"ignored module {name}" if name in self.ignored else
                               f"module {name} ({type(mod).__name__})")
                # the rule's own tensor calls (x.dim(), shape arithmetic) are not the model's
                # ops: keep the mode out of them, or freezes get blamed on "op dim"
                self.leaf_depth += 1
                try:
                    if name in self.ignored:
                        leaves.opaque(self, args, kwargs)
                    else:
                        self.last_op = f"{type(mod).__name__} forward"
                        leaves.handle(self, name, mod, args, kwargs, out)
                finally:
                    self.leaf_depth -= 1
                return None
            if self.leaf_depth:
                return None
            if self.stack:
                self.stack.pop()
                self.frames.pop()
            return None
        return hook


_NORM_NAME = re.compile(r"(RMS|Layer)Norm$", re.IGNORECASE)


def custom_norm(m: nn.Module) -> int | None:
    """A library's own channel norm, or None. Returns the channel dim (-1: last, 1: channels
    first). Covered: classes named ``*RMSNorm``/``*LayerNorm`` with no submodules, a 1-D
    ``weight`` (and optional 1-D ``bias``) and nothing else (HF ``LlamaRMSNorm``,
    ``T5LayerNorm``), and ``nn.LayerNorm`` subclasses with their own forward and a
    ``data_format`` of ``channels_last``/``channels_first`` (ConvNeXt). They are treated
    like ``nn.RMSNorm``/``nn.LayerNorm``: a per-channel scale over statistics of the channel
    dim; the exactness check runs a sliced copy of the module on the kept channels."""
    fmt = getattr(m, "data_format", "channels_last")
    if fmt not in ("channels_last", "channels_first"):
        return None
    spec = 1 if fmt == "channels_first" else -1
    if isinstance(m, LEAVES):
        ok = (isinstance(m, nn.LayerNorm) and not _stock_forward(m) and hasattr(m, "data_format")
              and len(m.normalized_shape) == 1)
        return spec if ok else None
    if not _NORM_NAME.search(type(m).__name__) or any(True for _ in m.children()):
        return None
    params = dict(m.named_parameters(recurse=False))
    w = params.get("weight")
    if w is None or w.dim() != 1 or set(params) - {"weight", "bias"}:
        return None
    b = params.get("bias")
    if b is not None and b.shape != w.shape:
        return None
    return spec


def _stock_forward(m: nn.Module) -> bool:
    """A leaf rule describes the torch forward; a subclass that overrides it (channels-first
    LayerNorm, LoRA Linear...) is traced through instead."""
    mod = getattr(type(m).forward, "__module__", "") or ""
    return mod.startswith("torch.nn") or mod == "prunekit.structured.rules.mha"


class _Mode(TorchFunctionMode):
    def __init__(self, cap: Capture):
        super().__init__()
        self.cap = cap

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cap = self.cap
        if func in PAD_FUNCS:
            # numbered within every enclosing module call, leaves included, exactly as the
            # rerun in ``padding.settle`` numbers them, so a rerun can find this call again
            for f in cap.frames:
                f[2] += 1
        if cap.leaf_depth:
            return func(*args, **kwargs)
        name = _op_name(func)
        cap.last_op = name
        out = func(*args, **kwargs)
        where = cap.where()
        cap.trace.append((where, name))
        cap.book.note(f"op {name} in {where}")
        cap._ops.on_op(cap, name, args, kwargs, out)
        return out


__all__ = ["Capture", "Record", "TraceError", "FROZEN"]
