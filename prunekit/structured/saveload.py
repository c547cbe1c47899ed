"""Saving slim models without pickle: a kept-index plan (JSON) beside safetensors weights.

``save_pruned(model, path)`` writes the directory ``path`` with ``plan.json`` (which
channel indices each tensor kept, and changed module attributes; see ``plan.py``) and
``model.safetensors`` (the slim weights). ``load_pruned(path, base_model)`` replays the
plan on a freshly built, unpruned ``base_model`` (modified in place and returned) and
loads the weights, so only the architecture code and these two files are needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..foundations.io import CheckpointError, atomic_write_json, load_tensors, save_tensors
from .plan import apply_plan, get_plan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(model: nn.Module, path) -> Path:
    """Write ``path/plan.json`` and ``path/model.safetensors`` atomically; returns ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_pruned writes a directory; {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    plan = get_plan(model)
    # clone: tied weights share storage, which safetensors refuses to write
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_tensors(path / WEIGHTS_FILE, tensors, {"kind": "pruned-model", "model": type(model).__name__})
    atomic_write_json(path / PLAN_FILE, plan)
    return path


def load_pruned(path, base_model: nn.Module) -> nn.Module:
    """Replay the saved plan on ``base_model`` (fresh, unpruned; changed in place) and load weights."""
    path = Path(path)
    plan_path = path / PLAN_FILE
    if not plan_path.exists():
        raise CheckpointError(f"{path} is not a saved pruned model: {plan_path} is missing")
    try:
        plan = json.loads(plan_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{plan_path} is corrupted ({e})") from e
    if getattr(base_model, "_prunekit_plan", None):
        raise ValueError("load_pruned needs a freshly built, unpruned base model")
    if plan.get("model") not in (None, type(base_model).__name__):
        raise CheckpointError(f"{path} holds a pruned {plan.get('model')}, but base_model is a "
                              f"{type(base_model).__name__}")
    try:
        apply_plan(base_model, plan)
    except ValueError as e:
        raise CheckpointError(f"{path}: the plan does not fit base_model ({e})") from e
    tensors, _ = load_tensors(path / WEIGHTS_FILE)
    try:
        missing, unexpected = base_model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not match the slim model ({e})") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the slim model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return base_model
