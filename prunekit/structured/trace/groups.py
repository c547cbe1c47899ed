"""Coupled channel groups: ``channel_groups(model, example_inputs, ignore=())``.

A group is a set of channels that must be removed together: a conv's output rows, the BN
after it, every layer that consumes them (weight columns), every residual branch added to
them (all branches share indices), parameters added to them (ViT cls/pos embeddings)...
Channel ``i`` of a group has one position in each member, given by the member's index
tensor (see ``ChannelGroup``).

Every output row of every conv/linear that ran belongs to exactly one group: rows that
cannot be pruned (they reach a model output, an ignored module, an op without a rule...)
are listed in frozen groups (``prunable=False``), one per producer.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .capture import Capture
from .slots import components


@dataclass
class ChannelGroup:
    """Channels that are pruned together.

    Index convention for every member list: ``(name, idx)`` where ``idx`` is a LongTensor
    with one row per group channel ``0..size-1`` giving that channel's position in the
    member (``-1`` where the member does not see that channel, e.g. a consumer of one
    chunk or a concat producer). ``idx`` is 1-D normally and 2-D ``(size, k)`` when a
    channel occupies several positions (a flatten into a Linear: channel x spatial; packed
    q/k/v rows; rotary pairs), padded with ``-1`` where a channel has fewer than ``k``.

    - ``out_layers``: conv/linear modules whose ``weight`` dim 0 (out-channels/rows) is
      indexed (depthwise convs appear here: their rows are their input channels).
    - ``norm_layers``: BatchNorm/LayerNorm/GroupNorm/InstanceNorm modules whose affine
      parameters (and running stats) are indexed.
    - ``in_layers``: conv/linear modules whose ``weight`` dim 1 (in-channels/columns) is
      indexed.
    - ``params``: ``(tensor_name, dim, idx)`` for every other tensor sliced along ``dim``:
      embedding tables (``emb.weight``, dim 1), parameters used outside leaf modules (ViT
      ``cls_token``/``pos_embed``, functional weights).
    - ``pads``: ``(module, {attribute: "before"|"after"|"both"}, n_before, idx)`` for
      constant channels inserted by ``F.pad`` (option-A shortcuts): ``idx`` indexes the
      ``n_before`` channels padded in front followed by those padded behind; removing
      them lowers the module's pad-amount attributes (see ``padding.py``).
    - ``unit``: channels ``[k*unit, (k+1)*unit)`` are removed together (attention heads).
    - ``parts``: the group splits into ``parts`` equal contiguous blocks that must lose
      equally many channels (GroupNorm groups, ``chunk``, grouped convs).
    - ``heads``: ``(module, num_heads, head_size)`` where this group is reshaped into heads.
    - ``multiple``: the kept channel count must be a multiple of this (``torch._grouped_mm``
      needs 16-byte row strides); the planner rounds the kept count up to it.
    - ``prunable``: False for channels that reach a model output, an ignored module or an
      op the analysis does not understand (then ``reason`` says why).
    """

    id: int
    size: int
    members: list[str]
    prunable: bool = True
    out_layers: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    norm_layers: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    in_layers: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    params: list[tuple[str, int, torch.Tensor]] = field(default_factory=list)
    pads: list[tuple[str, dict, int, torch.Tensor]] = field(default_factory=list)
    unit: int = 1
    parts: int = 1
    heads: list[tuple[str, int, int]] = field(default_factory=list)
    multiple: int = 1  # the kept count must be a multiple of this (a kernel's alignment, e.g. grouped_mm)
    reason: str = ""
    # (module, heads) -> first group channel of every head row: how many heads a removal drops
    head_rows: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The first producer's name (used for per-layer ratio patterns)."""
        if self.out_layers:
            return self.out_layers[0][0]
        if self.params:
            return self.params[0][0]
        return f"group{self.id}"

    @property
    def producers(self) -> list[str]:
        return [n for n, _ in self.out_layers] + [n for n, _, _ in self.params] + [n for n, _, _, _ in self.pads]

    def __repr__(self) -> str:
        flag = "" if self.prunable else f", frozen: {self.reason}"
        extra = (f", unit={self.unit}" if self.unit > 1 else "") + (f", parts={self.parts}" if self.parts > 1 else "")
        return f"ChannelGroup(id={self.id}, size={self.size}, members={self.members}{extra}{flag})"


def _resolve(cap: Capture) -> np.ndarray:
    """Component label per slot, after coarse blocks and head ties are enforced."""
    book = cap.book
    coarse = dict(book.coarse)
    coarse_ids = np.array(sorted(coarse), dtype=np.int64)
    for _ in range(8):
        a, b = book.edges()
        lab = components(book.next, a, b)
        frozen = lab[0]
        n_before = len(book._a)
        if len(coarse_ids):
            is_coarse = np.zeros(book.next, dtype=bool)
            is_coarse[coarse_ids] = True
            fine_count = np.bincount(lab[~is_coarse], minlength=book.next)
            by_comp = defaultdict(list)
            for c in coarse_ids:
                by_comp[lab[c]].append(int(c))
            for comp, cs in by_comp.items():
                blocks = [coarse[c] for c in cs]
                if comp == frozen or any((lab[bl] == frozen).any() for bl in blocks):
                    for c, bl in zip(cs, blocks):
                        if lab[c] != frozen or (lab[bl] != frozen).any():
                            book.freeze(bl)
                            book.freeze(np.array([c]))
                    continue
                if len({len(bl) for bl in blocks}) > 1:
                    for c, bl in zip(cs, blocks):
                        book.freeze(bl)
                        book.freeze(np.array([c]))
                    continue
                if fine_count[comp] > 0:
                    whole = all(book.internal(bl.reshape(1, -1), 1) for bl in blocks)
                    fine = np.nonzero((lab == comp) & ~is_coarse)[0]
                    if not whole:
                        book.freeze(fine)
                        for c, bl in zip(cs, blocks):
                            book.freeze(bl)
                            book.freeze(np.array([c]))
                        continue
                    # a per-head value (relative position bias column, head gate): the heads
                    # only go whole, so it is one more position of the head's first channel
                    if not (lab[fine] == lab[blocks[0][0]]).all():
                        book.join(fine, np.full(len(fine), blocks[0][0]))
                for bl in blocks[1:]:
                    if not np.array_equal(lab[bl], lab[blocks[0]]):
                        book.join(blocks[0], bl)
        for _, rows, _ in cap.ties:
            bad = (lab[rows] == frozen).any(axis=1) & ~(lab[rows] == frozen).all(axis=1)
            if bad.any():
                book.freeze(rows[bad])
        if len(book._a) == n_before:
            return lab
    a, b = book.edges()
    return components(book.next, a, b)


def build_groups(cap: Capture) -> list[ChannelGroup]:
    cap.book.note("attention-head and equal-block constraints")
    lab = _resolve(cap)
    cap.labels = lab  # slot -> component, for ``explain``
    frozen = lab[0]
    recs = list(cap.records.values())
    producers = [r for r in recs if r.kind in ("out", "emb", "param", "pad")]
    # channels that a pad inserted group with that pad's other channels, not with the rest of
    # the layers adding into them: the stage-2 stream of an option-A ResNet is the stage-1
    # stream (padded into the middle) plus channels no earlier layer has (the padded ends)
    pads = [r for r in recs if r.kind == "pad"]
    padded = np.unique(np.concatenate([lab[r.slots] for r in pads])) if pads else np.zeros(0, np.int64)
    # link the components of each producer: its channels form (part of) one group
    ea, eb = [], []
    for r in producers:
        cs = np.unique(lab[r.slots])
        cs = cs[cs != frozen]
        if r.kind != "pad" and len(padded):
            cs = np.setdiff1d(cs, padded, assume_unique=True)
        if len(cs) > 1:
            ea.append(cs[:-1])
            eb.append(cs[1:])
    n = int(lab.max()) + 1
    glab = components(n, np.concatenate(ea) if ea else np.zeros(0, np.int64),
                      np.concatenate(eb) if eb else np.zeros(0, np.int64))
    # channel order: components in order of first appearance among the producers
    allc = np.concatenate([lab[r.slots] for r in producers]) if producers else np.zeros(0, np.int64)
    allc = allc[allc != frozen]
    uniq, first = np.unique(allc, return_index=True)
    comps_in_order = uniq[np.argsort(first, kind="stable")]
    gs = glab[comps_in_order]
    gu, gfirst = np.unique(gs, return_index=True)
    group_order = gu[np.argsort(gfirst, kind="stable")]
    gmap = np.full(int(glab.max()) + 1 if len(glab) else 1, -1, dtype=np.int64)
    gmap[group_order] = np.arange(len(group_order))
    gid_arr = gmap[gs]
    srt = np.argsort(gid_arr, kind="stable")
    starts = np.searchsorted(gid_arr[srt], np.arange(len(group_order)))
    rank = np.empty(len(srt), dtype=np.int64)
    rank[srt] = np.arange(len(srt)) - starts[gid_arr[srt]]
    chan_of = np.full(n, -1, dtype=np.int64)  # component -> channel index in its group
    gid_of_comp = np.full(n, -1, dtype=np.int64)  # component -> group id
    chan_of[comps_in_order] = rank
    gid_of_comp[comps_in_order] = gid_arr
    sizes = np.bincount(gid_arr, minlength=len(group_order))
    groups = [ChannelGroup(id=k, size=int(sizes[k]), members=[]) for k in range(len(group_order))]
    weighty: set[int] = set()
    for r in recs:
        comps = lab[r.slots]
        gids = gid_of_comp[comps]
        gids[comps == frozen] = -1
        for gid in np.unique(gids[gids >= 0]).tolist():
            grp = groups[gid]
            pos = np.nonzero(gids == gid)[0]
            ch = chan_of[comps[pos]]
            counts = np.bincount(ch, minlength=grp.size)
            k = int(counts.max())
            o = np.argsort(ch, kind="stable")
            # rank of each position among its channel's positions (partial rotary: some
            # channels own two positions per head, others one; missing ones stay -1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.arange(len(o)) - starts[ch[o]]
            table = np.full((grp.size, k), -1, dtype=np.int64)
            table[ch[o], rank] = pos[o]
            idx = torch.from_numpy(table[:, 0].copy() if k == 1 else table)
            if r.kind == "out":
                grp.out_layers.append((r.name, idx))
            elif r.kind == "in":
                grp.in_layers.append((r.name, idx))
            elif r.kind == "norm":
                grp.norm_layers.append((r.name, idx))
            elif r.kind == "emb":
                grp.params.append((f"{r.name}.weight", 1, idx))
            elif r.kind == "pad":
                grp.pads.append((r.name, dict(r.extra["attrs"]), int(r.extra["before"]), idx))
            else:
                grp.params.append((r.name, r.dim, idx))
                if r.extra.get("layer"):
                    weighty.add(gid)  # a layer's weight held as a plain parameter (MoE experts, RNN)
            owner = r.name if r.kind != "param" else r.name.rpartition(".")[0] or r.name
            owner = owner or "<model>"
            if owner not in grp.members:
                grp.members.append(owner)

    def channels(slots):
        comps = lab[slots]
        if (comps == frozen).any():
            return None, None
        gs = set(gid_of_comp[comps].tolist())
        return (gs.pop() if len(gs) == 1 else -1), chan_of[comps].tolist()

    for module, rows, n_heads in cap.ties:
        per_group = defaultdict(list)
        for row in rows:
            g, chs = channels(row)
            if g is None:
                continue
            per_group[g].append(sorted(set(chs)))  # rotary pairs make a head's positions share channels
        for g, blocks in per_group.items():
            if g == -1:
                continue
            grp = groups[g]
            u = len(blocks[0])
            ok = all(min(b) % u == 0 and sorted(b) == list(range(min(b), min(b) + u)) for b in blocks) and \
                grp.size % u == 0 and grp.unit in (1, u)
            if not ok:
                grp.prunable, grp.reason = False, f"head split in {module} is not contiguous"
                continue
            grp.unit = u
            firsts = sorted({b[0] for b in blocks})  # packed q/k/v rows of one head share channels
            if n_heads % len(firsts):
                grp.prunable, grp.reason = False, f"heads of {module} do not map evenly onto channels"
                continue
            if (module, n_heads, u) not in grp.heads:  # q, k and v reshape alike
                grp.heads.append((module, n_heads, u))
                grp.head_rows[(module, n_heads)] = firsts
    for blocks in cap.parts:
        allc = np.concatenate([lab[b] for b in blocks])
        gs = set(gid_of_comp[allc[allc != frozen]].tolist())
        if not gs:
            continue
        if len(gs) > 1 or (allc == frozen).any():
            for g in gs:
                groups[g].prunable, groups[g].reason = False, "equal-removal blocks span several groups"
            continue
        info = [channels(b) for b in blocks]
        grp = groups[gs.pop()]
        if all(sorted(chs) == sorted(info[0][1]) for _, chs in info):
            continue  # every block holds the same channels (value * gate): equal removal is automatic
        p = len(blocks)
        span = grp.size // p if grp.size % p == 0 else 0
        ok = span > 0 and all(sorted(chs) == list(range(k * span, (k + 1) * span)) for k, (_, chs) in enumerate(
            sorted(info, key=lambda t: min(t[1]))))
        if not ok or (grp.parts not in (1, p)):
            grp.prunable, grp.reason = False, "equal-removal blocks do not tile the group"
            continue
        grp.parts = p
    for slots, m in cap.multiple:
        comps = lab[slots]
        for g in set(gid_of_comp[comps[comps != frozen]].tolist()):
            groups[g].multiple = math.lcm(groups[g].multiple, m)
    for grp in groups:
        if grp.prunable and not (grp.out_layers or grp.in_layers or grp.norm_layers or
                                 any(n.endswith(".weight") and d == 1 for n, d, _ in grp.params) or grp.id in weighty):
            grp.prunable, grp.reason = False, "only free tensors, no layer uses these channels"
        if grp.prunable and (grp.size // grp.parts) % grp.unit:
            grp.prunable, grp.reason = False, "heads straddle equal-removal blocks"
        if grp.prunable and grp.size // grp.parts <= grp.unit:
            grp.prunable, grp.reason = False, "only one unit per block: nothing can be removed"
    # rows of producers that are frozen, listed for information (and so that every output row
    # of every layer is in exactly one group)
    for r in recs:
        rows = np.nonzero(lab[r.slots] == frozen)[0] if r.kind == "out" else []
        if len(rows):
            groups.append(ChannelGroup(id=len(groups), size=len(rows), members=[r.name], prunable=False,
                                       out_layers=[(r.name, torch.from_numpy(rows.astype(np.int64)))],
                                       reason="channels reach a model output, an ignored module, hard-coded "
                                              "positions or an op without a rule"))
    return groups


def channel_groups(model: nn.Module, example_inputs, ignore=()) -> list[ChannelGroup]:
    """Analyse ``model`` on ``example_inputs`` and return its coupled channel groups.

    ``example_inputs``: a tensor, a tuple of positional tensors, or a dict of keyword
    inputs (HF models: ``input_ids=``, ``pixel_values=``); or several of them as
    ``Examples([...])`` (see ``examples.py``), when only channels prunable on every input
    are pruned. ``ignore``: module names (glob patterns allowed; a name also covers its
    submodules) or module classes whose channels must not be pruned; they run as opaque
    leaves.

    Each group has ``.id``, ``.size``, ``.members`` (module names), ``.prunable``,
    ``.out_layers``, ``.norm_layers``, ``.in_layers``, ``.params``, ``.pads`` (see
    ``ChannelGroup``). Every output row of every conv/linear that ran is in exactly one
    group; rows that cannot be pruned are in groups with ``prunable=False``.
    Raises ``TraceError`` when the forward cannot run under tracing.
    """
    cap = analyse(model, example_inputs, ignore)
    return cap.groups


def analyse(model: nn.Module, example_inputs, ignore=()) -> Capture:
    from .examples import as_list

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(ignore, (str, type)):
        ignore = (ignore,)
    cap = Capture(model, tuple(ignore))
    # several inputs run through one capture: a layer called again joins its channels with
    # those of the earlier calls and every freeze stays, so the groups are the union of the
    # couplings and the intersection of what is prunable
    traces = []
    for x in as_list(model, example_inputs):
        start = len(cap.trace)
        cap.run(x)
        traces.append(cap.trace[start:])
    if len(traces) > 1:
        _warn_divergence(traces)
    cap.groups = build_groups(cap)
    return cap


def divergence(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    """(module where the control flow splits, step of ``a``, step of ``b``) or None if equal."""
    if a == b:
        return None
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    sa = a[i] if i < len(a) else ("<end>", "end of the forward")
    sb = b[i] if i < len(b) else ("<end>", "end of the forward")

    def parent(step):
        mod, what = step
        # a leaf module step names the leaf itself; the branch that called it is in its parent
        return mod.rpartition(".")[0] or "<model>" if what == "module" else mod

    pa, pb = parent(sa), parent(sb)
    if pa == pb or "<end>" in (pa, pb):
        where = pa if pa != "<end>" else pb
    else:
        ca, cb = pa.split("."), pb.split(".")
        common = []
        for x, y in zip(ca, cb):
            if x != y or "<model>" in (x, y):
                break
            common.append(x)
        where = ".".join(common) or "<model>"

    def show(step):
        return f"module {step[0]}" if step[1] == "module" else f"op {step[1]} in {step[0]}"
    return where, show(sa), show(sb)


def _warn_divergence(traces) -> None:
    import warnings

    for k, t in enumerate(traces[1:], start=1):
        d = divergence(traces[0], t)
        if d is not None:
            warnings.warn(f"control flow depends on the input: the recorded graphs of example inputs 0 and {k} "
                          f"first diverge in module {d[0]!r} (input 0: {d[1]}; input {k}: {d[2]}); the analysis "
                          "keeps only channels prunable on every input", stacklevel=3)
            return
