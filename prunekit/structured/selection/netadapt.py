"""NetAdapt (Yang et al., ECCV 2018): narrow one role at a time, keep the proposal that
fine-tunes best, until a *measured* speed-up is reached.

Why a second latency-aware planner: ``latency_slim`` allocates every width at once from scores
read off the dense model. On VGG-11 w0.125 / 28x28 digits every one-shot cost (proxies, a cap,
even the measured one-role sensitivity) cut the first conv to 1 of 8 channels at 2x and lost to
uniform L1 at equal latency (benchmarks/PROTOCOL.md 4.5). NetAdapt decides one step at a time on
the network as fine-tuned so far, and judges each proposal by its accuracy *after* a short
fine-tune, so a bottleneck shows up as lost accuracy before it is taken.

Iteration i:

1. the latency to remove: ``first_step * decay**i`` of the dense model's (the resource-reduction
   schedule), never more than is left to the request (see 4.);
2. one proposal per role: the widest width of its measured table row that removes at least that
   much from its current width (else the most it can give), channels chosen by ``criterion`` on
   the current weights;
3. each proposal is fine-tuned for a few steps (``short_finetune``) and scored on held-out
   training samples (``score``); the best is kept, with its fine-tuned weights;
4. the kept model is timed against the dense one; the loop stops once it is within half the
   tolerance of the request. What is left to remove is read in the table's units, scaled by
   how far the measured savings so far differ from the table's, so the last steps do not
   overshoot on a machine where fixed per-op costs make the table's additive prediction off.

The latency table, its cache and the unreachable-request check are ``latency_aware``'s. The
training and scoring are callables, so this module needs no trainer (``methods/netadapt.py``
builds them from the runner's data and fine-tune recipe).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch.nn as nn

from ..surgery.slim import slim_with_plan
from ..trace.groups import channel_groups
from . import latency_aware as la
from .importance import group_scores


def check_schedule(first_step: float, decay: float) -> None:
    if not 0.0 < first_step < 1.0:
        raise ValueError(f"first_step is a fraction of the dense latency, in (0, 1); got {first_step!r}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay!r}")


def proposal_width(row: dict, allowed: list[int], current: int, delta: float) -> int | None:
    """The widest allowed width below ``current`` whose table saving from ``current`` is at least
    ``delta``; else the narrowest (the most this role can give); None if it can give nothing."""
    narrower = [kp for kp in allowed if kp < current and row[current] - row[kp] > 0]
    if not narrower:
        return None
    enough = [kp for kp in narrower if row[current] - row[kp] >= delta - 1e-12]
    return max(enough) if enough else min(narrower)


def netadapt_slim(model: nn.Module, example_inputs, speedup: float, short_finetune, score, criterion="l1",
                  backend: str = "torch", threads: int | None = None, ignore=(), cache_dir=None,
                  first_step: float = 0.05, decay: float = 0.96, tolerance: float = 0.1, verify_rounds: int = 7,
                  max_ratio: float = 1.0, max_iters: int = 200, data=None, log=None) -> nn.Module:
    """A slim, short-term fine-tuned copy of ``model`` that runs ``speedup`` times faster on this
    machine (see the module doc). ``short_finetune(model, iteration) -> steps`` trains a proposal
    in place (the same samples for every proposal of one iteration); ``score(model)`` returns a
    comparable value, higher is better (e.g. ``(accuracy, -loss)`` on held-out training samples).
    ``data``: labelled samples for ``criterion="taylor"``. The report (``latency_report``) lists
    every iteration's proposals and scores, and the short-term steps spent."""
    import torch

    from ...metrics.latency import compare_latency

    check_schedule(first_step, decay)
    if not isinstance(speedup, (int, float)) or speedup <= 1.0:
        raise ValueError(f"speedup must be a number > 1, got {speedup!r}")
    if not isinstance(max_ratio, (int, float)) or not 0.0 < max_ratio <= 1.0:
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}")
    threads = threads or torch.get_num_threads()
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    groups = channel_groups(model, example_inputs, ignore=ignore)
    scores = group_scores(model, groups, criterion, data=data)
    roles = la.roles_of(groups, scores)
    where = la._describe_setting(example_inputs, backend, threads)
    ceiling = la.check_reachable(model, example_inputs, groups, scores, speedup, backend, threads, max_ratio,
                                 tolerance)
    key = la.table_key(model, example_inputs, backend, threads)
    table, measured = la._cached_table(Path(cache_dir) if cache_dir else la.default_cache_dir(), key, model,
                                       example_inputs, groups, scores, backend, threads, log)
    allowed = la.allowed_widths(table, roles, max_ratio)
    # roles are followed by their groups' producer names: a slim model renames no module, but its
    # group sizes (part of a role's name) change with every narrowing
    members = {name: [g.name for g in gs] for name, gs in roles.items() if name in allowed}
    widths = {name: max(table[name]) for name in members}
    want = 1.0 / speedup
    current, history = model, []
    pred, ratio = 1.0, 1.0  # the table's prediction and the measured latency ratio of ``current``
    steps = {"kept": 0, "total": 0}
    for it in range(max_iters):
        if 1.0 / ratio >= speedup * (1 - tolerance / 2):
            break
        # what is left, in the table's units: the table's savings so far scaled to the measured
        # ones (fixed per-op costs make the two differ), so the last steps do not overshoot
        scale = min(max((1.0 - ratio) / (1.0 - pred), 0.25), 4.0) if pred < 1.0 - 1e-9 else 1.0
        delta = min(first_step * decay ** it, (ratio - want) / scale)
        cur_groups = {g.name: g for g in channel_groups(current, example_inputs, ignore=ignore)}
        cur_scores = group_scores(current, list(cur_groups.values()), criterion, data=data)
        best, tried = None, []
        for name, names in members.items():
            kp = proposal_width(table[name], allowed[name], widths[name], delta)
            if kp is None:
                continue
            plan = {}
            for n in names:
                plan.update(la._plan_for(cur_groups[n], cur_scores, kp))
            try:
                cand = slim_with_plan(current, example_inputs, plan, groups=list(cur_groups.values()))
            except Exception:  # noqa: BLE001 - a width this model cannot take is not proposed
                continue
            cand.train()
            n_steps = int(short_finetune(cand, it) or 0)
            steps["total"] += n_steps
            cand.eval()
            s = score(cand)
            saving = table[name][widths[name]] - table[name][kp]
            tried.append({"role": name, "kept": kp, "saving": saving, "score": s})
            if best is None or (s, saving) > (best[0], best[3]):
                best = (s, name, kp, saving, cand, n_steps)
        if best is None:
            break  # every role is at its narrowest: the closest model is returned below
        s, name, kp, saving, current, n_steps = best
        widths[name] = kp
        steps["kept"] += n_steps
        pred = la.predicted_ratio(table, widths)
        t = compare_latency({"dense": model, "slim": current}, example_inputs, num_threads=threads,
                            rounds=verify_rounds, min_run_time=0.05, backend=backend)
        ratio = t["slim"] / t["dense"]
        history.append({"iteration": it, "delta": delta, "chosen": name, "kept": kp, "score": s,
                        "predicted_ratio": pred, "achieved": 1.0 / ratio, "proposals": tried})
        if log:
            log(f"netadapt: iteration {it}: -{delta:.3f} of dense latency: {name.split('|')[0]} -> {kp} "
                f"(score {s}, {len(tried)} proposals) -> {1.0 / ratio:.2f}x (requested {speedup:.2f}x)")
    if current is model:  # nothing could be narrowed: never hand back (and annotate) the caller's model
        import copy

        current = copy.deepcopy(model)
    achieved = 1.0 / ratio
    if abs(achieved / speedup - 1) > tolerance:
        import warnings

        warnings.warn(f"netadapt: requested {speedup:g}x, achieved {achieved:.2f}x {where}", stacklevel=2)
    final_groups = {g.name: g for g in channel_groups(current, example_inputs, ignore=ignore)}
    report = {"requested": speedup, "achieved": achieved, "max_speedup_measured": ceiling, "method": "netadapt",
              "cost": "netadapt", "backend": backend, "threads": threads,
              "inputs": la._input_shapes(example_inputs), "criterion": criterion if isinstance(criterion, str)
              else getattr(criterion, "__name__", "callable"), "first_step": first_step, "decay": decay,
              "max_ratio": max_ratio, "table_cached": not measured, "table_key": key,
              "planning_seconds": time.perf_counter() - t0, "iterations": history, "short_term_steps": steps,
              "allocation": {g.name: {"group": g.id, "kept": widths[name] * g.unit * g.parts, "of": g.size}
                             for name, gs in roles.items() if name in widths for g in gs},
              "final_widths": {n: final_groups[n].size for ns in members.values() for n in ns if n in final_groups},
              "table": la._json_rows(table)}
    object.__setattr__(current, la.REPORT_KEY, report)
    model.train(was_training)
    return current.eval()
