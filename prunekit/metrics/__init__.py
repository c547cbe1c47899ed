"""Metrics: parameter counts, FLOPs (dense and effective), latency, accuracy, JSV."""
from .flops import flops
from .latency import latency_ms
from .params import count_nonzero, count_params

__all__ = ["count_nonzero", "count_params", "flops", "latency_ms"]
