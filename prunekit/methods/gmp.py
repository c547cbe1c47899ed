"""Gradual magnitude pruning (Zhu & Gupta 2017) as a training callback.

Sparsity follows s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 from step t0 to t0 + n dt,
and the mask is recomputed by global magnitude every dt steps: fast pruning early, when
redundancy is high, slow near the end. Weights pruned once stay pruned (they score -inf).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.masks import apply_masks, magnitude_masks, prunable_modules, raw_weight
from ..training import Callback, train
from .base import PruningMethod
from .registry import register


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    if end <= start:
        return final if step >= start else initial
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


class GMPCallback(Callback):
    """Prune to ``cubic_sparsity`` every ``every`` steps between ``start`` and ``end`` (exact at ``end``)."""

    def __init__(self, sparsity: float, start: int, end: int, every: int, initial: float = 0.0,
                 include_classifier: bool = True):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.sparsity, self.start, self.end, self.every = sparsity, start, end, every
        self.initial, self.include_classifier = initial, include_classifier

    def on_train_start(self, trainer):
        mods = prunable_modules(trainer.model, self.include_classifier)
        missing = {n: torch.ones_like(raw_weight(m), dtype=torch.bool) for n, m in mods.items()
                   if not hasattr(m, "parametrizations")}
        if missing:
            apply_masks(trainer.model, missing)

    def after_step(self, trainer):
        t = trainer.step + 1  # steps completed, counting this one
        if t < self.start or t > self.end:
            return
        if (t - self.start) % self.every == 0 or t == self.end:
            s = cubic_sparsity(t, self.sparsity, self.start, self.end, self.initial)
            if s > 0:
                apply_masks(trainer.model, magnitude_masks(trainer.model, s, "global", self.include_classifier))


@dataclass
class GMPHparams:
    start_fraction: float = hp(0.0, "Pruning starts at this fraction of the fine-tuning steps.")
    end_fraction: float = hp(0.75, "Target reached at this fraction; the rest recovers at full sparsity.")
    updates: int = hp(20, "Mask updates between start and end (dt = ramp / updates; paper: dt 100-1000 steps).")
    include_classifier: bool = hp(True, "Also prune the classifier.")


@register
class GMP(PruningMethod):
    name = "gmp"
    Hparams = GMPHparams

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self._targets: dict[int, float] = {}

    def prune(self, model, target, ctx):
        # Nothing is removed yet: the schedule prunes during fine-tuning.
        net = self.copy(model)
        mods = prunable_modules(net, self.hp.include_classifier)
        apply_masks(net, {n: torch.ones_like(raw_weight(m), dtype=torch.bool) for n, m in mods.items()})
        self._targets[id(net)] = target
        return net

    def schedule(self, total_steps: int) -> tuple[int, int, int]:
        if not 0.0 <= self.hp.start_fraction <= self.hp.end_fraction <= 1.0:
            raise ValueError("need 0 <= start_fraction <= end_fraction <= 1")
        start = int(self.hp.start_fraction * total_steps)
        end = max(start + 1, int(self.hp.end_fraction * total_steps))
        return start, end, max(1, (end - start) // max(1, self.hp.updates))

    def callbacks(self, model, ctx):
        if id(model) not in self._targets:
            raise ValueError("gmp: callbacks() needs a model returned by prune()")
        spe = -(-len(ctx.data.train) // ctx.finetune.batch_size)
        start, end, every = self.schedule(spe * ctx.finetune.epochs)
        return [GMPCallback(self._targets[id(model)], start, end, every, 0.0, self.hp.include_classifier)]

    def finetune(self, model, ctx):
        cbs = self.callbacks(model, ctx)
        res = train(model, ctx.data, ctx.finetune, callbacks=cbs, progress=ctx.progress)
        self._targets.pop(id(model), None)
        return only_at_final_sparsity(res, cbs[0].end)


def only_at_final_sparsity(res, end_step: int):
    """Recompute the summary accuracies over epochs that ended at the final sparsity: an
    earlier, denser epoch must not be picked by validation (or best-test) selection."""
    h = [e for e in res.history if e["step"] >= end_step]
    tests = [e["test_acc"] for e in h if "test_acc" in e]
    res.final_test_acc = tests[-1] if tests else None
    res.best_test_acc = max(tests) if tests else None
    vals = [(e["val_acc"], i) for i, e in enumerate(h) if "val_acc" in e]
    res.best_val_acc = res.test_at_best_val = None
    if vals:
        best, i = max(vals)
        res.best_val_acc, res.test_at_best_val = best, h[i].get("test_acc")
    return res
