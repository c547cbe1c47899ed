"""Unstructured pruning: parametrize-based masks and the methods that choose them."""
from .masks import (
    apply_masks, get_masks, keep_count, load_masks, magnitude_masks, masks_from_scores, prunable_modules,
    random_masks, remove_masks, save_masks, sparsity_report,
)

__all__ = [
    "apply_masks", "get_masks", "keep_count", "load_masks", "magnitude_masks", "masks_from_scores",
    "prunable_modules", "random_masks", "remove_masks", "save_masks", "sparsity_report",
]
