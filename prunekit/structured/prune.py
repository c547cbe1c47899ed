"""``slim``: importance -> plan -> ``slim_with_plan`` in one call, with an optional FLOPs target."""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from .trace.groups import ChannelGroup, channel_groups
from .selection.importance import check_criterion, group_scores
from .selection.planner import check_ratio, plan_removal
from .surgery.fallback import REPORT_KEY, slim_report
from .surgery.plan import PLAN_KEY, get_plan
from .surgery.slim import slim_with_plan


def slim(model: nn.Module, example_inputs, ratio: float | None = None, criterion="l1", ignore=(), round_to: int = 1,
         inplace: bool = False, *, mode: str = "uniform", overrides: dict | None = None, skip=(),
         flops_reduction: float | None = None, data=None, loss_fn=None, seed: int = 0,
         groups: list[ChannelGroup] | None = None, uniform_layers: bool = False, speedup: float | None = None,
         backend: str = "torch", threads: int | None = None, cache_dir=None, strict: bool = False,
         max_rounds: int = 8, latency_options: dict | None = None) -> nn.Module:
    """Structured pruning in one call; returns a physically smaller model.

    ratio: fraction of channels removed per group (``mode="uniform"``) or over all groups
      ranked together (``mode="global"``), in [0, 1). May be None when
      ``flops_reduction`` is given.
    criterion: ``"l1"``, ``"l2"``, ``"l1-filter"``, ``"bn_scale"``, ``"taylor"`` (needs
      ``data=(inputs, targets)``), ``"random"``, a registered name, or a callable
      ``fn(model, group) -> Tensor[group.size]`` (see ``importance``).
    ignore: module names/patterns/classes whose channels are never pruned.
    round_to: keep channel counts at multiples of this (e.g. 8) where the group allows.
    inplace: slim ``model`` itself instead of a deep copy.
    overrides / skip: per-layer ratios and skipped layers by name pattern (``planner``).
    flops_reduction: instead of a ratio, remove at least this fraction of the dense FLOPs
      (e.g. 0.5 for a 2x reduction); the ratio is found by bisection with
      ``prunekit.metrics.flops`` on ``example_inputs``.
    uniform_layers: every layer type keeps the same width in every block (the median of what
      the plan gives them), so a standard config describes the slim model (HuggingFace's
      ``from_pretrained`` can rebuild it; see ``save_pruned``).
    speedup: instead of a ratio, a *measured* speed-up on this machine (e.g. 2.0), for the
      batch size of ``example_inputs``, on ``backend`` ("torch" or "onnxruntime") with
      ``threads``; see ``latency_aware`` (latency tables cached under ``cache_dir``).
      ``latency_options``: more keywords for ``latency_slim`` (``solver``, ``max_ratio``,
      ``cost``, ``tolerance``, ``max_iters``, ...).
    example_inputs: one input (tensor, tuple of positional args, dict of kwargs) or several
      as ``Examples([a, b, ...])`` (or a list of kwargs dicts): channels are pruned only if
      prunable on every input, and the result is validated on every input (FLOPs and
      latency are measured on the first).
    strict: raise when the slim model fails validation (it raises, changes output shapes,
      or differs from the reference with the removed channels zeroed, ``check_exact``).
      By default the groups involved are frozen and the plan retried (at most
      ``max_rounds`` times; see ``fallback``); what was frozen is in ``slim_report(result)``.
    The kept-index plan is stored on the result (``save_pruned`` uses it).
    """
    from .trace.examples import as_list
    from .surgery.fallback import slim_with_fallback

    inputs = as_list(model, example_inputs)
    one = inputs[0]
    check_criterion(criterion)
    if ratio is None and flops_reduction is None and speedup is None:
        raise ValueError("give one of ratio, flops_reduction or speedup")
    if speedup is not None:
        if ratio is not None or flops_reduction is not None:
            raise ValueError("give one of ratio, flops_reduction or speedup")
        from .selection.latency_aware import latency_slim

        if len(inputs) > 1:
            raise ValueError("speedup= measures latency on one input; pass a single example input")
        import inspect

        fixed = {"model", "example_inputs", "speedup", "criterion", "backend", "threads", "ignore", "cache_dir", "data"}
        valid = sorted(set(inspect.signature(latency_slim).parameters) - fixed)
        bad = sorted(set(latency_options or {}) - set(valid))
        if bad:
            raise ValueError(f"unknown latency_options {bad}; valid: {', '.join(valid)}")
        return latency_slim(model, one, speedup, criterion=criterion, backend=backend, threads=threads,
                            ignore=ignore, cache_dir=cache_dir, data=data, **(latency_options or {}))
    if flops_reduction is None:
        ratio = check_ratio(ratio)
    else:
        check_ratio(flops_reduction, "flops_reduction")
        if ratio is not None:
            raise ValueError("give either ratio or flops_reduction, not both")
    if groups is None:
        groups = channel_groups(model, example_inputs, ignore=ignore)
    scores = group_scores(model, groups, criterion, data=data, loss_fn=loss_fn, seed=seed)

    def planner(r):
        return lambda gs: plan_removal(gs, scores, r, mode=mode, overrides=overrides, skip=skip, round_to=round_to,
                                       uniform_layers=uniform_layers)

    def fallback(r, inplace_=False):
        return slim_with_fallback(model, inputs, groups, planner(r), strict=strict, inplace=inplace_,
                                  max_rounds=max_rounds)

    if flops_reduction is not None:
        # the FLOPs bisection counts unvalidated candidates: freeze what breaks the model first
        probe = fallback(0.5)
        report = slim_report(probe)
        if report:
            frozen = {f["group"] for f in report["frozen"]}
            groups = [dataclasses.replace(g, prunable=False, reason="frozen by slim: see slim_report")
                      if g.id in frozen else g for g in groups]

        def build(r):
            return slim_with_plan(model, one, planner(r)(groups), groups=groups, validate=False)

        ratio = find_ratio_for_flops(build, one, flops_reduction, _dense_flops(model, one))
    result = fallback(ratio, inplace)
    if flops_reduction is not None and report:
        plan = get_plan(result)
        object.__setattr__(result, PLAN_KEY, {**plan, REPORT_KEY: _merge(report, plan.get(REPORT_KEY))})
    return result


def _merge(first: dict, later: dict | None) -> dict:
    if not later:
        return first
    return {"rounds": first["rounds"] + later["rounds"], "frozen": first["frozen"] + later["frozen"]}


def _dense_flops(model, inputs) -> int:
    from ..metrics import flops

    return flops(model, inputs)["dense"]


def find_ratio_for_flops(build, inputs, reduction: float, dense: int, iters: int = 14) -> float:
    """Smallest ratio (to ~1e-4) whose slim model removes at least ``reduction`` of ``dense`` FLOPs."""
    from ..metrics import flops

    def reduced(r):
        return 1.0 - flops(build(r), inputs)["dense"] / dense

    lo, hi = 0.0, 0.99
    if reduced(hi) < reduction:
        raise ValueError(f"cannot remove {reduction:.0%} of the FLOPs: even ratio {hi} only removes "
                         f"{reduced(hi):.1%} (frozen groups, skipped layers or overrides limit it)")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if reduced(mid) >= reduction:
            hi = mid
        else:
            lo = mid
    return hi
