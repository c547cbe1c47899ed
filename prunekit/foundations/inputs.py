"""Calling a model on user-supplied example inputs.

``example_inputs`` may be a tensor, a tuple/list of positional tensors, or a dict of
keyword arguments (HuggingFace models take ``input_ids=`` or ``pixel_values=``).
"""
from __future__ import annotations

import torch.nn as nn


def call_model(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
