"""Latency-aware structured pruning: prune to a *measured* speed-up on the user's device.

FLOPs do not predict CPU latency (ResNet-56 at ratio 0.5 removes 4x the FLOPs and runs
2x faster). Following the resource-constrained allocation idea of HALP (Shen et al.,
NeurIPS 2022), ``latency_slim`` works in three steps:

1. **Measure** a latency table: for every prunable channel group and a grid of widths,
   the model with only that group narrowed is timed against the dense model on the given
   backend, batch size and thread count. Each entry is the *ratio* to the dense model
   measured in interleaved rounds (medians), so machine-load drift between entries cancels.
   Tables are cached on disk under a key of model structure, input shapes, device,
   backend, batch and threads.
2. **Allocate**: one grid width per group so that the predicted latency (dense minus the
   sum of the measured savings) meets the budget while the least importance (any prunekit
   criterion, mean-normalised per group) is removed: a multiple-choice knapsack, solved
   exactly by dynamic programming over the saving, as in HALP (``solver="greedy"``, the
   step-by-step rule the earlier benchmarks ran, is kept). Only grid widths that the table shows are worth it
   are used: a width that is no faster than a wider one is dropped, which is how widths
   snap to the SIMD/tile multiples this machine rewards, found by measurement.
3. **Verify**: the slim model is timed against the dense model in the same run. If the
   achieved speed-up misses the request by more than half the tolerance, the allocation is
   redone at a corrected budget, up to ``max_iters`` times: every timing is a point of the
   curve from the table's predicted latency to the measured one (the dense and the floor
   model are two more), and the next budget is interpolated on that curve
   (``next_budget``), so a model whose fixed per-op costs make the table over-promise is
   corrected in one or two steps, not by 10 % a step. The closest result is returned, never
   one that does not run.

Before any table is measured, the *floor* model (every prunable group at its narrowest
grid width) is timed once against the dense model. If even that misses the request by more
than the tolerance, ``UnreachableSpeedupError`` says so and names the most this model can
reach on this backend, instead of minutes of planning that end with a model that is slower
than asked.

The table, the allocation (width per group) and requested vs achieved speed-up are stored
on the slim model (``latency_report``) and written by ``save_pruned`` as ``latency.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..trace.groups import ChannelGroup, channel_groups
from .importance import group_scores
from .planner import choose
from ..surgery.slim import slim_with_plan
from .sensitivity import check_data, sensitivity_table

REPORT_KEY = "_prunekit_latency"
# how removed importance is counted (``latency_slim``)
COSTS = ("channels", "params", "absolute", "share", "sensitivity")
SOLVERS = ("knapsack", "greedy")  # how widths are allocated (see ``allocate``); the first is the default


_NORMALISE = {"channels": True, "params": True, "absolute": False, "share": "share", "sensitivity": True}


class UnreachableSpeedupError(ValueError):
    """The requested speed-up exceeds what narrowing every prunable group can give."""


def _input_shapes(x):
    if isinstance(x, dict):
        return {k: list(v.shape) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [list(v.shape) for v in x]
    return list(x.shape)


def table_key(model: nn.Module, x, backend: str, threads: int) -> str:
    """Cache key: structure (module tree and parameter shapes), inputs, device, backend, threads."""
    sd = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    dev = str(next(model.parameters()).device) if any(True for _ in model.parameters()) else "cpu"
    blob = json.dumps({"tree": repr(model), "sd": sd, "inputs": _input_shapes(x), "device": dev,
                       "backend": backend, "threads": threads, "torch": torch.__version__,
                       "cpu": torch.backends.cpu.get_cpu_capability()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "latency"


def width_grid(g: ChannelGroup, fractions=(0.75, 0.5, 0.375, 0.25, 0.125), lanes: int = 8) -> list[int]:
    """Kept units per part to measure: fractions of the full width, and the multiples of
    the SIMD width next to them (measured, not assumed, to be faster)."""
    per = g.size // g.unit // g.parts
    out = {per}
    for f in fractions:
        k = max(1, math.ceil(per * f))
        out.add(k)
        if g.unit == 1 and per > lanes:
            for m in (k // lanes * lanes, -(-k // lanes) * lanes):
                if 1 <= m < per:
                    out.add(m)
    return sorted(out)


def _plan_for(g: ChannelGroup, scores, kp: int) -> dict:
    units = g.size // g.unit
    return {g.id: choose(g, scores[g.id], kp)} if kp * g.parts < units else {}


def roles_of(groups, scores) -> dict[str, list[ChannelGroup]]:
    """Prunable groups by role (the same layer type in every block, see ``planner.role``).
    A role is measured and narrowed as one: narrowing one 16-channel conv of ResNet-56
    changes its latency by less than the timing noise, narrowing all nine at once does not."""
    from .planner import role

    out: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        if g.prunable and g.id in scores:
            out.setdefault("{}|{}|{}|{}".format(*role(g)), []).append(g)
    return out


def _role_plan(members, scores, kp) -> dict:
    plan = {}
    for g in members:
        plan.update(_plan_for(g, scores, kp))
    return plan


def measure_table(model, x, groups, scores, backend="torch", threads=1, rounds=3, min_run_time=0.03,
                  log=None) -> dict:
    """{role: {kept units per part: latency ratio to dense}} (see the module doc). A role's
    widths are timed in one interleaved session with the dense model (dense, w1, w2, ...
    every round), so the dense model is timed once per round for the whole row, not once per
    width: at batch 64 the dense forward is the largest cost of building the table."""
    from ...metrics.latency import compare_latency

    table = {}
    for name, members in roles_of(groups, scores).items():
        g0 = members[0]
        per = g0.size // g0.unit // g0.parts
        cands = {}
        for kp in width_grid(g0):
            if kp == per:
                continue
            try:
                cands[kp] = slim_with_plan(model, x, _role_plan(members, scores, kp), groups=groups,
                                           validate=False).eval()
            except Exception:  # noqa: BLE001 - a width the model cannot take is simply not offered
                continue
        row = {per: 1.0}
        if cands:
            try:
                t = compare_latency({"dense": model, **{f"w{kp}": m for kp, m in cands.items()}}, x,
                                    num_threads=threads, rounds=rounds, min_run_time=min_run_time, backend=backend,
                                    warmup=1)
                row.update({kp: t[f"w{kp}"] / t["dense"] for kp in cands})
            except Exception:  # noqa: BLE001 - e.g. one width fails to export: time them one by one
                for kp, m in cands.items():
                    try:
                        t = compare_latency({"dense": model, "cand": m}, x, num_threads=threads, rounds=rounds,
                                            min_run_time=min_run_time, backend=backend, warmup=1)
                    except Exception:  # noqa: BLE001
                        continue
                    row[kp] = t["cand"] / t["dense"]
        table[name] = row
        if log:
            log(f"latency table: {name.split('|')[0]} x{len(members)}: "
                + ", ".join(f"{k}:{v:.3f}" for k, v in sorted(row.items())))
    return table


def useful_widths(row: dict) -> list[int]:
    """Grid widths worth using, widest first: each must be measurably faster than every
    wider one kept (otherwise it only costs accuracy)."""
    kept, best = [], math.inf
    for kp in sorted(row, reverse=True):
        if row[kp] < best - 2e-3 or not kept:
            kept.append(kp)
            best = row[kp]
    return kept


def _loss(g: ChannelGroup, s: torch.Tensor, kp: int, normalise: bool | str = True) -> float:
    """Importance removed when keeping kp units per part. ``normalise``: True, scores divided
    by their mean (every channel alike); False, taken as they are (criteria in one unit across
    groups, e.g. Taylor's estimate of the loss change); ``"share"``, minus the log of the share
    of the group's importance that is kept (see ``latency_slim(cost="share")``)."""
    us = s.float().reshape(-1, g.unit).sum(1)
    if normalise is True:
        us = us / us.mean().clamp(min=1e-12)
    per = len(us) // g.parts
    removed = 0.0
    for p in range(g.parts):
        removed += float(torch.sort(us[p * per:(p + 1) * per]).values[: per - kp].sum())
    if normalise == "share":
        total = float(us.sum())
        return -math.log(max(total - removed, 1e-12 * total, 1e-30) / max(total, 1e-30))
    return removed


def param_mass(model: nn.Module, g: ChannelGroup) -> float:
    """Weights carried per channel of ``g``: rows of its producers plus columns of its consumers.
    A residual-stream channel feeds every block, an inner channel one conv in and one out."""
    mods = dict(model.named_modules())
    tot = 0.0
    for members, dim in ((g.out_layers, 0), (g.in_layers, 1)):
        for name, idx in members:
            w = getattr(mods.get(name), "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() > dim:
                tot += w.numel() / w.shape[dim] * int((idx >= 0).sum())
    return max(tot / g.size, 1.0)


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be 'knapsack' or 'greedy', got {solver!r}")


def min_width(g: ChannelGroup, max_ratio: float = 1.0) -> int:
    """Fewest units per part a group may keep when at most ``max_ratio`` of it is removed.
    Why a cap: importance counts a layer's last channels like any others, so a layer that is
    expensive to run (the first conv at full resolution) is cut to one channel, a bottleneck
    no fine-tune undoes. ``max_ratio=1.0`` (no cap) still keeps one unit per part."""
    per = g.size // g.unit // g.parts
    return max(1, math.ceil(per * (1.0 - max_ratio) - 1e-9))


def allowed_widths(table: dict, roles: dict, max_ratio: float = 1.0) -> dict[str, list[int]]:
    """{role: the widths the allocation may give it}: measurably faster than every wider one
    (``useful_widths``) and within ``max_ratio`` (``min_width``), widest first."""
    return {name: [kp for kp in useful_widths(row) if kp >= min_width(roles[name][0], max_ratio)]
            for name, row in table.items() if name in roles}


def allocate(groups, scores, table, target_ratio: float, mass: dict | None = None,
             normalise: bool = True, solver: str = "knapsack", max_ratio: float = 1.0,
             loss_table: dict | None = None) -> dict[str, int]:
    """Kept units per part for every role so that the predicted latency ratio (1 minus the
    sum of measured savings) is at most ``target_ratio`` at the least importance lost.
    ``mass`` ({group id: weight}, e.g. ``param_mass``) scales each group's importance loss;
    without it every channel counts alike, whatever it is wired to. ``normalise=False``
    compares raw scores across groups; ``normalise="share"`` counts minus the log of the kept share
    of each group's importance (see ``_loss``).

    solver: ``"knapsack"`` (default) solves the multiple-choice knapsack exactly
    (``choose_widths``), as HALP does; ``"greedy"`` narrows, one grid step at a time, the
    role with the least importance lost per latency saved: optimal only when every role's
    savings curve is convex, which measured tables often are not (a SIMD multiple can save
    more than the step before it), and what the earlier benchmarks ran.

    max_ratio: the most of any role's width that may be removed (``min_width``).

    loss_table: {role: {width: loss}} measured instead of computed from the scores (the
    sensitivity table, ``sensitivity.sensitivity_table``); it replaces the importance lost."""
    check_solver(solver)
    mass = mass or {}
    roles = roles_of(groups, scores)
    options = allowed_widths(table, roles, max_ratio)

    def lost(name, kp):
        if loss_table is not None:
            return loss_table[name][kp]
        return sum(_loss(g, scores[g.id], kp, normalise) * mass.get(g.id, 1.0) for g in roles[name])

    if solver == "knapsack":
        items = {name: [(kp, 1.0 - table[name][kp], lost(name, kp)) for kp in opts] for name, opts in options.items()}
        return choose_widths(items, 1.0 - target_ratio)
    state = {name: 0 for name in options}  # index into options (0 = full width)
    pred = 1.0
    while pred > target_ratio:
        best = None
        for name, i in state.items():
            if i + 1 >= len(options[name]):
                continue
            a, b = options[name][i], options[name][i + 1]
            saved = table[name][a] - table[name][b]
            rate = (lost(name, b) - lost(name, a)) / max(saved, 1e-6)
            if best is None or rate < best[0]:
                best = (rate, name, saved)
        if best is None:
            break  # nothing left to narrow
        _, name, saved = best
        state[name] += 1
        pred -= saved
    return {name: options[name][i] for name, i in state.items()}


def choose_widths(items: dict, need: float, resolution: int = 2000) -> dict:
    """Exact multiple-choice knapsack: one option per role, ``items = {role: [(width, saving,
    loss), ...]}`` (saving and loss against full width), total saving >= ``need`` at the least
    total loss. Savings are counted in 1/``resolution`` of the dense latency, rounded *down*,
    so a chosen set meets the budget on the table. Dynamic programming over the saving
    (O(roles x options x resolution)). If no choice reaches ``need``, every role takes its
    largest saving (the most the table offers; the verify loop then reports the shortfall)."""
    import numpy as np

    names = list(items)
    if not names:
        return {}
    cap = max(0, math.ceil(need * resolution - 1e-9))
    if cap == 0:  # nothing to save: full width everywhere (the zero-saving option, else the least loss)
        return {n: min(items[n], key=lambda o: (o[1] > 0, o[2]))[0] for n in names}
    inf = float("inf")
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    back = []  # per role: (option index, previous saving bucket) for every bucket
    for n in names:
        new = np.full(cap + 1, inf)
        pick = np.full(cap + 1, -1)
        prev = np.full(cap + 1, -1)
        for j, (_, sav, loss) in enumerate(items[n]):
            b = max(0, int(math.floor(sav * resolution + 1e-9)))
            cand = dp + loss
            # bucket s moves to s + b; every bucket from cap - b on lands on the cap (the budget met)
            if b < cap:
                better = cand[: cap - b] < new[b:cap]
                d = np.nonzero(better)[0]
                new[d + b], pick[d + b], prev[d + b] = cand[d], j, d
            lo = max(cap - b, 0)
            i = lo + int(np.argmin(cand[lo:]))
            if cand[i] < new[cap]:
                new[cap], pick[cap], prev[cap] = cand[i], j, i
        dp = new
        back.append((pick, prev))
    if not np.isfinite(dp[cap]):
        return {n: max(items[n], key=lambda o: (o[1], -o[2]))[0] for n in names}
    out, s = {}, cap
    for n, (pick, prev) in zip(reversed(names), reversed(back)):
        out[n] = items[n][int(pick[s])][0]
        s = int(prev[s])
    return {n: out[n] for n in names}


def predicted_ratio(table: dict, alloc: dict) -> float:
    """The table's additive prediction of an allocation's latency ratio to dense."""
    return 1.0 - sum(1.0 - table[name][kp] for name, kp in alloc.items() if name in table)


def floor_widths(roles: dict, table: dict, max_ratio: float = 1.0) -> dict:
    """The narrowest measured width of every role that ``max_ratio`` allows (the floor model)."""
    out = {}
    for name, row in table.items():
        if name in roles:
            lo = min_width(roles[name][0], max_ratio)
            out[name] = min((k for k in row if k >= lo), default=max(row))
    return out


def bracket(points, want: float, faster: bool) -> float:
    """The predicted ratio of the timed point closest to ``want`` that was faster than asked
    (``faster``; 0.0 if none) or slower than asked (the dense model at worst)."""
    if faster:
        return max((p for p in points if p[1] <= want), key=lambda p: p[1], default=(0.0, 0.0))[0]
    return min((p for p in points if p[1] > want), key=lambda p: p[1])[0]


def next_budget(points, want: float) -> float:
    """The predicted latency ratio to ask the allocation for next, so that the measured ratio
    is ``want``. ``points``: (predicted, measured) latency ratios timed so far, the dense model
    (1, 1) among them. Between the closest point that was too slow and the closest that was
    too fast, the predicted -> measured curve is interpolated linearly (regula falsi); with
    nothing too fast yet, the line from the dense model through the closest too-slow point is
    extended (a fixed share of latency that no narrowing removes makes that line flatter than
    the table assumes, so the step grows to match)."""
    a = min((p for p in points if p[1] > want), key=lambda p: p[1])
    fast = [p for p in points if p[1] <= want]
    if fast:
        b = max(fast, key=lambda p: p[1])
        if a[1] - b[1] <= 1e-9:
            return b[0]
        return a[0] + (a[1] - want) / (a[1] - b[1]) * (b[0] - a[0])  # a fraction of the way from a to b
    if a[1] >= 1.0 - 1e-9:  # nothing measured faster than dense: halve the narrowest ask
        return min(p[0] for p in points) / 2
    return max(0.0, 1.0 + (want - 1.0) * (1.0 - a[0]) / (1.0 - a[1]))


def _describe_setting(example_inputs, backend, threads) -> str:
    return f"on {backend} with inputs {_input_shapes(example_inputs)} and {threads} thread(s)"


def floor_speedup(model, example_inputs, groups, scores, backend="torch", threads=1, rounds=5,
                  max_ratio: float = 1.0) -> float | None:
    """Measured speed-up of the narrowest model the table could lead to (every role at its
    narrowest grid width that ``max_ratio`` allows); None when that model cannot be built
    (then the table decides)."""
    from ...metrics.latency import compare_latency

    plan = {}
    for members in roles_of(groups, scores).values():
        lo = min_width(members[0], max_ratio)
        plan.update(_role_plan(members, scores, min(k for k in width_grid(members[0]) if k >= lo)))
    try:
        floor = slim_with_plan(model, example_inputs, plan, groups=groups, validate=False).eval()
    except Exception:  # noqa: BLE001 - measuring the table will find the widths that work
        return None
    t = compare_latency({"dense": model, "floor": floor}, example_inputs, num_threads=threads, rounds=rounds,
                        min_run_time=0.05, backend=backend)
    return t["dense"] / t["floor"]


def check_reachable(model, example_inputs, groups, scores, speedup, backend, threads, max_ratio, tolerance):
    """The floor model's measured speed-up (None if it cannot be built), after refusing with
    ``UnreachableSpeedupError`` a model with nothing to prune or a request the floor misses by
    more than ``tolerance``: before any table is measured or any model trained."""
    where = _describe_setting(example_inputs, backend, threads)
    if not roles_of(groups, scores):
        raise UnreachableSpeedupError(f"speedup {speedup:g}x is not reachable: the model has no prunable channel "
                                      "group (all are frozen or ignored), so narrowing cannot make it faster")
    ceiling = floor_speedup(model, example_inputs, groups, scores, backend, threads, max_ratio=max_ratio)
    if ceiling is not None and ceiling < speedup * (1 - tolerance):
        capped = f" allowed by max_ratio={max_ratio:g}" if max_ratio < 1.0 else ""
        raise UnreachableSpeedupError(
            f"speedup {speedup:g}x is not reachable {where}: with every prunable group at its narrowest width"
            f"{capped} the model runs only {ceiling:.2f}x faster (measured); ask for at most {ceiling:.2f}x")
    return ceiling


def _json_rows(table: dict) -> dict:
    """{role: {width: value}} with the widths as strings, as JSON stores them."""
    return {name: {str(k): v for k, v in row.items()} for name, row in table.items()}


def _cached_table(cache: Path, key: str, model, x, groups, scores, backend, threads, log) -> tuple[dict, bool]:
    """``(table, measured)``: the table stored under ``key`` in ``cache``, or a freshly measured
    one, written atomically so an interrupted run never leaves half a table to be trusted."""
    path = cache / f"{key}.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            return {r: {int(k): float(v) for k, v in row.items()} for r, row in raw["table"].items()}, False
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged cache entry is re-measured, not trusted
    table = measure_table(model, x, groups, scores, backend, threads, log=log)
    from ...foundations.io import atomic_write_json

    atomic_write_json(path, {"key": key, "backend": backend, "threads": threads, "inputs": _input_shapes(x),
                             "table": table})
    return table, True


def latency_slim(model: nn.Module, example_inputs, speedup: float, criterion="l1", backend: str = "torch",
                 threads: int | None = None, ignore=(), cache_dir=None, max_iters: int = 6, tolerance: float = 0.1,
                 verify_rounds: int = 7, data=None, log=None, cost: str = "channels",
                 solver: str = "knapsack", max_ratio: float = 1.0) -> nn.Module:
    """A slim copy of ``model`` that runs ``speedup`` times faster than it on this machine
    (``example_inputs`` fix the batch size), within ``tolerance``, or as close as it got.

    cost: how the importance a narrowing removes is counted. ``"channels"``: mean-normalised
    scores, every channel alike. ``"share"``: minus the log of the share of each group's
    importance kept, summed over groups (maximising the product of the kept shares): halving
    a layer costs the same in every layer, and each further halving costs as much again, so a
    layer that is expensive to run is narrowed more than others, and to one channel only where
    its latency alone pays for that (on VGG-11 w0.125 / 28x28 digits it still does: the first
    conv, at full resolution, goes to 1 of 8 channels at 2x, as with "channels").
    ``"params"``: each channel weighted by the weights it carries (``param_mass``), so a
    residual stream feeding every block is not cut first just because it is narrow and cheap
    to time. ``"absolute"``: the scores as they are, compared across groups; meant for
    ``criterion="taylor"`` (an estimate of the loss change, one unit for every group, as in
    HALP), not for magnitudes whose scale differs per layer. ``"sensitivity"``: no proxy at
    all: the loss increase of every role narrowed alone to every width, measured on
    ``data=(inputs, targets)`` (``sensitivity.py``); the criterion then only picks which
    channels go inside a width.

    solver: ``"knapsack"`` (exact, default) or ``"greedy"`` (see ``allocate``).

    max_ratio: the most of any group's width that may be removed, in (0, 1] (1.0: no cap, one
    channel per part at least), as Torch-Pruning's ``max_pruning_ratio``; see ``min_width``."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if cost == "sensitivity":
        check_data(data)
    check_solver(solver)
    if not isinstance(max_ratio, (int, float)) or not 0.0 < max_ratio <= 1.0:
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}")
    from ...metrics.latency import compare_latency

    if not isinstance(speedup, (int, float)) or speedup <= 1.0:
        raise ValueError(f"speedup must be a number > 1, got {speedup!r}")
    threads = threads or torch.get_num_threads()
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    groups = channel_groups(model, example_inputs, ignore=ignore)
    scores = group_scores(model, groups, criterion, data=data)
    where = _describe_setting(example_inputs, backend, threads)
    ceiling = check_reachable(model, example_inputs, groups, scores, speedup, backend, threads, max_ratio, tolerance)
    phases = {"trace_and_floor": time.perf_counter() - t0}
    key = table_key(model, example_inputs, backend, threads)
    t1 = time.perf_counter()
    table, measured = _cached_table(Path(cache_dir) if cache_dir else default_cache_dir(), key, model,
                                    example_inputs, groups, scores, backend, threads, log)
    phases["table"] = time.perf_counter() - t1
    roles = roles_of(groups, scores)
    mass = ({g.id: param_mass(model, g) for members in roles.values() for g in members} if cost == "params"
            else None)
    sens = None
    if cost == "sensitivity":
        t1 = time.perf_counter()
        sens = sensitivity_table(model, example_inputs, groups, allowed_widths(table, roles, max_ratio),
                                 lambda name, kp: _role_plan(roles[name], scores, kp), data)
        phases["sensitivity"] = time.perf_counter() - t1
    want, best, history = 1.0 / speedup, None, []
    # Known (predicted, measured) latency ratios: the dense model, and the floor model timed above.
    # The table's prediction is additive; the real model is not (fixed per-op costs at batch 1 do
    # not shrink with width), so each timing is a point of the predicted -> measured curve and the
    # next budget is read off that curve (``next_budget``), not off the table alone.
    points = [(1.0, 1.0)]
    if ceiling is not None:
        points.append((predicted_ratio(table, floor_widths(roles, table, max_ratio)), 1.0 / ceiling))
    # Aim at half the tolerance: a result accepted at the tolerance's edge (0.90x of the request)
    # misses it on any later timing half the time, since timings on a shared machine differ by a
    # few % between calls. The closest model is kept; the warning below uses the full tolerance.
    aim, seen, target = tolerance / 2, {}, want

    def allocate_at(budget):
        alloc = allocate(groups, scores, table, budget, mass, normalise=_NORMALISE[cost], solver=solver,
                         max_ratio=max_ratio, loss_table=sens)
        return alloc, tuple(sorted(alloc.items()))

    t1 = time.perf_counter()
    for it in range(max_iters):
        alloc, key_alloc = allocate_at(target)
        for _ in range(4):
            if key_alloc not in seen:
                break
            # the budget moved too little to change the widths: halve the gap to the closest
            # timed point on the other side of the request (allocation only, nothing is timed)
            target = (target + bracket(points, want, faster=seen[key_alloc] < speedup)) / 2
            alloc, key_alloc = allocate_at(target)
        if key_alloc in seen:
            break  # no untimed allocation lies between the timed ones
        plan = {}
        for name, kp in alloc.items():
            plan.update(_role_plan(roles[name], scores, kp))
        slim_model = slim_with_plan(model, example_inputs, plan, groups=groups).eval()
        t = compare_latency({"dense": model, "slim": slim_model}, example_inputs, num_threads=threads,
                            rounds=verify_rounds, min_run_time=0.05, backend=backend)
        achieved = t["dense"] / t["slim"]
        seen[key_alloc] = achieved
        pred = predicted_ratio(table, alloc)
        points.append((pred, 1.0 / achieved))
        if best is None or abs(achieved / speedup - 1) < abs(best[1] / speedup - 1):
            best = (slim_model, achieved, alloc, plan)
        history.append({"iteration": it, "budget_ratio": target, "predicted_ratio": pred, "achieved": achieved,
                        "dense_ms": t["dense"], "slim_ms": t["slim"]})
        if log:
            log(f"latency-aware: iteration {it}: budget {target:.3f} of dense (table predicts {pred:.3f}) "
                f"-> achieved {achieved:.2f}x (requested {speedup:.2f}x)")
        if abs(achieved / speedup - 1) <= aim:
            break
        target = next_budget(points, want)
    phases["verify"] = time.perf_counter() - t1
    slim_model, achieved, alloc, plan = best
    if abs(achieved / speedup - 1) > tolerance:
        import warnings

        warnings.warn(f"latency-aware: requested {speedup:g}x, best achieved {achieved:.2f}x {where} after "
                      f"{len(history)} iterations (the latency table's prediction is off for this model); "
                      "the closest model is returned", stacklevel=2)
    report = {"requested": speedup, "achieved": achieved, "max_speedup_measured": ceiling, "cost": cost,
              "solver": solver, "max_ratio": max_ratio, "backend": backend, "threads": threads,
              "inputs": _input_shapes(example_inputs), "criterion": criterion if isinstance(criterion, str) else
              getattr(criterion, "__name__", "callable"),
              "table_cached": not measured, "table_key": key, "planning_seconds": time.perf_counter() - t0,
              "phase_seconds": phases,
              "iterations": history,
              "allocation": {g.name: {"group": g.id, "kept": kp * g.unit * g.parts, "of": g.size}
                             for name, kp in alloc.items() for g in roles[name]},
              "table": _json_rows(table)}
    if sens is not None:
        report["sensitivity"] = _json_rows(sens)
    object.__setattr__(slim_model, REPORT_KEY, report)
    object.__setattr__(slim_model, "_prunekit_latency_selection", (plan, groups))
    model.train(was_training)
    return slim_model


def latency_plan(model: nn.Module, example_inputs, speedup: float, **kw):
    """The latency-aware *selection* for methods that prune their own way (TPP regularises the
    selected channels to zero before removing them): ``(removal plan, groups, report)``, with
    the plan as ``{group id: LongTensor of channels to remove}`` for ``groups``."""
    s = latency_slim(model, example_inputs, speedup, **kw)
    plan, groups = getattr(s, "_prunekit_latency_selection")
    return plan, groups, latency_report(s)


def latency_report(model: nn.Module) -> dict | None:
    """The latency table, allocation and requested/achieved speed-up of a latency-aware slim model."""
    return getattr(model, REPORT_KEY, None)
