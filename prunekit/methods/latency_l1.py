"""Latency-aware L1 pruning: structured, to a measured speed-up (``structured.selection.latency_aware``).

The runner's target for this method is the fraction of latency removed on this machine,
``1 - 1/speedup`` (0.5 = twice as fast), measured at ``batch_size`` with ``threads`` on
``backend``. Channels are chosen by ``criterion`` inside the widths the latency table
allocates; fine-tuning is the runner's default.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..foundations.hparams import hp
from ..structured.selection.importance import CRITERIA
from ..structured.selection.latency_aware import COSTS, SOLVERS, latency_slim
from .base import PruningMethod
from .registry import register


@dataclass
class LatencyL1Hparams:
    criterion: str = hp("l1", "Importance inside the allocated widths (l1, l2, l1-filter, bn_scale, ...).",
                        choices=lambda: CRITERIA.names())
    backend: str = hp("torch", "Where latency is measured: torch (eager) or onnxruntime.",
                      choices=("torch", "onnxruntime"))
    batch_size: int = hp(1, "Batch size the speed-up is measured at.")
    threads: int = hp(1, "CPU threads the speed-up is measured with.")
    solver: str = hp("knapsack", "Width allocation: knapsack (exact, as in HALP) or greedy (step by step).",
                     choices=SOLVERS)
    max_ratio: float = hp(1.0, "Most of any group's width that may be removed, in (0, 1]; 1.0 = no cap.")
    cost: str = hp("channels", "How removed importance is counted: channels (mean-normalised), params (weighted by "
                               "the weights a channel carries), absolute (raw scores, e.g. taylor), share "
                               "(-log of each group's kept share) or sensitivity (the measured loss increase of "
                               "each role at each width, on data_samples training samples).", choices=COSTS)
    data_samples: int = hp(256, "Labelled training samples for criterion=taylor or cost=sensitivity (seeded by "
                                "the run's seed).")


@register
class LatencyL1(PruningMethod):
    name = "l1-latency"
    kind = "structured"
    target_name = "latency reduction"
    Hparams = LatencyL1Hparams

    def prune(self, model, target, ctx):
        import torch

        if not 0.0 < target < 1.0:
            raise ValueError(f"l1-latency: target is the fraction of latency removed, in (0, 1); got {target}")
        x = ctx.data.example_inputs(self.hp.batch_size)
        needs_data = self.hp.criterion == "taylor" or self.hp.cost == "sensitivity"
        data = ctx.batch(self.hp.data_samples) if needs_data else None
        before = torch.get_num_threads()
        try:
            return latency_slim(self.copy(model).eval(), x, 1.0 / (1.0 - target), criterion=self.hp.criterion,
                                backend=self.hp.backend, threads=self.hp.threads, solver=self.hp.solver,
                                max_ratio=self.hp.max_ratio, cost=self.hp.cost, data=data)
        finally:
            torch.set_num_threads(before)
