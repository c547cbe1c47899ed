"""Experiment configs (YAML), validated before any work starts.

Every problem is collected and reported at once, naming the field and listing valid
choices, so a user fixes a config in one go.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..foundations.hparams import from_dict, hp
from ..training import TrainHparams


class ConfigError(ValueError):
    pass


@dataclass
class MethodSpec:
    name: str
    targets: list
    options: dict = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = hp("default", "Run name; outputs go to <out_dir>/<name>/.")
    dataset: str = hp("mnist5k", "Dataset name (prunekit list).")
    dataset_options: dict = hp({}, "Options for prunekit.data.load (resize, pad, val_fraction, augment, root...).")
    model: str = hp("lenet5-caffe", "Model name (prunekit list).")
    model_options: dict = hp({}, "Options for the model builder (width, option...).")
    checkpoint: str | None = hp(None, "Dense checkpoint (safetensors) to load instead of pretraining.")
    pretrain: dict = hp({}, "TrainHparams for dense training.")
    finetune: dict = hp({}, "TrainHparams for fine-tuning after pruning.")
    methods: list = hp([], "List of {name, targets, options}.")
    seed: int = hp(0, "Seed for model init and data order.")
    out_dir: str = hp("runs", "Where runs are written.")
    rewind_iterations: int = hp(0, "Record dense weights after this many iterations (rewinding methods).")
    latency_batch: int = hp(1, "Batch size for the latency measurement.")


def default_config() -> ExperimentConfig:
    """The built-in demo: LeNet-5-Caffe on mnist5k, under 10 minutes on 2 cores."""
    return ExperimentConfig(
        dataset_options={"val_fraction": 0.1},
        pretrain={"epochs": 20, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"},
        finetune={"epochs": 8, "batch_size": 64, "lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine"},
        methods=[
            # unstructured: target = fraction of conv/linear weights removed
            {"name": "magnitude", "targets": [0.9, 0.98]},
            {"name": "random", "targets": [0.9, 0.98]},
            {"name": "snip", "targets": [0.98]},
            {"name": "espn", "targets": [0.98]},
            # structured: target = fraction of channels removed per layer (physically)
            {"name": "l1", "targets": [0.3, 0.5]},
            {"name": "tpp", "targets": [0.5], "options": {"preset": "demo"}},
        ],
        rewind_iterations=60,
    )


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    from ..data import DATASETS
    from ..methods import METHODS
    from ..models import MODELS

    errors = []
    if cfg.dataset not in DATASETS:
        errors.append(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS.names())}")
    if cfg.model not in MODELS:
        errors.append(f"unknown model {cfg.model!r}; valid: {', '.join(MODELS.names())}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        errors.append(f"checkpoint file not found: {cfg.checkpoint}")
    for key in ("pretrain", "finetune"):
        try:
            from_dict(TrainHparams, getattr(cfg, key), where=key)
        except (ValueError, TypeError) as e:
            errors.append(str(e))
    specs = []
    if not cfg.methods:
        errors.append("no methods listed")
    for i, m in enumerate(cfg.methods):
        if isinstance(m, MethodSpec):
            m = dataclasses.asdict(m)
        if not isinstance(m, dict) or "name" not in m:
            errors.append(f"methods[{i}] must be a mapping with 'name' and 'targets'")
            continue
        extra = set(m) - {"name", "targets", "options"}
        if extra:
            errors.append(f"methods[{i}] has unknown keys {sorted(extra)}; valid: name, targets, options")
        name = m["name"]
        if name not in METHODS:
            errors.append(f"unknown method {name!r}; valid: {', '.join(METHODS.names())}")
            continue
        targets = m.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"method {name!r} needs a non-empty list of targets")
            continue
        for t in targets:
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= t < 1.0:
                errors.append(f"method {name!r}: target {t!r} is outside [0, 1)")
        try:
            from ..methods import get

            get(name, m.get("options") or {})
        except (ValueError, TypeError) as e:
            errors.append(str(e))
        specs.append(MethodSpec(name, list(targets), dict(m.get("options") or {})))
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    cfg.methods = specs
    return cfg


def load_config(path: str | None) -> ExperimentConfig:
    if path is None:
        return validate(default_config())
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of config fields")
    try:
        cfg = from_dict(ExperimentConfig, raw, where="config")
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    return validate(cfg)
