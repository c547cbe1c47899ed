"""Metrics: parameter counts, FLOPs (dense and effective), latency, accuracy, JSV."""
from .flops import flops
from .jsv import jacobian_singular_values
from .latency import latency_ms
from .params import count_nonzero, count_params

__all__ = ["count_nonzero", "count_params", "flops", "jacobian_singular_values", "latency_ms"]
