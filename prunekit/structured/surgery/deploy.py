"""Deployment helpers that make a (slim) network fast on CPU without changing what it computes.

Three things decide how much of a FLOPs reduction turns into a CPU speed-up:

* ``fold_bn``: a BatchNorm in eval mode is a per-channel affine map, so it can be
  folded into the conv (or linear) that feeds it. That removes one memory-bound pass
  and one Python/dispatcher call per conv, which matters most at batch 1 where a slim
  CIFAR ResNet is dominated by fixed per-op cost that slimming does not shrink.
* ``to_channels_last``: oneDNN's CPU convolutions prefer NHWC (or blocked) data; with
  NCHW activations they may reorder around every conv. Whether it pays depends on the
  batch size and widths: see the ablation in ``benchmarks/slim_speed.py`` (on the
  AVX-512 test machine it helped at batch 64 and for ResNet-18, and slowed ResNet-56
  down at batch 1).
* ``simd_round_to``: vectorised kernels process channels in SIMD-register-sized
  blocks (16 fp32 lanes with AVX-512, 8 with AVX2), so kept channel counts that are
  multiples of the lane count use the vectors fully. Pass the value to
  ``slim(..., round_to=...)``. Rounding keeps *more* channels than the ratio asks for,
  which raises speed-up per FLOP removed; the ablation shows it rarely makes the slim
  model faster in absolute terms.

``fold_bn`` decides which BatchNorms are foldable from the real data flow: a BN is
folded only when its input *is* the output of a conv/linear that nothing else reads,
each called once per forward. The data flow comes from running the model once under
a ``TorchFunctionMode`` (works for any eagerly-running model, HuggingFace included)
or, without example inputs, from a ``torch.fx`` trace.
"""
from __future__ import annotations

import copy
import math
from collections import Counter

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from ...foundations.inputs import call_model as _run

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Register widths in bits for the capabilities torch reports; anything unknown is
# treated as 128-bit (SSE/NEON-class), the conservative choice.
_SIMD_BITS = {"AVX512": 512, "AVX2": 256, "SVE256": 256, "ZVECTOR": 128, "VSX": 128, "NEON": 128, "DEFAULT": 128}


# --------------------------------------------------------------------------- helpers


def _tensors_in(obj, out: list | None = None) -> list:
    """Every tensor inside nested tuples/lists/dicts (HF ModelOutput is a dict)."""
    if out is None:
        out = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors_in(v, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _tensors_in(v, out)
    return out


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _foldable_producer(m: nn.Module) -> bool:
    return isinstance(m, _CONVS) or isinstance(m, nn.Linear)


def _foldable_bn(bn: nn.Module) -> bool:
    # Without running statistics eval-mode BN normalises with batch statistics,
    # which is not a fixed affine map and cannot be folded.
    return isinstance(bn, _BNS) and bn.track_running_stats and bn.running_mean is not None


# --------------------------------------------------------------------------- pair finding


# Tensor methods and properties that look at metadata only. Every other torch function
# that receives a watched tensor counts as reading its values (``x.tolist()`` too).
_METADATA = frozenset({
    "shape", "size", "dim", "ndim", "ndimension", "numel", "dtype", "device", "layout", "stride",
    "is_contiguous", "is_floating_point", "is_complex", "requires_grad", "is_leaf", "grad_fn",
    "data_ptr", "storage_offset", "get_device", "is_cuda", "is_cpu", "is_sparse", "is_quantized",
    "is_meta", "names", "_version", "__len__", "element_size", "nelement",
})


def _func_name(func) -> str:
    # Properties arrive as the descriptor's bound ``__get__``; name them by the descriptor.
    name = getattr(func, "__name__", "")
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _UseCounter(TorchFunctionMode):
    """Counts how often each watched tensor is read by an op (metadata queries excluded)."""

    def __init__(self):
        super().__init__()
        self.watched: dict[int, torch.Tensor] = {}  # id -> tensor, kept alive so ids stay unique
        self.uses: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.watched and _func_name(func) not in _METADATA:
            for t in _tensors_in((args, kwargs)):
                if id(t) in self.watched:
                    self.uses[id(t)] += 1
        return out


def _pairs_by_running(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}  # tensor id -> producing conv/linear name
    calls: Counter = Counter()
    bn_input: dict[str, int] = {}  # bn name -> id of its input tensor
    counter = _UseCounter()
    handles = []

    def after_producer(mod, args, out):
        calls[names[mod]] += 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = names[mod]
            counter.watched[id(out)] = out

    def before_bn(mod, args):
        calls[names[mod]] += 1
        if args and isinstance(args[0], torch.Tensor):
            bn_input[names[mod]] = id(args[0])

    for m in model.modules():
        if _foldable_producer(m):
            handles.append(m.register_forward_hook(after_producer))
        elif isinstance(m, _BNS):
            handles.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad(), counter:
            out = _run(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    # A tensor the model returns is read by the caller: folding would change it.
    for t in _tensors_in(out):
        if id(t) in counter.watched:
            counter.uses[id(t)] += 1
    pairs = []
    for bn_name, tid in bn_input.items():
        src = produced.get(tid)
        if src is None or calls[src] != 1 or calls[bn_name] != 1 or counter.uses[tid] != 1:
            continue
        pairs.append((src, bn_name))
    return pairs


def _pairs_by_fx(model: nn.Module) -> list[tuple[str, str]]:
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # fx cannot trace data-dependent Python control flow
        raise ValueError(
            f"fold_bn: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
            "pass example_inputs so the data flow is recorded by running the model") from e
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or len(src.users) != 1:
            continue
        if not isinstance(gm.get_submodule(node.target), _BNS):
            continue
        if not _foldable_producer(gm.get_submodule(src.target)):
            continue
        if calls[node.target] == 1 and calls[src.target] == 1:
            pairs.append((src.target, node.target))
    return pairs


def conv_bn_pairs(model: nn.Module, example_inputs=None) -> list[tuple[str, str]]:
    """(producer name, BatchNorm name) pairs that ``fold_bn`` can fuse exactly."""
    pairs = _pairs_by_running(model, example_inputs) if example_inputs is not None else _pairs_by_fx(model)
    out = []
    for src, bn in pairs:
        p, b = model.get_submodule(src), model.get_submodule(bn)
        if not _foldable_bn(b):
            continue
        n_out = p.out_channels if isinstance(p, _CONVS) else p.out_features
        if b.num_features != n_out:
            continue
        # Linear + BN1d only lines up when the linear output is (N, C): BN1d normalises
        # dim 1, the linear's features are the last dim. The fx path cannot see ranks,
        # so it only folds conv pairs.
        if isinstance(p, nn.Linear) and (example_inputs is None or not isinstance(b, nn.BatchNorm1d)):
            continue
        out.append((src, bn))
    return out


# --------------------------------------------------------------------------- folding


@torch.no_grad()
def _fold_pair(producer: nn.Module, bn: nn.Module) -> None:
    # y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
    #   = (s * W) x + (s * (b - mean) + beta),     s = gamma / sqrt(var + eps)
    # Computed in float64 so folding adds no rounding beyond the final cast.
    w = producer.weight
    dt = w.dtype
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    b = producer.bias.double() if producer.bias is not None else torch.zeros_like(var)
    shape = (-1,) + (1,) * (w.dim() - 1)  # output channels are dim 0 for conv and linear
    new_w = (w.double() * s.reshape(shape)).to(dt)
    new_b = (s * (b - mean) + beta).to(dt)
    producer.weight = nn.Parameter(new_w, requires_grad=w.requires_grad)
    producer.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)


def fold_bn(model: nn.Module, example_inputs=None, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv/linear feeding it; the BN becomes Identity.

    The result is for inference: it is returned in eval mode and computes what the
    original computes in eval mode (up to float rounding). Training it further would
    not re-create BN behaviour. ``example_inputs`` (tensor, tuple or kwargs dict) lets
    the data flow be recorded by running the model once; without it ``torch.fx``
    traces the model. BNs that cannot be folded exactly (fed by something other than a
    conv/linear, sharing their input with another reader, called twice, without
    running statistics) are left in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_bn expects an nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if _foldable_producer(m) and parametrize.is_parametrized(m, "weight"):
            raise ValueError(
                f"fold_bn: '{name}' has a parametrized weight (a pruning mask?); "
                "remove the parametrization first (prunekit.sparse.masks.remove_masks)")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for src, bn in conv_bn_pairs(model, example_inputs):
        _fold_pair(model.get_submodule(src), model.get_submodule(bn))
        _set_submodule(model, bn, nn.Identity())
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BNS) for m in model.modules())


# --------------------------------------------------------------------------- memory format


def _inputs_to_channels_last(module, args, kwargs):
    # Only 4-D floating tensors have a channels-last layout; token ids etc. pass through.
    def conv(t):
        if isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}


def to_channels_last(model: nn.Module, inplace: bool = False, convert_inputs: bool = True) -> nn.Module:
    """Store 4-D weights channels-last; with ``convert_inputs`` also convert 4-D inputs on entry.

    Converting the input matters as much as the weights: a conv on an NCHW input
    falls back to the reorder-every-call path. Outputs are numerically the same
    (layout only); they may come out channels-last strided.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_channels_last expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    model.to(memory_format=torch.channels_last)
    if convert_inputs and not getattr(model, "_prunekit_channels_last", False):
        model.register_forward_pre_hook(_inputs_to_channels_last, with_kwargs=True)
        model._prunekit_channels_last = True
    return model


# --------------------------------------------------------------------------- SIMD-friendly widths


def simd_lanes(dtype: torch.dtype = torch.float32, capability: str | None = None) -> int:
    """Number of ``dtype`` values in one SIMD register of this CPU (16 fp32 for AVX-512)."""
    if not dtype.is_floating_point:
        raise ValueError(f"simd_lanes: expected a floating dtype, got {dtype}")
    cap = capability if capability is not None else torch.backends.cpu.get_cpu_capability()
    bits = _SIMD_BITS.get(cap.upper(), 128)
    return max(1, bits // torch.finfo(dtype).bits)


def _kept_after_rounding(width: int, ratio: float, multiple: int) -> int:
    # Mirrors the planner: remove ceil(ratio * width), keep at least one, then raise the
    # kept count to a multiple of ``multiple`` without exceeding the width.
    kept = max(1, width - math.ceil(ratio * width - 1e-9))
    while kept % multiple and kept < width:
        kept += 1
    return kept


def simd_round_to(widths=None, ratio: float | None = None, dtype: torch.dtype = torch.float32,
                  capability: str | None = None, max_extra: float = 0.1) -> int:
    """A ``round_to`` for ``slim``: the SIMD lane count, or the largest power-of-two below it that fits.

    Without ``widths`` this is simply ``simd_lanes``. With the sizes of the channel
    groups to be slimmed and the planned ``ratio``, the multiple is halved while rounding
    the kept channel counts *up* to it would keep more than ``max_extra`` (10%) channels
    beyond what ``ratio`` asks for. Rounding up is what ``slim`` does, so a 16-wide
    layer slimmed to 11 channels with ``round_to=16`` would not be slimmed at all.
    """
    m = simd_lanes(dtype, capability)
    if widths is None:
        return m
    if ratio is None or not 0.0 <= ratio < 1.0:
        raise ValueError(f"simd_round_to: with widths, ratio must be in [0, 1), got {ratio!r}")
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"simd_round_to: widths must be positive channel counts, got {widths}")
    if max_extra < 0:
        raise ValueError(f"simd_round_to: max_extra must be >= 0, got {max_extra}")
    exact = sum(_kept_after_rounding(w, ratio, 1) for w in widths)
    while m > 1 and sum(_kept_after_rounding(w, ratio, m) for w in widths) > (1.0 + max_extra) * exact:
        m //= 2
    return m


def deploy(model: nn.Module, example_inputs=None, fold: bool = True, channels_last: bool = True) -> nn.Module:
    """The CPU inference recipe: a copy with BN folded and channels-last layout, in eval mode."""
    out = fold_bn(model, example_inputs) if fold else copy.deepcopy(model).eval()
    if channels_last:
        out = to_channels_last(out, inplace=True)
    return out
