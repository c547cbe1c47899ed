"""CPU latency with ``torch.utils.benchmark`` (eval, inference mode, fixed threads, median)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils import benchmark


def latency_ms(model: nn.Module, inputs: torch.Tensor, num_threads: int = 1, min_run_time: float = 0.3,
               warmup: int = 3) -> float:
    """Median milliseconds per forward pass."""
    was = model.training
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        t = benchmark.Timer("model(x)", globals={"model": model, "x": inputs}, num_threads=num_threads)
        m = t.blocked_autorange(min_run_time=min_run_time)
    model.train(was)
    return m.median * 1e3


def compare_latency(models: dict[str, nn.Module], inputs, num_threads: int = 1, rounds: int = 5,
                    min_run_time: float = 0.05, warmup: int = 3) -> dict[str, float]:
    """Median ms per forward for several models, measured in interleaved rounds.

    On a shared machine the load changes from second to second; timing model A for a
    while and then model B would fold that drift into their ratio. Alternating short
    measurements (A B A B ...) exposes every model to the same conditions, and the median
    over rounds discards the rounds a burst of load spoiled."""
    from ..foundations.inputs import call_model

    states = {k: m.training for k, m in models.items()}
    timers = {}
    for k, m in models.items():
        m.eval()
        timers[k] = benchmark.Timer("f(model, x)", globals={"f": call_model, "model": m, "x": inputs},
                                    num_threads=num_threads)
    per: dict[str, list[float]] = {k: [] for k in models}
    try:
        with torch.inference_mode():
            for k, m in models.items():
                for _ in range(warmup):
                    call_model(m, inputs)
            for _ in range(rounds):
                for k in models:
                    per[k].append(timers[k].blocked_autorange(min_run_time=min_run_time).median * 1e3)
    finally:
        for k, m in models.items():
            m.train(states[k])
    return {k: sorted(v)[len(v) // 2] for k, v in per.items()}
