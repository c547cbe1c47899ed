"""Experiment configs (YAML), validated before any work starts.

Every problem is collected and reported at once, naming the field and listing valid
choices, so a user fixes a config in one go.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..foundations.hparams import coerce, from_dict, hp
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


# Help for builder options (model and dataset builders are plain functions, so their
# options carry no help of their own); `prunekit list` shows these.
OPTION_HELP = {
    "width": "Channel-width multiplier (1.0 = the paper's network).",
    "mlp7-linear.width": "Hidden units of each of the six hidden layers (paper: 100).",
    "option": "ResNet shortcut: A (zero-padding, parameter-free, as in TPP's CIFAR setting) or B (1x1 conv).",
    "in_features": "Input features of the first Linear layer; default channels x size x size (set automatically "
                   "for 1-D data).",
    "act": "Activation between layers: linear (none, as in TPP's MLP-7-Linear), relu or tanh.",
    "depth": "Number of transformer blocks.", "dim": "Embedding width.", "heads": "Attention heads per block.",
    "mlp_ratio": "MLP hidden width as a multiple of dim.", "patch": "Patch size in pixels.",
    "as_image": "Give samples as (1, 1, 40) images so 2-D conv nets run on them.",
    "path": "Folder holding train/<class>/ and val/<class>/ (or test/).", "size": "Images are resized to size x size.",
    "n_train": "Training samples.", "n_test": "Test samples.", "num_classes": "Number of classes.",
    "shape": "Shape of one input, e.g. [3, 32, 32].",
    "root": "Directory holding (or receiving) the dataset files.", "resize": "Resize images to this square size.",
    "pad": "Zero-pad images by this many pixels on each side.",
    "normalize_inputs": "Normalise with the dataset's mean/std (or the training set's statistics).",
    "augment": "Random crop (pad 4) and horizontal flip during training (CIFAR-style).",
    "val_fraction": "Fraction of the training set held out (stratified) as a validation split for model selection.",
    "download": "Download missing files (checksum-verified) when a network is reachable.",
}


def named_params(fn, reserved: tuple = ()) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items() if n not in reserved and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def takes_kwargs(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to default values' types
        return {}


def option_errors(options: dict, valid: dict[str, tuple], what: str) -> list[str]:
    """Unknown names and values of the wrong type, checked against builders' signatures.

    ``valid`` maps an option name to (builder function, its inspect.Parameter)."""
    errors = []
    unknown = sorted(set(options) - set(valid))
    if unknown:
        errors.append(f"{what}: unknown option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    for k, v in options.items():
        if k not in valid:
            continue
        fn, param = valid[k]
        t = _hints(fn).get(k)
        if t is None and param.default is not inspect.Parameter.empty and param.default is not None:
            t = type(param.default)
        if t in (int, float, bool, str) or typing.get_origin(t) is not None:
            try:
                coerce(v, t, f"{what}: {k}")
            except ValueError as e:
                errors.append(str(e))
    return errors


def dataset_option_table(name: str) -> dict[str, tuple]:
    from .. import data as datasets

    # load()'s shared options, then the loader's own (load passes **kw through to it)
    table = {n: (datasets.load, p) for n, p in named_params(datasets.load, ("name", "seed")).items()}
    fn = datasets.DATASETS.get(name)
    table.update({n: (fn, p) for n, p in named_params(fn, ("root", "download", "seed")).items()})
    return table


def model_option_table(name: str) -> dict[str, tuple] | None:
    from ..models import MODELS

    fn = MODELS.get(name)
    if takes_kwargs(fn):
        return None  # anything goes; the builder itself checks
    return {n: (fn, p) for n, p in named_params(fn, ("in_channels", "input_size", "num_classes")).items()}


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    from ..data import DATASETS
    from ..methods import METHODS
    from ..models import MODELS

    errors = []
    if cfg.dataset not in DATASETS:
        errors.append(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS.names())}")
    if cfg.model not in MODELS:
        errors.append(f"unknown model {cfg.model!r}; valid: {', '.join(MODELS.names())}")
    if cfg.dataset in DATASETS:
        errors += option_errors(cfg.dataset_options, dataset_option_table(cfg.dataset),
                                f"dataset_options of {cfg.dataset!r}")
        if "seed" in cfg.dataset_options:
            errors.append("dataset_options: seed is set by the config's top-level seed field")
    if cfg.model in MODELS:
        table = model_option_table(cfg.model)
        if table is not None:
            errors += option_errors(cfg.model_options, table, f"model_options of {cfg.model!r}")
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
            if not isinstance(t, (int, float)) or isinstance(t, bool):
                errors.append(f"method {name!r}: target {t!r} must be a number in [0, 1)")
            elif not 0.0 <= t < 1.0:
                errors.append(f"method {name!r}: target {t!r} is outside [0, 1)")
        try:
            from ..methods import get

            get(name, m.get("options") or {})
        except (ValueError, TypeError) as e:
            errors.append(str(e))
        specs.append(MethodSpec(name, list(targets), dict(m.get("options") or {})))
    if errors:  # one line per problem, all at once
        raise ConfigError("\n".join(errors))
    cfg.methods = specs
    return cfg


def load_config(path: str | None) -> ExperimentConfig:
    if path is None:
        return validate(default_config())
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory; give a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = p.read_bytes()
    try:
        if b"\x00" in data[:4096]:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {p} is a binary file, not YAML text") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{p} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of config fields")
    try:
        cfg = from_dict(ExperimentConfig, raw, where="config")
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    return validate(cfg)
