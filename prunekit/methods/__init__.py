"""Pruning methods usable by the runner, one file each, registered by name."""
from .base import Context, PruningMethod
from .registry import METHODS, get, names

__all__ = ["Context", "METHODS", "PruningMethod", "get", "names"]
