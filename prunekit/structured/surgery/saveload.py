"""Saving slim models without pickle: a kept-index plan (JSON) beside safetensors weights.

``save_pruned(model, path)`` writes the directory ``path`` with ``plan.json`` (which
channel indices each tensor kept, and changed module attributes; see ``plan.py``) and
``model.safetensors`` (the slim weights). ``load_pruned(path, base_model)`` replays the
plan on a freshly built, unpruned ``base_model`` (modified in place and returned) and
loads the weights, so only the architecture code and these two files are needed.

The weights file carries a checksum of every tensor and of ``plan.json``; loading checks
both and validates the plan's structure, so a hand-edited or corrupted directory fails
with a ``CheckpointError`` that names the file and the field, never with a different model.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch.nn as nn

from ...foundations.io import CheckpointError, atomic_write_json, atomic_write_text, load_tensors, save_tensors
from .plan import apply_plan, get_plan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(model: nn.Module, path, example_inputs=None) -> Path:
    """Write ``path/plan.json`` and ``path/model.safetensors`` atomically; returns ``path``.

    A HuggingFace model also gets its base config in the plan (so ``load_pruned(path)``
    needs no model object) and, when its blocks kept uniform widths, a standard
    ``config.json`` that plain ``from_pretrained(path)`` rebuilds it from (verified on
    ``example_inputs``, or on inputs synthesised from the config)."""
    from ...deploy.hf import hf_record, is_hf, standard_config

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_pruned writes a directory; {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    plan = dict(get_plan(model))
    raw = None
    if is_hf(model):
        std = standard_config(model, plan, model.config, example_inputs)
        plan["hf"] = {**hf_record(model), "standard_config": std is not None}
        raw = {"format": "pt"}  # what from_pretrained looks for in a safetensors header
        (path / "config.json").unlink(missing_ok=True)  # a stale one must not describe this model
        if std is not None:
            std.save_pretrained(path)
    # clone: tied weights share storage, which safetensors refuses to write
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plan_text = json.dumps(plan, indent=2) + "\n"
    save_tensors(path / WEIGHTS_FILE, tensors, {"kind": "pruned-model", "model": type(model).__name__,
                                                "plan_blake2b": _digest(plan_text)}, raw_metadata=raw)
    atomic_write_text(path / PLAN_FILE, plan_text)
    from ..selection.latency_aware import latency_report

    if latency_report(model) is not None:  # latency-aware: the measured table and the allocation
        atomic_write_json(path / "latency.json", latency_report(model))
    return path


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def validate_plan(plan, where: str = PLAN_FILE) -> None:
    """Check a plan's structure; raise CheckpointError naming the first bad field."""
    def bad(field: str, why: str):
        raise CheckpointError(f"{where}: {field} {why}")

    if not isinstance(plan, dict):
        bad("the top level", "must be a JSON object")
    for key, typ in (("format", str), ("slices", list)):
        if key not in plan:
            bad(f"{key!r}", "is missing")
        if not isinstance(plan[key], typ):
            bad(f"{key!r}", f"must be a {typ.__name__}")
    if plan["format"] != "prunekit-plan":
        bad("'format'", f"must be 'prunekit-plan', got {plan['format']!r}")
    if not isinstance(plan.get("attrs", {}), dict):
        bad("'attrs'", "must be an object of module name -> attributes")
    for name, attrs in plan.get("attrs", {}).items():
        if not isinstance(attrs, dict):
            bad(f"attrs[{name!r}]", "must be an object")
    seen = set()
    for i, s in enumerate(plan["slices"]):
        f = f"slices[{i}]"
        if not isinstance(s, dict):
            bad(f, "must be an object")
        for key in ("tensor", "dim", "size", "keep"):
            if key not in s:
                bad(f"{f}.{key}", "is missing")
        if not isinstance(s["tensor"], str):
            bad(f"{f}.tensor", "must be a string")
        for key in ("dim", "size"):
            if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 0:
                bad(f"{f}.{key}", f"must be a non-negative integer, got {s[key]!r}")
        keep = s["keep"]
        if not isinstance(keep, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in keep):
            bad(f"{f}.keep", "must be a list of integers")
        out = [k for k in keep if not 0 <= k < s["size"]]
        if out:
            bad(f"{f}.keep", f"has index {out[0]} outside [0, {s['size']}) for {s['tensor']}")
        if len(set(keep)) != len(keep):
            dup = next(k for k in keep if keep.count(k) > 1)
            bad(f"{f}.keep", f"repeats index {dup} for {s['tensor']}")
        if (s["tensor"], s["dim"]) in seen:
            bad(f, f"slices {s['tensor']} dim {s['dim']} a second time")
        seen.add((s["tensor"], s["dim"]))


def load_pruned(path, base_model: nn.Module | None = None) -> nn.Module:
    """Replay the saved plan on ``base_model`` (fresh, unpruned; changed in place) and load weights.

    ``base_model`` may be omitted for HuggingFace models: the base architecture is rebuilt
    from the config stored in the plan."""
    path = Path(path)
    plan_path = path / PLAN_FILE
    if not plan_path.exists():
        raise CheckpointError(f"{path} is not a saved pruned model: {plan_path} is missing")
    # weights first: their metadata holds the plan's checksum
    tensors, meta = load_tensors(path / WEIGHTS_FILE)
    try:
        text = plan_path.read_text()
        plan = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{plan_path} is corrupted ({e})") from e
    validate_plan(plan, str(plan_path))
    if meta.get("plan_blake2b") not in (None, _digest(text)):
        raise CheckpointError(f"{plan_path} was changed after saving (its checksum does not match the one in "
                              f"{WEIGHTS_FILE}); re-save the model, or restore the original plan")
    if base_model is None:
        if "hf" not in plan:
            raise ValueError(f"{path} holds a pruned {plan.get('model')}: pass a freshly built base_model "
                             f"(only HuggingFace models rebuild from the directory alone)")
        from ...deploy.hf import build_base

        base_model = build_base(plan["hf"])
    if getattr(base_model, "_prunekit_plan", None):
        raise ValueError("load_pruned needs a freshly built, unpruned base model")
    if plan.get("model") not in (None, type(base_model).__name__):
        raise CheckpointError(f"{path} holds a pruned {plan.get('model')}, but base_model is a "
                              f"{type(base_model).__name__}")
    try:
        apply_plan(base_model, {k: v for k, v in plan.items() if k != "hf"})
    except ValueError as e:
        raise CheckpointError(f"{path}: the plan does not fit base_model ({e})") from e
    try:
        missing, unexpected = base_model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not match the slim model ({e})") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the slim model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return base_model
