"""CPU latency with ``torch.utils.benchmark`` (eval, inference mode, fixed threads, median).

Two backends: ``torch`` (eager PyTorch) and ``onnxruntime`` (the model exported with
``prunekit.deploy.to_onnx``, BN folded, verified against PyTorch, then run in an ONNX
Runtime session with the same thread count). Both are timed by the same Timer.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
from torch.utils import benchmark


def latency_ms(model: nn.Module, inputs: torch.Tensor, num_threads: int = 1, min_run_time: float = 0.3,
               warmup: int = 3, backend: str = "torch") -> float:
    """Median milliseconds per forward pass."""
    if backend != "torch":
        return compare_latency({"m": model}, inputs, num_threads, rounds=3, min_run_time=min_run_time / 3,
                               warmup=warmup, backend=backend)["m"]
    was = model.training
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        t = benchmark.Timer("model(x)", globals={"model": model, "x": inputs}, num_threads=num_threads)
        m = t.blocked_autorange(min_run_time=min_run_time)
    model.train(was)
    return m.median * 1e3


class OrtRunner:
    """A callable running an exported model in ONNX Runtime, so both backends share one timer."""

    def __init__(self, model: nn.Module, inputs, threads: int = 1, workdir=None):
        import tempfile
        from pathlib import Path

        from ..deploy.onnx import onnx_feed, onnx_session, to_onnx

        self._tmp = tempfile.TemporaryDirectory(dir=workdir)
        path = Path(self._tmp.name) / "model.onnx"
        to_onnx(model, inputs, path)
        self.session = onnx_session(path, threads)
        self.feed = onnx_feed(self.session, inputs)
        self.training = False

    def __call__(self, *_args, **_kw):
        return self.session.run(None, self.feed)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self


def _runner(model, inputs, backend: str, threads: int):
    if backend == "torch":
        return model
    if backend == "onnxruntime":
        return OrtRunner(model, inputs, threads)
    raise ValueError(f"unknown latency backend {backend!r}; valid: torch, onnxruntime")


def compare_latency(models: dict[str, nn.Module], inputs, num_threads: int = 1, rounds: int = 5,
                    min_run_time: float = 0.05, warmup: int = 3, backend: str = "torch",
                    clock: str | None = None) -> dict[str, float]:
    """Median ms per forward for several models, measured in interleaved rounds.

    On a shared machine the load changes from second to second; timing model A for a
    while and then model B would fold that drift into their ratio. Alternating short
    measurements (A B A B ...) exposes every model to the same conditions, and the median
    over rounds discards the rounds a burst of load spoiled."""
    from ..foundations.inputs import call_model

    clock = clock or ("cpu" if num_threads == 1 else "wall")
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    timer_fn = time.process_time if clock == "cpu" else time.perf_counter
    models = {k: _runner(m, inputs, backend, num_threads) for k, m in models.items()}
    states = {k: m.training for k, m in models.items()}
    timers = {}
    for k, m in models.items():
        m.eval()
        timers[k] = benchmark.Timer("f(model, x)", globals={"f": call_model, "model": m, "x": inputs},
                                    num_threads=num_threads, timer=timer_fn)
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
