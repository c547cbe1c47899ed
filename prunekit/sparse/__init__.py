"""Unstructured pruning: parametrize-based masks and the methods that choose them."""
from .masks import (
    apply_masks, get_masks, keep_count, load_masks, magnitude_masks, masks_from_scores, prunable_modules,
    random_masks, remove_masks, save_masks, sparsity_report,
)

__all__ = [
    "apply_masks", "get_masks", "keep_count", "load_masks", "magnitude_masks", "masks_from_scores",
    "prunable_modules", "random_masks", "remove_masks", "save_masks", "sparsity_report",
]

# Saliency scores, the ESPN mask search and compact export (appended by the ESPN work).
from .espn import ESPNSearch, default_alpha, search as espn_search  # noqa: E402
from .export import load_into, load_sparse, save_sparse, to_sparse_linear  # noqa: E402
from .scores import score_masks, scores, synflow_masks  # noqa: E402

__all__ += ["ESPNSearch", "default_alpha", "espn_search", "load_into", "load_sparse", "save_sparse", "score_masks",
            "scores", "synflow_masks", "to_sparse_linear"]
