"""HuggingFace ``transformers`` round trips for slim models.

A slim model whose blocks all kept the same widths (``slim(..., uniform_layers=True)``)
can be described by the model's own config with a few fields changed (heads, KV heads,
head_dim, intermediate size, ...). ``standard_config`` finds those fields without any
per-architecture table: it proposes, for every integer config field, the new sizes the
plan gave to tensors and attributes of the field's old value, and accepts a change only
when a model built from the changed config (on the meta device, so nothing is allocated)
has exactly the slim model's parameter shapes and the slimmed attributes (``num_heads``,
``head_dim``, ...). When every shape and attribute matches, ``save_pruned`` writes that
config, and plain ``AutoModel*.from_pretrained(dir)`` rebuilds the model. Otherwise
``prunekit.load_pruned(dir)`` rebuilds it from the base config stored in the plan.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _meta_build(cls, config) -> nn.Module | None:
    try:
        with torch.device("meta"):
            return cls(config)
    except Exception:  # noqa: BLE001 - an invalid candidate config is simply rejected
        return None


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


_SCALARS = (int, float, bool, str)


def module_attrs(model: nn.Module) -> dict[tuple[str, str], object]:
    """Every plain scalar (or tuple of scalars) attribute of every submodule: head counts,
    head_dim, feature sizes, scaling factors. Shapes alone cannot tell 4 heads of 4 from
    2 heads of 8; these can."""
    out = {}
    for name, mod in model.named_modules():
        for k, v in vars(mod).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, _SCALARS) or (isinstance(v, (tuple, list)) and all(isinstance(x, _SCALARS) for x in v)):
                out[(name, k)] = _norm(v)
    return out


def _mismatch(candidate: nn.Module | None, shapes: dict, attrs: dict) -> int:
    """Parameter shapes that differ, plus attributes the slimming set that differ."""
    if candidate is None:
        return 10**9
    sd = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
    bad = len(set(sd) ^ set(shapes)) + sum(sd[k] != shapes[k] for k in sd.keys() & shapes.keys())
    got = module_attrs(candidate)
    bad += sum(1 for key, v in attrs.items() if key in got and got[key] != v)
    return bad


def synthetic_inputs(model: nn.Module, batch: int = 2):
    """Inputs for the model's main input (token ids, pixels or audio), from its config; None
    if the kind is unknown."""
    cfg, name = model.config, getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    if name == "input_ids" and getattr(cfg, "vocab_size", None):
        return {"input_ids": torch.randint(0, cfg.vocab_size, (batch, 8), generator=g)}
    if name == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return {"pixel_values": torch.randn(batch, getattr(cfg, "num_channels", 3), h, w, generator=g)}
    if name == "input_values":
        return {"input_values": torch.randn(batch, 1600, generator=g)}
    return None


def _outputs_match(slim_model, cls, cfg, inputs, atol: float = 1e-5) -> bool:
    from .onnx import flat_outputs

    try:
        rebuilt = cls(cfg).eval()
        missing, unexpected = rebuilt.load_state_dict(slim_model.state_dict(), strict=False)
        if missing or unexpected:
            return False
        was = slim_model.training
        slim_model.eval()
        with torch.no_grad():
            a = flat_outputs(slim_model(**inputs))
            b = flat_outputs(rebuilt(**inputs))
        slim_model.train(was)
    except Exception:  # noqa: BLE001 - a config that cannot run is not the slim model's config
        return False
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=atol) for x, y in zip(a, b))


def _proposals(base_cfg: dict, plan: dict, fresh: nn.Module) -> dict[str, set[int]]:
    """Candidate new values per integer config field, from what the plan did to sizes equal
    to the field's old value."""
    by_old: dict[int, set[int]] = {}
    sizes = {(int(s["size"]), len(s["keep"])) for s in plan["slices"]}
    for old, new in sizes:
        by_old.setdefault(old, set()).add(new)
    # counts whose product with a kept per-unit size gives a sliced size (heads x head_dim):
    # v heads of S/v channels, S -> S' keeps S'/(S/v) of them
    ints = {v for v in base_cfg.values() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    for v in ints:
        for old, new in sizes:
            if old % v == 0 and new % (old // v) == 0 and new != old:
                by_old.setdefault(v, set()).add(new // (old // v))
    for name, kv in plan.get("attrs", {}).items():
        try:
            mod = fresh.get_submodule(name) if name else fresh
        except AttributeError:
            continue
        for k, v in kv.items():
            old = getattr(mod, k, None)
            if isinstance(old, int) and isinstance(v, int) and old != v:
                by_old.setdefault(old, set()).add(v)
    out: dict[str, set] = {f: set(by_old[v]) for f, v in base_cfg.items()
                           if isinstance(v, int) and not isinstance(v, bool) and v in by_old}
    # per-stage lists (hidden_sizes=[16, 32]): every element mapped where its mapping is unique
    for f, v in base_cfg.items():
        if isinstance(v, list) and v and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
            new = [next(iter(by_old[e])) if len(by_old.get(e, ())) == 1 else e for e in v]
            if new != v:
                out[f] = {tuple(new)}
    return out


def _moves(proposals, order, pairs: bool):
    singles = [((f, v),) for f in order for v in sorted(proposals[f])]
    if not pairs:
        return singles
    # heads and KV heads (or width and head count) may only fit together
    return [a + b for i, a in enumerate(singles) for b in singles[i + 1:] if a[0][0] != b[0][0]]


class _Budget:
    """Caps the candidate configs built per search: a model no config can describe must
    not cost minutes at save time."""

    def __init__(self, n: int):
        self.left = n

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _greedy(cls, base_config, proposals, order, shapes, attrs, budget: _Budget):
    cfg = copy.deepcopy(base_config)
    best = _mismatch(_meta_build(cls, cfg), shapes, attrs)
    for _ in range(4):  # a change may only pay off after another one
        improved = False
        for pairs in (False, True):
            for move in _moves(proposals, order, pairs):
                if all(_norm(getattr(cfg, f, None)) == _norm(v) for f, v in move):
                    continue
                if not budget.take():
                    return None
                trial = copy.deepcopy(cfg)
                for f, v in move:
                    setattr(trial, f, list(v) if isinstance(v, tuple) else v)
                score = _mismatch(_meta_build(cls, trial), shapes, attrs)
                if score < best:
                    cfg, best, improved = trial, score, True
            if improved or best == 0:
                break
        if best == 0 or not improved:
            break
    return cfg if best == 0 else None


def standard_config(slim_model: nn.Module, plan: dict, base_config, example_inputs=None,
                    max_candidates: int = 400):
    """A config that rebuilds ``slim_model`` exactly with its own class, or None.

    Shapes cannot tell 4 heads of 4 channels from 2 heads of 8, so every candidate whose
    shapes match is finally checked by building it for real, loading the slim weights and
    comparing outputs (on ``example_inputs``, or inputs synthesised from the config)."""
    cls = type(slim_model)
    inputs = example_inputs if example_inputs is not None else synthetic_inputs(slim_model)
    if not isinstance(inputs, dict):
        return None  # HF models take keyword inputs; without them nothing can be verified
    fresh = _meta_build(cls, base_config)
    if fresh is None:
        return None
    shapes = {k: tuple(v.shape) for k, v in slim_model.state_dict().items()}
    base_attrs = module_attrs(fresh)
    # only attributes the slimming changed: others may be stale copies nothing reads
    attrs = {k: v for k, v in module_attrs(slim_model).items() if base_attrs.get(k, v) != v}
    proposals = _proposals(base_config.to_dict(), plan, fresh)
    fields = sorted(proposals)
    tried = []
    # greedy descent from the base config, then from each single change forced first: a
    # shapes-only optimum can be the wrong one (head_dim halved instead of the head count),
    # and only the output check tells them apart
    starts = [()] + _moves(proposals, fields, pairs=False)
    budget = _Budget(max_candidates)
    for first in starts:
        begin = copy.deepcopy(base_config)
        for f, v in first:
            setattr(begin, f, list(v) if isinstance(v, tuple) else v)
        cfg = _greedy(cls, begin, proposals, fields, shapes, attrs, budget)
        if cfg is None or any(cfg.to_dict() == t for t in tried):
            continue
        tried.append(cfg.to_dict())
        if _outputs_match(slim_model, cls, cfg, inputs):
            return cfg
    return None


def hf_record(model: nn.Module) -> dict:
    """What ``load_pruned(dir)`` needs to rebuild an HF model with no model object given."""
    return {"class": type(model).__name__, "base_config": model.config.to_dict()}


def build_base(record: dict) -> nn.Module:
    import transformers

    cls = getattr(transformers, record["class"], None)
    if cls is None:
        raise ValueError(f"transformers has no class {record['class']!r} (installed: {transformers.__version__})")
    cfg = cls.config_class.from_dict(record["base_config"])
    return cls(cfg)
