"""Rules for functional norms: ``F.batch_norm``, ``F.instance_norm``, ``F.layer_norm``,
``F.rms_norm`` and ``F.group_norm`` called on parameters of custom blocks.

Per-channel statistics (batch norm, instance norm) commute with removing channels: the
channel entry passes and is joined with the weight/bias/running statistics given. Norms
whose statistics run over the channel dim (layer/RMS norm over the last dim, group norm
within groups) are prunable when an affine parameter is given (it names the call for the
exactness reference, which normalises over the kept channels as the slim model does) and
the normalised size follows the tensors (``normalized_shape`` is a ``torch.Size`` read
from a shape, not a literal tuple); otherwise their channels are kept. Group norm keeps
its group count, so every group loses equally many channels.
"""
from __future__ import annotations

import torch

from ..trace.capture import flat_tensors
from .ops_common import _arg


def _affine(cap, tensors, on):
    """Join the 1-D per-channel tensors with the channel entry ``on`` (or keep them)."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        for dims, arr in cap.get(t):
            if on is not None and dims == (0,) and len(arr) == len(on):
                cap.book.join(on, arr)
            else:
                cap.book.freeze(arr)


def _per_channel(cap, x, cd, stats_dims, params):
    """Channel entry on ``cd`` passes; entries on a dim in ``stats_dims`` are frozen."""
    on, keep = None, []
    for dims, arr in cap.get(x):
        if dims == (cd,):
            on = arr
            keep.append((dims, arr))
        elif set(dims) & stats_dims or cd in dims:
            cap.book.freeze(arr)
        else:
            keep.append((dims, arr))
    _affine(cap, params, on)
    return on, keep


def batch_norm(cap, name, args, kwargs, out):
    x = args[0]
    params = [_arg(args, kwargs, i, k) for i, k in ((1, "running_mean"), (2, "running_var"), (3, "weight"),
                                                     (4, "bias"))]
    nd = x.dim()
    cd = 1 if nd >= 2 else 0
    if name == "instance_norm":
        use_stats = bool(_arg(args, kwargs, 5, "use_input_stats", True))
        stats = set(range(2, nd)) if use_stats else set()
    else:
        training = bool(_arg(args, kwargs, 5, "training", False))
        # training mode (or no running statistics): mean/var over batch and positions
        stats = {d for d in range(nd) if d != cd} if training or params[0] is None else set()
    _, keep = _per_channel(cap, x, cd, stats, params)
    return [keep for _ in flat_tensors(out)]


def _dynamic(shape) -> bool:
    """A size that follows the tensors (``x.shape[-1:]``, ``w.shape``), not a hard-coded one."""
    return isinstance(shape, torch.Size)


def layer_norm(cap, name, args, kwargs, out):
    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    w = _arg(args, kwargs, 2, "weight")
    b = _arg(args, kwargs, 3, "bias") if name == "layer_norm" else None
    nd = x.dim()
    normed = set(range(nd - k, nd))
    channel = k == 1 and _dynamic(shape) and any(isinstance(t, torch.Tensor) and t.dim() == 1 for t in (w, b))
    if channel:
        on, keep = _per_channel(cap, x, nd - 1, set(), [w, b])
        if on is None:
            keep = [e for e in keep if e[0] != (nd - 1,)]
    else:
        on, keep = _per_channel(cap, x, -1, normed, [])
        for t in (w, b):
            if isinstance(t, torch.Tensor):
                cap.freeze_tensor(t)
    return [keep for _ in flat_tensors(out)]


def group_norm(cap, name, args, kwargs, out):
    x = args[0]
    g = int(_arg(args, kwargs, 1, "num_groups"))
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    nd = x.dim()
    affine = any(isinstance(t, torch.Tensor) for t in (w, b))
    if not affine or nd < 2:
        cap.freeze_tensor(x)  # no parameter names this call for the exactness reference
        for t in (w, b):
            if isinstance(t, torch.Tensor):
                cap.freeze_tensor(t)
        return [[] for _ in flat_tensors(out)]
    on, keep = _per_channel(cap, x, 1, set(range(2, nd)), [w, b])
    if on is not None:
        cap.parts.append(list(on.reshape(g, -1)))  # the group count is fixed: equal removal
    return [keep for _ in flat_tensors(out)]


NORM_RULES = {"batch_norm": batch_norm, "instance_norm": batch_norm, "layer_norm": layer_norm,
              "rms_norm": layer_norm, "group_norm": group_norm}

__all__ = ["NORM_RULES"]
