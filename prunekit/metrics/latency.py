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
