"""Experiment runner: config -> dense training -> each method at each target -> fine-tune -> report."""
from .config import ExperimentConfig, default_config, load_config
from .run import run_experiment

__all__ = ["ExperimentConfig", "default_config", "load_config", "run_experiment"]
