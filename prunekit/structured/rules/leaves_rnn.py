"""Leaf rule for ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (stock forward, ``proj_size == 0``).

Input channels are the columns of ``weight_ih_l0`` (and ``weight_ih_l0_reverse``). A hidden
unit ``j`` owns row ``g*H + j`` of every gate block ``g`` (4 for LSTM: i, f, g, o; 3 for
GRU: r, z, n; 1 for RNN) of ``weight_ih``, ``weight_hh`` and both biases, column ``j`` of
``weight_hh``, and column ``j`` (and ``H + j`` for the reverse direction) of the next
layer's ``weight_ih``. The module has a single ``hidden_size`` for every layer and
direction, so unit ``j`` is one channel across all of them (removed everywhere at once).
A removed unit then never reaches a kept one: its recurrent column and its readers'
columns are gone. ``output`` carries the units on its feature dim (``D`` copies when
bidirectional), ``h_n``/``c_n`` on their last dim. An initial state passed in must carry
the units itself; one with no channel entry (built with a constant width) keeps them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .ops_common import last_dim_slots

GATES = {"LSTM": 4, "GRU": 3}


def _gates(mod: nn.RNNBase) -> int:
    return GATES.get(mod.mode, 1)


def handle(cap, name: str, mod: nn.RNNBase, args, kwargs, out) -> bool:
    """Record the RNN's channels; False when the call is not one this rule covers."""
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if getattr(mod, "proj_size", 0) or not isinstance(x, torch.Tensor) or not isinstance(out, tuple):
        return False  # projections (hidden != output width) and PackedSequence inputs
    y, hn = out
    states = list(hn) if isinstance(hn, tuple) else [hn]
    inits = [] if hx is None else (list(hx) if isinstance(hx, (tuple, list)) else [hx])
    book = cap.book
    fd = x.dim() - 1  # feature dim (also for unbatched (L, H_in) inputs)
    on = last_dim_slots(cap, x, fd)  # time steps are mixed by the recurrence; batch entries are not channels
    H, G = mod.hidden_size, _gates(mod)
    D = 2 if mod.bidirectional else 1
    h = cap.out_slots(name, H)
    rows = np.tile(h, G)
    for layer in range(mod.num_layers):
        for sfx in ("", "_reverse")[:D]:
            p = f"{name}.{{}}_l{layer}{sfx}"
            cap.record("param", p.format("weight_ih"), 0, rows, layer=True)
            cap.record("param", p.format("weight_hh"), 0, rows, layer=True)
            cap.record("param", p.format("weight_hh"), 1, h, layer=True)
            if mod.bias:
                cap.record("param", p.format("bias_ih"), 0, rows, layer=True)
                cap.record("param", p.format("bias_hh"), 0, rows, layer=True)
            if layer:
                cap.record("param", p.format("weight_ih"), 1, np.tile(h, D), layer=True)
            elif on is not None:
                cap.record("param", p.format("weight_ih"), 1, on, layer=True)
    for t in inits:
        last = last_dim_slots(cap, t)
        if last is not None and len(last) == H:
            book.join(last, h)
        else:
            book.freeze(h)  # an initial state of constant width: the slim model could not shrink it
    cap.set(y, [((y.dim() - 1,), np.tile(h, D))])
    for s in states:
        cap.set(s, [((s.dim() - 1,), h)])
    return True


def sync_rnn(mod: nn.RNNBase) -> None:
    """After slicing: sizes from the weights, and the flat weight list rebuilt (``apply_plan``
    replaces parameters directly, which ``RNNBase.__setattr__`` would otherwise track)."""
    mod.hidden_size = mod.weight_hh_l0.shape[1]
    mod.input_size = mod.weight_ih_l0.shape[1]
    mod._init_flat_weights()
