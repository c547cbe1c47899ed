"""prunekit: structured and unstructured pruning for PyTorch.

Subpackages by concern: ``data``, ``models``, ``training``, ``sparse`` (unstructured
masks and scores), ``structured`` (dependency graph and physical slimming), ``methods``
(one file per pruning method, e.g. ``methods/tpp.py``, ``methods/espn.py``),
``metrics``, ``runner`` (experiments, reports) and ``foundations`` (registries, I/O).
"""
__version__ = "0.1.0"

from .structured import channel_groups, load_pruned, save_pruned, slim  # noqa: E402
