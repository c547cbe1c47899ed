"""Automatic fallback for ``slim``: freeze the groups a failing slim model trips on and retry.

Some code reads a channel count the analysis cannot see (a reshape to a size taken from a
config, a check against ``config.num_channels``, a split with fixed sizes). The slim model
then raises, changes its output shapes or stops matching the reference (the dense model
with the removed channels zeroed, ``check_exact``). Instead of asking for ``ignore=`` by
hand, ``slim`` validates every candidate on every example input and, on a failure:

1. when a module raised, takes the groups with a member inside that module (a layer whose
   rows or columns, or a norm or parameter, the module owns), escalating to the parent
   module once those are frozen and it still fails;
2. otherwise (the root forward raised, shapes changed, inexact outputs, or the local
   groups do not explain it) takes every pruned group;
3. narrows those candidates by bisection (a candidate subset is slimmed alone and
   validated), so only the groups that actually break the model are frozen;

then marks them unprunable, re-plans and retries, at most ``max_rounds`` times. The
result always runs and is exact on every example input; the report of what was frozen
and why is in the plan (``slim_report(model)``, written to ``plan.json`` by
``save_pruned``).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from ..trace.capture import flat_tensors
from .exactness import reference_model
from ..trace.groups import ChannelGroup
from .plan import PLAN_KEY, apply_plan, get_plan
from .slim import Failure, _run, removal_plan, run_tracked, validation_failure

REPORT_KEY = "slim_report"


def slim_report(model: nn.Module) -> dict | None:
    """What ``slim`` froze to make ``model`` run and stay exact: ``{"rounds": [...], "frozen":
    [{"group", "size", "members", "module", "failure"}]}``; None when nothing was needed."""
    return get_plan(model).get(REPORT_KEY)


def _tolerance(out) -> float:
    ts = [t for t in flat_tensors(out) if t.is_floating_point() and t.numel()]
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t in ts)
    scale = max([1.0] + [float(t.abs().max()) for t in ts])
    return (1e-2 if low else 1e-4) * scale


@torch.no_grad()
def check(model: nn.Module, inputs: list, groups: list[ChannelGroup], pruned: dict):
    """Slim a copy with ``pruned``; returns (slim model, None) or (None, Failure)."""
    plan = removal_plan(model, groups, pruned)
    slim = copy.deepcopy(model)
    try:
        apply_plan(slim, plan)
    except ValueError as e:  # a tensor that cannot be sliced (a parametrized weight): as a failing run
        return None, Failure("raised", f"the plan cannot be applied: {e}", exc=e)
    if not plan["slices"]:
        return slim, None
    ref = None
    for x in inputs:
        f = validation_failure(model, slim, x)
        if f is not None:
            return None, f
        if ref is None:
            ref = reference_model(model, plan).eval()
        want = flat_tensors(_run(ref, x))
        got, f = run_tracked(slim, x)
        if f is not None:
            return None, f
        err = 0.0
        for a, b in zip(want, flat_tensors(got)):
            if a.is_floating_point():
                err = max(err, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
            elif not torch.equal(a, b):
                err = float("inf")
        tol = _tolerance(want)
        if err > tol:
            return None, Failure("inexact", f"the slimmed model differs from the reference (removed channels "
                                            f"zeroed) by {err:.3g} > {tol:.3g}")
    return slim, None


def _inside(name: str, module: str) -> bool:
    return module == "<model>" or name == module or name.startswith(module + ".")


def _touches(g: ChannelGroup, module: str) -> bool:
    names = [n for n, _ in g.out_layers + g.in_layers + g.norm_layers] + \
            [n.rpartition(".")[0] for n, _, _ in g.params] + [n for n, _, _, _ in g.pads]
    return any(_inside(n, module) for n in names)


def _parent(module: str) -> str:
    return module.rpartition(".")[0] or "<model>"


def _narrow(cands: list[int], fails) -> list[int]:
    """A small subset of ``cands`` (which fail together) that still fails alone, by bisection;
    when neither half fails alone the failure needs both, and the whole set is returned."""
    while len(cands) > 1:
        a, b = cands[: len(cands) // 2], cands[len(cands) // 2:]
        if fails(a):
            cands = a
        elif fails(b):
            cands = b
        else:
            break
    return cands


def slim_with_fallback(model: nn.Module, inputs: list, groups: list[ChannelGroup], plan_fn, *,
                       strict: bool = False, inplace: bool = False, max_rounds: int = 8) -> nn.Module:
    """``plan_fn(groups) -> {group id: removed channels}``; see the module docstring."""
    groups = list(groups)
    by_id = {g.id: i for i, g in enumerate(groups)}
    frozen: list[dict] = []
    rounds: list[dict] = []
    for _ in range(max_rounds + 1):
        pruned = {k: v for k, v in plan_fn(groups).items() if torch.as_tensor(v).numel()}
        slim, failure = check(model, inputs, groups, pruned)
        if failure is None:
            break
        if strict:
            raise failure.error()
        if len(rounds) == max_rounds:
            raise RuntimeError(f"slim gave up after freezing groups in {max_rounds} rounds: {failure}. "
                               f"{failure.advice}".strip())
        cache: dict[tuple, bool] = {}

        def fails(ids, pruned=pruned):
            key = tuple(sorted(ids))
            if key not in cache:
                cache[key] = check(model, inputs, groups, {k: pruned[k] for k in ids})[1] is not None
            return cache[key]

        cands: list[int] = []
        module = failure.module if failure.kind == "raised" and failure.module != "<model>" else None
        if module is not None:
            # a module whose own groups are frozen (or do not break it alone) and still
            # raises: look one level up
            while module != "<model>":
                cands = [k for k in pruned if _touches(groups[by_id[k]], module)]
                if cands and fails(cands):
                    break
                cands, module = [], _parent(module)
        if not cands:
            cands = list(pruned)
        culprits = _narrow(cands, fails) if len(cands) > 1 else cands
        if not culprits:
            raise RuntimeError(f"{failure} even with nothing pruned")
        record = {"failure": str(failure), "kind": failure.kind, "module": failure.module, "op": failure.op,
                  "groups": sorted(int(k) for k in culprits), "trials": len(cache)}
        rounds.append(record)
        for k in culprits:
            g = groups[by_id[k]]
            frozen.append({"group": int(k), "size": g.size, "members": list(g.members),
                           "module": failure.module, "failure": str(failure)})
            groups[by_id[k]] = dataclasses.replace(g, prunable=False, reason=f"frozen by slim: {failure}")
        if not any(g.prunable for g in groups):
            raise RuntimeError(f"slim cannot produce a working model: nothing prunable is left once the groups "
                               f"that break it are frozen (last failure: {failure})")
    else:  # pragma: no cover - the loop either breaks or raises
        raise AssertionError("unreachable")
    if frozen:
        if not pruned:
            raise RuntimeError(f"slim cannot produce a working model: after freezing {len(frozen)} groups nothing "
                               f"prunable is left (first failure: {rounds[0]['failure']})")
        plan = dict(get_plan(slim))
        plan[REPORT_KEY] = {"rounds": rounds, "frozen": frozen}
        object.__setattr__(slim, PLAN_KEY, plan)
    if inplace:
        report = get_plan(slim).get(REPORT_KEY)
        apply_plan(model, removal_plan(model, groups, pruned))
        if report is not None:
            object.__setattr__(model, PLAN_KEY, {**get_plan(model), REPORT_KEY: report})
        return model
    return slim
