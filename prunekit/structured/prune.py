"""``slim``: importance -> plan -> ``slim_with_plan`` in one call, with an optional FLOPs target."""
from __future__ import annotations

import torch.nn as nn

from .groups import ChannelGroup, channel_groups
from .importance import check_criterion, group_scores
from .planner import check_ratio, plan_removal
from .slim import slim_with_plan


def slim(model: nn.Module, example_inputs, ratio: float | None = None, criterion="l1", ignore=(), round_to: int = 1,
         inplace: bool = False, *, mode: str = "uniform", overrides: dict | None = None, skip=(),
         flops_reduction: float | None = None, data=None, loss_fn=None, seed: int = 0,
         groups: list[ChannelGroup] | None = None, uniform_layers: bool = False, speedup: float | None = None,
         backend: str = "torch", threads: int | None = None, cache_dir=None) -> nn.Module:
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
    The kept-index plan is stored on the result (``save_pruned`` uses it).
    """
    check_criterion(criterion)
    if ratio is None and flops_reduction is None and speedup is None:
        raise ValueError("give one of ratio, flops_reduction or speedup")
    if speedup is not None:
        if ratio is not None or flops_reduction is not None:
            raise ValueError("give one of ratio, flops_reduction or speedup")
        from .latency_aware import latency_slim

        return latency_slim(model, example_inputs, speedup, criterion=criterion, backend=backend, threads=threads,
                            ignore=ignore, cache_dir=cache_dir, data=data)
    if flops_reduction is None:
        ratio = check_ratio(ratio)
    else:
        check_ratio(flops_reduction, "flops_reduction")
        if ratio is not None:
            raise ValueError("give either ratio or flops_reduction, not both")
    if groups is None:
        groups = channel_groups(model, example_inputs, ignore=ignore)
    scores = group_scores(model, groups, criterion, data=data, loss_fn=loss_fn, seed=seed)

    def at(r, inplace_=False, validate=True):
        pruned = plan_removal(groups, scores, r, mode=mode, overrides=overrides, skip=skip, round_to=round_to,
                              uniform_layers=uniform_layers)
        return slim_with_plan(model, example_inputs, pruned, groups=groups, inplace=inplace_, validate=validate)

    if flops_reduction is not None:
        ratio = find_ratio_for_flops(lambda r: at(r, validate=False), example_inputs, flops_reduction,
                                     _dense_flops(model, example_inputs))
    return at(ratio, inplace_=inplace)


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
