"""Compact export of pruned models, and CSR inference for Linear layers.

``save_sparse(path, model)`` writes one safetensors file. Each conv/linear weight whose
compressed form is smaller is stored as CSR of its 2-D view (out_channels x everything
else): the kept values in their own dtype, column indices as int16 when the row length
allows (else int32) and row pointers as int16/int32 by the number of kept entries. The
pattern is the weight's mask when it has one (so a kept weight that happens to be 0 stays
kept), else its non-zeros. Every other tensor is stored dense. Keys are those of the
unmasked model (``conv1.weight``), so the file loads into a freshly built model.

``load_sparse(path)`` returns that plain state dict; ``load_into(model, path)`` also
re-attaches the masks, so training continues with the same sparsity. Values round-trip
bit for bit; a pruned entry comes back as +0.0 (a masked weight may hold -0.0 in memory).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..foundations.io import CheckpointError, load_tensors, save_tensors
from .masks import apply_masks, current_mask, prunable_modules

FORMAT = "prunekit-sparse-v1"


def _is_parametrization_key(k: str) -> bool:
    # a bare masked module (the model is one Linear) has keys "parametrizations.weight..." with no prefix
    return k.startswith("parametrizations.") or ".parametrizations." in k


def _weight_key(n: str) -> str:
    return f"{n}.weight" if n else "weight"


def plain_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state dict with effective weights under plain keys, {weight key: bool pattern})."""
    sd = {}
    for k, v in model.state_dict().items():
        if _is_parametrization_key(k):
            continue  # replaced by the effective weight below
        sd[k] = v
    patterns, explicit = {}, set()
    for n, m in prunable_modules(model).items():
        key = _weight_key(n)
        w = m.weight.detach()
        sd[key] = w
        cm = current_mask(m)
        patterns[key] = cm.clone() if cm is not None else (w != 0)
        if cm is not None:
            explicit.add(key)
    return sd, patterns, explicit


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.packbits(mask.flatten().numpy().astype(np.uint8)))


def unpack_bits(bits: torch.Tensor, shape) -> torch.Tensor:
    import numpy as np

    n = 1
    for s in shape:
        n *= s
    return torch.from_numpy(np.unpackbits(bits.numpy())[:n].astype(bool)).view(shape)


def _index_dtype(max_value: int) -> torch.dtype:
    return torch.int16 if max_value <= torch.iinfo(torch.int16).max else torch.int32


def encode_csr(w: torch.Tensor, pattern: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR of ``w`` viewed as (rows, cols); only entries in ``pattern`` are kept."""
    rows = w.shape[0]
    w2, p2 = w.reshape(rows, -1), pattern.reshape(rows, -1)
    nz = p2.nonzero()  # row-major order, which CSR needs
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(p2.sum(1), 0)
    return {"values": w2[p2].contiguous(), "col": nz[:, 1].to(_index_dtype(w2.shape[1] - 1)),
            "crow": crow.to(_index_dtype(int(crow[-1])))}


def decode_csr(parts: dict[str, torch.Tensor], shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weight (pruned entries +0.0) and its bool pattern."""
    rows = shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    crow = parts["crow"].long()
    counts = crow[1:] - crow[:-1]
    if len(crow) != rows + 1 or int(crow[-1]) != parts["values"].numel() or (counts < 0).any():
        raise CheckpointError(f"inconsistent CSR data for a weight of shape {tuple(shape)}")
    r = torch.repeat_interleave(torch.arange(rows), counts)
    c = parts["col"].long()
    if c.numel() and (c.min() < 0 or c.max() >= cols):
        raise CheckpointError(f"CSR column index out of range for shape {tuple(shape)}")
    w = torch.zeros(rows, cols, dtype=parts["values"].dtype)
    p = torch.zeros(rows, cols, dtype=torch.bool)
    w[r, c] = parts["values"]
    p[r, c] = True
    return w.view(shape), p.view(shape)


def csr_bytes(n_values: int, value_bytes: int, rows: int, cols: int) -> int:
    return n_values * (value_bytes + _index_dtype(cols - 1).itemsize) + (rows + 1) * _index_dtype(n_values).itemsize


def save_sparse(path, model: nn.Module, meta: dict | None = None) -> dict:
    """Write the compact file; returns sizes: {"bytes", "dense_bytes", "ratio", "sparse_tensors"}."""
    sd, patterns, explicit = plain_state(model)
    tensors, sparse, bitmasks = {}, {}, {}
    dense_bytes = 0
    for k, v in sd.items():
        dense_bytes += v.numel() * v.element_size()
        pat = patterns.get(k)
        if pat is not None and v.dim() >= 2:
            rows, cols = v.shape[0], v[0].numel()
            if csr_bytes(int(pat.sum()), v.element_size(), rows, cols) < v.numel() * v.element_size():
                for part, t in encode_csr(v, pat).items():
                    tensors[f"{k}::{part}"] = t
                sparse[k] = list(v.shape)
                continue
        tensors[k] = v
        if k in explicit:  # stored dense but masked: keep the mask itself, 1 bit per weight
            tensors[f"{k}::maskbits"] = pack_bits(pat)
            bitmasks[k] = list(v.shape)
    save_tensors(path, tensors, {"format": FORMAT, "sparse": sparse, "bitmasks": bitmasks, **(meta or {})})
    size = os.path.getsize(path)
    return {"bytes": size, "dense_bytes": dense_bytes, "ratio": dense_bytes / max(size, 1),
            "sparse_tensors": len(sparse)}


def load_sparse(path, with_patterns: bool = False):
    """The plain state dict (and, optionally, {weight key: bool pattern} of CSR-stored weights)."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a prunekit sparse export (format {meta.get('format')!r})")
    sd, patterns = {}, {}
    for k, v in tensors.items():
        if "::" not in k:
            sd[k] = v
    for k, shape in meta["sparse"].items():
        try:
            parts = {p: tensors[f"{k}::{p}"] for p in ("values", "col", "crow")}
        except KeyError as e:
            raise CheckpointError(f"{path}: missing CSR part {e} of {k}") from None
        sd[k], patterns[k] = decode_csr(parts, shape)
    for k, shape in meta.get("bitmasks", {}).items():
        if f"{k}::maskbits" not in tensors:
            raise CheckpointError(f"{path}: missing mask bits of {k}")
        patterns[k] = unpack_bits(tensors[f"{k}::maskbits"], shape)
    return (sd, patterns) if with_patterns else sd


def load_into(model: nn.Module, path, masks: bool = True) -> nn.Module:
    """Load an export into an (unmasked or masked) model of the same architecture; with
    ``masks`` the CSR patterns become binary masks, so sparsity survives further training."""
    sd, patterns = load_sparse(path, with_patterns=True)
    mods = prunable_modules(model)
    # Drop existing masks' keys from the comparison: load into the raw weights directly.
    with torch.no_grad():
        own = {}
        for k, v in model.state_dict().items():
            if not _is_parametrization_key(k):
                own[k] = v
        for n in mods:
            own[_weight_key(n)] = None
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        plain = {k: v for k, v in sd.items() if k not in {_weight_key(n) for n in mods}}
        model.load_state_dict(plain, strict=False)
        from .masks import raw_weight

        for n, m in mods.items():
            w = sd[_weight_key(n)]
            if w.shape != raw_weight(m).shape:
                raise CheckpointError(f"{path}: {n}.weight has shape {tuple(w.shape)}, model has {tuple(raw_weight(m).shape)}")
            raw_weight(m).copy_(w)
    if masks and patterns:
        apply_masks(model, {k[: -len(".weight")]: p for k, p in patterns.items()})
    return model


def file_size(path) -> int:
    return Path(path).stat().st_size


# --- CSR inference ---------------------------------------------------------------------------
class SparseLinear(nn.Module):
    """A Linear layer whose weight is a torch.sparse CSR tensor: y = x W^T + b via W @ x^T."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with warnings.catch_warnings():  # torch flags CSR as beta on every conversion
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = weight.detach().to_sparse_csr()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.weight_csr, x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def to_sparse_linear(model: nn.Module, min_sparsity: float = 0.0) -> nn.Module:
    """Replace (in a copy) every Linear whose weight is at least ``min_sparsity`` zero with a
    ``SparseLinear``. Inference only (no gradients for the CSR weight). Convs stay dense."""
    import copy

    # Replace whole modules rather than removing masks: see masks.unparametrize for why
    # removing parametrizations from a deep copy is unsafe.
    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Linear) and name:
            w = m.weight.detach()
            if float((w == 0).float().mean()) >= min_sparsity:
                parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
                setattr(parent, name.rsplit(".", 1)[-1], SparseLinear(w, m.bias))
    return net



__all__ = ["FORMAT", "SparseLinear", "decode_csr", "encode_csr", "load_into", "load_sparse", "save_sparse",
           "to_sparse_linear"]
