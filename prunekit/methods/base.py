"""What a pruning method is, for the runner.

A method gets the pretrained dense model and a target (sparsity for unstructured
methods, channel ratio for structured ones) and returns a pruned model; the runner then
fine-tunes it with ``finetune`` (override it for methods that need their own callbacks or
their own retraining, e.g. rewinding) and measures it. Methods never modify the dense
model they are given: they copy it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from ..data.base import DataBundle
from ..training import TrainHparams, TrainResult, train


@dataclass
class NoHparams:
    pass


@dataclass
class Context:
    """Everything a method may use besides the model: data, budgets, a fresh-model builder."""

    data: DataBundle
    finetune: TrainHparams
    pretrain: TrainHparams
    build_model: Callable[[], nn.Module]
    example_inputs: Any
    seed: int = 0
    progress: bool = False
    # weights after ``rewind_iterations`` of dense training (for rewinding methods), if recorded
    rewind_state: dict | None = None
    extras: dict = field(default_factory=dict)

    def batch(self, n: int = 128, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        idx = torch.randperm(len(self.data.train), generator=g)[:n]
        return self.data.train.get_batch(idx)


class PruningMethod:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "unstructured"  # or "structured"
    Hparams: ClassVar[type] = NoHparams
    target_name: ClassVar[str] = "sparsity"  # "sparsity" or "ratio"

    def __init__(self, hparams=None):
        self.hp = hparams if hparams is not None else self.Hparams()

    def prune(self, model: nn.Module, target: float, ctx: Context) -> nn.Module:
        raise NotImplementedError

    def callbacks(self, model: nn.Module, ctx: Context) -> list:
        return []

    def finetune(self, model: nn.Module, ctx: Context) -> TrainResult:
        return train(model, ctx.data, ctx.finetune, callbacks=self.callbacks(model, ctx), progress=ctx.progress)

    @staticmethod
    def copy(model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)
