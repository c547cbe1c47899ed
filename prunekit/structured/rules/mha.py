"""``nn.MultiheadAttention``: channel rule and a slim-capable replacement.

Stock ``nn.MultiheadAttention`` requires ``num_heads * head_dim == embed_dim`` (the
query width), so neither whole heads nor the embedding width can be removed without
changing its forward. When a plan slices one, the module's class is switched to
``SlimMultiheadAttention`` (same parameters and state-dict keys, a forward that reads
all sizes from the weights); the plan records the switch so ``load_pruned`` replays it.

Supported: packed q/k/v projection (``_qkv_same_embed_dim``), no ``bias_k``/``bias_v``,
no ``add_zero_attn``; other configurations stay opaque (their channels are kept).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..trace.capture import Capture
from .ops_common import _arg, last_dim_slots


def supported(mod: nn.MultiheadAttention) -> bool:
    return bool(mod._qkv_same_embed_dim) and mod.bias_k is None and not mod.add_zero_attn


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class SlimMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose inner width (heads x head_dim) and embedding width
    may differ; same arguments and outputs as the stock forward."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first and not unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # sequence-first from here: (L, B, E)
        tgt, b, _ = query.shape
        src = key.shape[0]
        inner = self.in_proj_weight.shape[0] // 3
        h = self.num_heads
        d = inner // h
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x, w, bias, n):
            return F.linear(x, w, bias).reshape(n, b, h, d).permute(1, 2, 0, 3)  # (B, H, n, d)

        q, k, v = heads(query, wq, bq, tgt), heads(key, wk, bk, src), heads(value, wv, bv, src)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is not None:
            m = _additive(attn_mask, scores.dtype)
            scores = scores + (m if m.dim() == 2 else m.view(b, h, tgt, src))
        elif is_causal:
            scores = scores + torch.full((tgt, src), float("-inf"), device=scores.device).triu(1)
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype).view(b, 1, 1, src)
        att = scores.softmax(-1)
        dropped = F.dropout(att, self.dropout, self.training) if self.dropout > 0 else att
        out = (dropped @ v).permute(2, 0, 1, 3).reshape(tgt, b, inner)
        out = self.out_proj(out)
        if self.batch_first and not unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = att.mean(1) if average_attn_weights else att
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


CLASSES = {"SlimMultiheadAttention": SlimMultiheadAttention}


def handle(cap: Capture, name: str, mod: nn.MultiheadAttention, args, kwargs, out) -> bool:
    """Channel rule; returns False when the configuration is not supported (caller freezes)."""
    if not supported(mod) or not isinstance(out, tuple) or not isinstance(out[0], torch.Tensor):
        return False
    book = cap.book
    ins = [_arg(args, kwargs, i, k) for i, k in enumerate(("query", "key", "value"))]
    if not all(isinstance(t, torch.Tensor) for t in ins):
        return False
    for k in ("key_padding_mask", "attn_mask"):
        t = kwargs.get(k)
        if isinstance(t, torch.Tensor):
            cap.freeze_tensor(t)
    last = [last_dim_slots(cap, t) for t in ins]  # sequence/batch positions are mixed by attention
    if all(a is not None for a in last):
        # one set of in_proj columns reads query, key and value alike
        book.join(last[0], last[1])
        book.join(last[0], last[2])
        cap.record("param", f"{name}.in_proj_weight", 1, last[0])
    else:
        for a in last:
            if a is not None:
                book.freeze(a)
    inner = mod.in_proj_weight.shape[0] // 3
    heads = cap.out_slots(f"{name}#inner", inner)
    tripled = np.concatenate([heads, heads, heads])  # q, k and v rows of one inner channel
    cap.record("param", f"{name}.in_proj_weight", 0, tripled)
    if mod.in_proj_bias is not None:
        cap.record("param", f"{name}.in_proj_bias", 0, tripled)
    cap.record("in", f"{name}.out_proj", 1, heads)
    cap.ties.append((name, heads.reshape(mod.num_heads, -1), mod.num_heads))
    cap.book.tie(heads.reshape(mod.num_heads, -1))
    outs = cap.out_slots(f"{name}.out_proj", mod.out_proj.out_features)
    cap.record("out", f"{name}.out_proj", 0, outs)
    cap.set(out[0], [((out[0].dim() - 1,), outs)])
    if isinstance(out[1], torch.Tensor):
        # attention weights depend on every head (averaged, or indexed by head): they may be
        # discarded (the usual case); if they are used, the heads must stay
        cap._alive.append(out[1])
        cap.taint[id(out[1])] = book.coarse_of(heads.reshape(mod.num_heads, -1), (0,))
    return True
