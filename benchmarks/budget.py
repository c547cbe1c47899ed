"""Shared helpers of the pre-registered benchmarks (benchmarks/PROTOCOL.md): step-exact
training, budget records, larger MNIST-1D, layer-collapse detection.

Every optimiser step any method takes is counted (dense pretraining, search or
regularisation, every retraining level); ``Budget`` carries the total in steps and in
epochs-equivalent (steps / steps-per-epoch of the full training split).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunekit.data.base import DataBundle, TensorData, stratified_split
from prunekit.training import TrainHparams, train
from prunekit.training.callbacks import Callback


def mnist1d_bundle(n_train: int, n_test: int = 5000, val_fraction: float = 0.1, seed: int = 0,
                   data_seed: int = 42, as_image: bool = False) -> DataBundle:
    """MNIST-1D (mnist1d.make_dataset, offline) with ``n_train`` training samples (before the
    validation split) and ``n_test`` test samples. ``data_seed`` fixes the generated samples
    (the same for every run); ``seed`` drives the stratified validation split."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_train + n_test
    args.train_split = n_train / (n_train + n_test)
    args.seed = data_seed
    d = make_dataset(args)
    xtr = torch.tensor(d["x"], dtype=torch.float32).unsqueeze(1)
    xte = torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(1)
    if as_image:
        xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)
    ytr, yte = torch.tensor(d["y"]).long(), torch.tensor(d["y_test"]).long()
    # the library's loader normalises inputs with the training statistics; do the same
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    a, b = stratified_split(ytr, val_fraction, seed)
    return DataBundle("mnist1d", TensorData(xtr[a], ytr[a]), TensorData(xte, yte), 10,
                      val=TensorData(xtr[b], ytr[b]))


def steps_per_epoch(data: DataBundle, batch_size: int) -> int:
    return math.ceil(len(data.train) / batch_size)


class StopAt(Callback):
    """Stop training after exactly ``steps`` optimiser steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def should_stop(self, trainer):
        return trainer.step >= self.steps


def train_steps(net, data: DataBundle, hp: TrainHparams, steps: int, callbacks=(), seed: int = 0,
                eval_test: bool = True):
    """Train for exactly ``steps`` optimiser steps. Fewer steps than one epoch: one pass over a
    seeded random subset of ``steps * batch_size`` training samples (so the LR schedule runs
    its whole course); otherwise ceil(steps / spe) epochs cut at ``steps``. Returns TrainResult
    (``.steps`` is exact)."""
    spe = steps_per_epoch(data, hp.batch_size)
    if steps <= 0:
        raise ValueError(f"need steps > 0, got {steps}")
    if steps < spe:
        g = torch.Generator().manual_seed(seed * 7919 + steps)
        idx = torch.randperm(len(data.train), generator=g)[: steps * hp.batch_size]
        sub = dataclasses.replace(data, train=data.train.subset(idx))
        return train(net, sub, dataclasses.replace(hp, epochs=1), callbacks=list(callbacks), progress=False,
                     eval_test=eval_test)
    epochs = math.ceil(steps / spe)
    return train(net, data, dataclasses.replace(hp, epochs=epochs), callbacks=[*callbacks, StopAt(steps)],
                 progress=False, eval_test=eval_test)


@dataclass
class Budget:
    """Optimiser steps per phase; ``spe`` converts to epochs of the full training split."""
    spe: int
    phases: dict = field(default_factory=dict)  # name -> steps

    def add(self, name: str, steps: int) -> "Budget":
        self.phases[name] = self.phases.get(name, 0) + int(steps)
        return self

    @property
    def steps(self) -> int:
        return sum(self.phases.values())

    @property
    def epochs(self) -> float:
        return round(self.steps / self.spe, 2)

    def record(self) -> dict:
        return {"budget_steps": self.steps, "budget_epochs": self.epochs,
                "budget_phases": dict(self.phases),
                "budget": " + ".join(f"{k} {v}" for k, v in self.phases.items()) + f" = {self.steps} steps"}


def layer_kept(model) -> dict:
    """Per conv/linear layer: kept and total weights of its binary mask; flags layers that keep
    < 1% of their weights (``collapsed_layers``) and layers with no weight at all (``empty_layers``)."""
    from prunekit.sparse.masks import get_masks

    per = {n: (int(m.sum()), m.numel()) for n, m in get_masks(model).items()}
    low = [n for n, (k, t) in per.items() if k < 0.01 * t]
    empty = [n for n, (k, t) in per.items() if k == 0]
    return {"layer_kept": per, "collapsed_layers": low, "empty_layers": empty,
            "min_layer_fraction": min((k / t for k, t in per.values()), default=1.0)}


def atomic_write_json(path: Path, obj) -> None:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_png(fig, png: Path) -> None:
    png = Path(png)
    fd, tmp = tempfile.mkstemp(dir=png.parent, prefix=f".{png.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.chmod(tmp, 0o644)
    os.replace(tmp, png)
