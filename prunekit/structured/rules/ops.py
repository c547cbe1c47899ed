"""Channel rules for the torch functions seen during capture.

Each rule maps the input entries of one op to entries of its outputs. Ops are matched by
name (``torch.add``, ``Tensor.add``, ``Tensor.__add__``, ``add_`` all reach ``add``).
Ops without a rule freeze the channels of their inputs (safe: never wrong, only less
pruning) and are listed in ``Capture.unknown``.
"""
from __future__ import annotations

from ..trace.capture import Capture, flat_tensors
from .ops_contract import addmm, conv_fn, einsum, embedding_fn, linear_fn, matmul, sdpa
from .ops_heads import HEAD_RULES
from .ops_norm import NORM_RULES
from .ops_shuffle import SHUFFLE_RULES, track
from .ops_index import INDEX_RULES, cat, getitem, pad, setitem, split, stack
from .ops_moe import MOE_RULES
from .ops_shape import POOL, elementwise, expand, first_only, permute, pool, reduce, repeat, softmax_like, view

ELEMENTWISE = set("""add sub mul div true_divide truediv floordiv floor_divide remainder mod fmod pow maximum minimum
atan2 where lerp addcmul addcdiv masked_fill eq ne lt le gt ge logical_and logical_or logical_xor bitwise_and
bitwise_or bitwise_xor xor and or hypot copysign rsub radd rmul rtruediv rdiv rpow rfloordiv clamp clip clamp_min
clamp_max threshold relu relu6 gelu silu sigmoid tanh hardtanh hardswish hardsigmoid leaky_relu elu selu celu mish
softplus softsign tanhshrink logsigmoid dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
neg negative abs exp exp2 expm1 log log2 log10 log1p sqrt rsqrt square sign sin cos erf erfc reciprocal pos round
floor ceil trunc frac isnan isinf isfinite nan_to_num logical_not bitwise_not invert fill zero""".split())
FIRST_ONLY = set("""contiguous clone detach to type type_as float half double bfloat16 cpu cuda requires_grad
get_data pin_memory""".split())
VIEWS = set("view reshape flatten unflatten squeeze unsqueeze view_as reshape_as".split())
PERMUTES = set("permute transpose swapaxes swapdims movedim moveaxis t get_T get_mT get_H get_mH adjoint".split())
EXPANDS = set("expand expand_as broadcast_to".split())
# zeros_like/ones_like/full_like/empty_like carry their input's channels (ops_moe.like)
CREATION = set("""rand_like randn_like randint_like new_zeros new_ones new_empty new_full new_tensor""".split())
SOFTMAX = set("softmax log_softmax softmin normalize cumsum cumprod logcumsumexp".split())
REDUCE = set("""sum mean nansum nanmean amax amin max min prod std var logsumexp argmax argmin all any median
nanmedian mode count_nonzero std_mean var_mean norm""".split())


def _norm(name: str) -> tuple[str, bool]:
    inplace = False
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv", "floordiv", "pow", "and", "or",
                                                 "xor", "mod", "matmul"):
            name, inplace = name[1:], True
    elif name.endswith("_") and not name.startswith("_"):
        name, inplace = name[:-1], True
    return name, inplace


# Op-name families sharing one rule, tried in this order when no specific rule exists.
FAMILIES = [(ELEMENTWISE, elementwise), (FIRST_ONLY, first_only), (VIEWS, view), (PERMUTES, permute),
            (EXPANDS, expand), (SOFTMAX, softmax_like), (REDUCE, reduce), (POOL, pool)]


def on_op(cap: Capture, raw: str, args, kwargs, out) -> None:
    outs = flat_tensors(out)
    if not outs:
        return  # shape queries, .item(), .tolist(): nothing to propagate
    name, inplace = _norm(raw)
    ins = flat_tensors(list(args) + list(kwargs.values()))
    if name in CREATION:
        return
    tracked = [t for t in ins if cap.get(t)]
    if not tracked:
        return
    rule = RULES.get(name) or next((r for names, r in FAMILIES if name in names), None)
    if rule is None:
        cap.unknown.append(f"{raw} in {cap.where()}")
        for t in ins:
            cap.freeze_tensor(t)
        return
    track(cap, "carry" if rule in (permute, first_only, view) else "use", ins, outs)
    res = rule(cap, name, args, kwargs, out)
    if res is None:
        return
    for t, ents in zip(outs, res):
        cap.set(t, ents)


RULES = {
    "getitem": getitem, "setitem": setitem, "cat": cat, "concat": cat, "concatenate": cat, "stack": stack,
    "split": split, "chunk": split, "tensor_split": split, "unbind": split, "split_with_sizes": split,
    "pad": pad, "repeat": repeat, "tile": repeat, "matmul": matmul, "rmatmul": matmul, "mm": matmul,
    "bmm": matmul, "einsum": einsum, "linear": linear_fn, "addmm": addmm, "embedding": embedding_fn,
    "scaled_dot_product_attention": sdpa, "conv1d": conv_fn, "conv2d": conv_fn, "conv3d": conv_fn,
    **NORM_RULES, **SHUFFLE_RULES, **INDEX_RULES, **MOE_RULES,
    **HEAD_RULES,  # layer_norm/rms_norm within heads first; falls back to NORM_RULES
}
