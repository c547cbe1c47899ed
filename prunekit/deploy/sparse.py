"""Masked (unstructured) models as they deploy: plain weights, and sparse kernels where they pay.

A parametrized forward recomputes ``weight * mask`` on every call, so timing it shows a
99%-sparse net slower than the dense one. ``fastest_deployable`` removes the masks and
then tries CSR kernels for the sparse Linear layers (``sparse.export.SparseLinear``),
timing both variants side by side (interleaved medians) on the user's inputs, and keeps
whichever is faster. Convolutions stay dense: no CSR conv kernel in torch beats oneDNN's
dense conv at these sizes on CPU, so there is nothing to choose from for them.
"""
from __future__ import annotations

import torch.nn as nn

from ..metrics.latency import compare_latency
from ..sparse.export import to_sparse_linear
from .onnx import deployable_copy

CSR_MIN_SPARSITY = 0.5  # below this, CSR never wins; skip timing it


def _sparse_linears(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Linear)
               and float((m.weight.detach() == 0).float().mean()) >= CSR_MIN_SPARSITY)


def fastest_deployable(model: nn.Module, example_inputs, threads: int = 1, rounds: int = 3) -> tuple[nn.Module, str]:
    """(deployable copy, how): ``how`` is ``"dense kernels"`` or ``"CSR Linear"``."""
    plain = deployable_copy(model, fold=False)
    if not _sparse_linears(plain):
        return plain, "dense kernels"
    csr = to_sparse_linear(plain, min_sparsity=CSR_MIN_SPARSITY).eval()
    t = compare_latency({"dense kernels": plain, "CSR Linear": csr}, example_inputs, num_threads=threads,
                        rounds=rounds, min_run_time=0.03)
    best = min(t, key=t.get)
    return (csr if best == "CSR Linear" else plain), best
