"""Datasets by name: ``prunekit.data.load("mnist5k", resize=32)`` -> DataBundle."""
from .base import DataBundle, TensorData, augment_batch
from .registry import DATASETS, load, names

__all__ = ["DATASETS", "DataBundle", "TensorData", "augment_batch", "load", "names"]
