"""NetAdapt: structured pruning to a measured speed-up, one role at a time, each step chosen by
short-term fine-tuned accuracy (``structured.selection.netadapt``).

The runner's target is the fraction of latency removed, ``1 - 1/speedup``, as for
``l1-latency``. Proposals are fine-tuned on training samples with the run's fine-tune optimiser
and learning rate (constant) and scored on ``holdout`` other training samples: validation and
test data are never seen while planning. The long-term fine-tune is the runner's default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.base import TensorData
from ..foundations.hparams import hp
from ..structured.selection.importance import CRITERIA
from ..structured.selection.netadapt import check_schedule, netadapt_slim
from ..training import TrainHparams, train
from ..training.trainer import evaluate
from .base import PruningMethod
from .registry import register


@dataclass
class NetAdaptHparams:
    criterion: str = hp("l1", "Which channels a proposal removes inside its width, on the current weights.",
                        choices=lambda: CRITERIA.names())
    backend: str = hp("torch", "Where latency is measured: torch (eager) or onnxruntime.",
                      choices=("torch", "onnxruntime"))
    batch_size: int = hp(1, "Batch size the speed-up is measured at.")
    threads: int = hp(1, "CPU threads the speed-up is measured with.")
    first_step: float = hp(0.05, "Latency the first iteration removes, as a fraction of the dense model's.")
    decay: float = hp(0.96, "Each iteration removes this factor times the previous one's latency.")
    short_steps: int = hp(10, "Short-term fine-tune steps per proposal (fine-tune batch size and learning rate).")
    holdout: int = hp(512, "Training samples held out to score proposals (never validation or test).")
    max_ratio: float = hp(1.0, "Most of any group's width that may be removed, in (0, 1]; 1.0 = no cap.")


def proposal_trainer(train_set: TensorData, recipe: TrainHparams, short_steps: int, holdout: int, seed: int):
    """``(short_finetune, score)`` for ``netadapt_slim``: ``holdout`` training samples (drawn by
    ``seed``) score proposals by (accuracy, -loss); the rest train them, ``short_steps`` batches
    per proposal, the same batches for every proposal of one iteration, new ones the next."""
    n = len(train_set)
    if short_steps < 0:
        raise ValueError(f"short_steps must be >= 0, got {short_steps}")
    if not 0 < holdout < n:
        raise ValueError(f"holdout must be between 1 and {n - 1} (the training samples), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, rest = train_set.subset(perm[:holdout]), perm[holdout:]
    per = short_steps * recipe.batch_size

    def short_finetune(model, iteration: int) -> int:
        if short_steps == 0:
            return 0
        start = (iteration * per) % len(rest)
        idx = rest[(torch.arange(per) + start) % len(rest)]  # cycles through the non-held-out samples
        hp_ = TrainHparams(epochs=1, batch_size=recipe.batch_size, optimizer=recipe.optimizer, lr=recipe.lr,
                           momentum=recipe.momentum, weight_decay=recipe.weight_decay, schedule="constant",
                           seed=seed + iteration)
        return train(model, train_set.subset(idx), hp_, progress=False, eval_test=False).steps

    def score(model):
        r = evaluate(model, held)
        return (r["top1"], -r["loss"])

    return short_finetune, score


@register
class NetAdapt(PruningMethod):
    name = "netadapt"
    kind = "structured"
    target_name = "latency reduction"
    Hparams = NetAdaptHparams

    def prune(self, model, target, ctx):
        if not 0.0 < target < 1.0:
            raise ValueError(f"netadapt: target is the fraction of latency removed, in (0, 1); got {target}")
        check_schedule(self.hp.first_step, self.hp.decay)
        fit, score = proposal_trainer(ctx.data.train, ctx.finetune, self.hp.short_steps, self.hp.holdout, ctx.seed)
        x = ctx.data.example_inputs(self.hp.batch_size)
        data = ctx.batch(256) if self.hp.criterion == "taylor" else None
        before = torch.get_num_threads()
        try:
            return netadapt_slim(self.copy(model).eval(), x, 1.0 / (1.0 - target), fit, score,
                                 criterion=self.hp.criterion, backend=self.hp.backend, threads=self.hp.threads,
                                 first_step=self.hp.first_step, decay=self.hp.decay, max_ratio=self.hp.max_ratio,
                                 data=data)
        finally:
            torch.set_num_threads(before)
