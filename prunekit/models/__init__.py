"""Reference models, built by name: ``prunekit.models.build("resnet20", 3, 32, 10)``."""
from .registry import MODELS, build, names

__all__ = ["MODELS", "build", "names"]
