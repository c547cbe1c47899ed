"""Selection: which channels go. ``importance`` (criteria), ``planner`` (ratios to removal
plans, uniform or global), ``latency_aware`` (plans that meet a measured speed-up)."""
