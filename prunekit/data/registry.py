"""Dataset registry and the one entry point ``load(name, **options)``.

Options shared by every dataset: ``root`` (data directory), ``resize`` / ``pad`` (square
images), ``normalize`` (dataset mean/std), ``augment`` (random crop + flip, CIFAR),
``val_fraction`` (stratified validation split carved from train for model selection),
``seed`` (of that split), ``download`` (allowed when a network exists).
"""
from __future__ import annotations

import torch

from ..foundations.registry import Registry
from .base import DataBundle, TensorData, normalize, pad_images, resize_images, stratified_split

DATASETS: Registry = Registry("dataset")

# name -> (mean, std) used when normalize=True (per channel).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
STATS["mnist5k"] = STATS["mnist"]


def names() -> list[str]:
    return DATASETS.names()


def load(name: str, *, root: str = "data", resize: int | None = None, pad: int = 0, normalize_inputs: bool = True,
         augment: bool = False, val_fraction: float = 0.0, seed: int = 0, download: bool = True, **kw) -> DataBundle:
    fn = DATASETS.get(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    (xtr, ytr), (xte, yte), num_classes = fn(root=root, download=download, **kw)
    xtr, xte = xtr.float(), xte.float()
    if resize:
        xtr, xte = resize_images(xtr, resize), resize_images(xte, resize)
    if pad:
        xtr, xte = pad_images(xtr, pad), pad_images(xte, pad)
    if normalize_inputs:
        if name in STATS:
            mean, std = STATS[name]
        else:  # standardise with train statistics per channel
            dims = [0] + list(range(2, xtr.dim()))
            mean, std = xtr.mean(dims), xtr.std(dims).clamp_min(1e-8)
        xtr, xte = normalize(xtr, mean, std), normalize(xte, mean, std)
    train, val = TensorData(xtr, ytr), None
    if val_fraction > 0:
        a, b = stratified_split(ytr, val_fraction, seed)
        train, val = TensorData(xtr[a], ytr[a]), TensorData(xtr[b], ytr[b])
    aug = {"crop_pad": 4, "flip": True} if augment else {}
    return DataBundle(name, train, TensorData(xte, yte), num_classes, val=val, augment=aug)


from . import offline, standard  # noqa: E402,F401  (register loaders)
