"""Jacobian singular values (JSV): how well a network preserves signal at initialisation
of fine-tuning (dynamical isometry). TPP and OrthP report the mean over samples and values.

For each sample x the Jacobian d logits / d x (classes x input size) is computed with
``torch.func.jacrev`` vectorised over the batch with ``vmap``, in eval mode (BN uses its
running statistics, so samples do not interact), and its singular values are taken.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, vmap


def jacobian_singular_values(model: nn.Module, inputs: torch.Tensor, chunk_size: int | None = 32) -> dict:
    """{mean, std, min, max, cond (mean per-sample max/min), values (every singular value, 1-D)}."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty batch tensor (N x ...), got "
                         f"{type(inputs).__name__} {tuple(getattr(inputs, 'shape', ()))}")
    was = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def logits(x):  # one sample -> its logits
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)

    try:
        jac = vmap(jacrev(logits), chunk_size=chunk_size)(inputs.detach())
    finally:
        model.train(was)
    jac = jac.reshape(len(inputs), jac.shape[1], -1)  # N x K x D
    sv = torch.linalg.svdvals(jac)  # N x min(K, D)
    cond = (sv.max(1).values / sv.min(1).values.clamp_min(1e-30)).mean()
    values = sv.flatten()
    return {"mean": values.mean().item(), "std": values.std().item() if values.numel() > 1 else 0.0,
            "min": values.min().item(), "max": values.max().item(), "cond": cond.item(), "values": values}
