"""prunekit: structured and unstructured pruning for PyTorch.

Subpackages by concern: ``data``, ``models``, ``training``, ``sparse`` (unstructured
masks and scores), ``structured`` (dependency graph and physical slimming), ``methods``
(one file per pruning method, e.g. ``methods/tpp.py``, ``methods/espn.py``),
``metrics``, ``runner`` (experiments, reports), ``deploy`` (ONNX, HuggingFace) and
``foundations`` (registries, I/O). Subpackages load on first use (PEP 562), so
``import prunekit; prunekit.sparse.scores(...)`` works without importing all of them up front.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .structured import channel_groups, load_pruned, save_pruned, slim  # noqa: E402

SUBPACKAGES = ("data", "deploy", "foundations", "methods", "metrics", "models", "runner", "sparse", "structured",
               "training")

__all__ = ["channel_groups", "load_pruned", "save_pruned", "slim", *SUBPACKAGES]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBPACKAGES))
