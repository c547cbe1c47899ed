"""Several example inputs for one analysis: ``Examples([inputs_a, inputs_b, ...])``.

A plain tuple/list keeps its meaning everywhere (positional arguments of one call, as in
``call_model``), so several inputs need an explicit wrapper. The one unwrapped form taken
as several inputs is a list of dicts whose keys are all named parameters of the model's
forward (``[{"input_ids": a}, {"input_ids": b}]``): such a list cannot be the positional
arguments of that forward. Each input is a tensor, a tuple of positional tensors or a
dict of keyword tensors, exactly as a single ``example_inputs``.
"""
from __future__ import annotations

import inspect

import torch.nn as nn


class Examples:
    """Several example inputs: the analysis keeps only channels prunable on every one and
    the slim model is validated on every one."""

    def __init__(self, inputs):
        inputs = tuple(inputs)
        if not inputs:
            raise ValueError("Examples needs at least one example input")
        if any(isinstance(x, Examples) for x in inputs):
            raise TypeError("Examples cannot be nested")
        self.inputs = inputs

    def __iter__(self):
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i]

    def __repr__(self) -> str:
        return f"Examples({len(self.inputs)} inputs)"


def several(*inputs) -> Examples:
    """``several(a, b)`` is ``Examples([a, b])``."""
    return Examples(inputs)


def _forward_params(model: nn.Module) -> set[str] | None:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    return {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def as_list(model: nn.Module, example_inputs) -> list:
    """The example inputs as a list of single inputs (one element for a single input)."""
    if isinstance(example_inputs, Examples):
        return list(example_inputs.inputs)
    if isinstance(example_inputs, list) and example_inputs and all(isinstance(d, dict) for d in example_inputs):
        names = _forward_params(model)
        if names is not None and all(set(d) <= names for d in example_inputs):
            return list(example_inputs)
    return [example_inputs]


def first(model: nn.Module, example_inputs):
    """The first input (what FLOPs counting and latency measurement run on)."""
    return as_list(model, example_inputs)[0]
