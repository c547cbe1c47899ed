"""A run directory's lifecycle: refuse to clobber it, resume it only under the same config.

Each finished stage depends on some config fields: the dense model on the data, model,
pretraining, seed and rewind point; every result row also on the fine-tune settings, the
latency batch and its method's options. ``stages.json`` records those fields as they were
normalised (defaults filled in) when the run started, and each row in ``summary.json``
carries a hash of its own. On ``--resume`` a changed field that a finished stage depends
on is refused by name, so a summary can never mix results of two configs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

from ..foundations.hparams import from_dict, to_dict
from ..foundations.io import atomic_write_json, clean_orphans
from .config import ConfigError, ExperimentConfig

DENSE_FIELDS = ("dataset", "dataset_options", "model", "model_options", "checkpoint", "pretrain", "seed",
                "rewind_iterations")
RESULT_FIELDS = ("finetune", "latency_batch")
STAGES_FILE = "stages.json"
# everything a run writes; --force deletes exactly these, nothing else the user put there
ARTIFACTS = ("config.json", STAGES_FILE, "summary.json", "report.md", "accuracy_vs_sparsity.png",
             "dense.safetensors", "dense.ckpt.safetensors", "rewind.safetensors", "dense_metrics.jsonl")


def normalised(cfg: ExperimentConfig) -> dict:
    """The config with every default filled in, so `lr: 0.05` and an omitted lr compare equal
    when 0.05 is the default."""
    from ..methods import get
    from ..training import TrainHparams

    d = to_dict(cfg)
    for key in ("pretrain", "finetune"):
        d[key] = to_dict(from_dict(TrainHparams, {"seed": cfg.seed, **getattr(cfg, key)}, where=key))
    d["methods"] = [{"name": m.name, "targets": list(m.targets),
                     "options": dataclasses.asdict(get(m.name, m.options).hp)} for m in cfg.methods]
    return d


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_hash(norm: dict, method: dict, target: float) -> str:
    """What one result depends on."""
    return digest({**{k: norm[k] for k in DENSE_FIELDS + RESULT_FIELDS}, "method": method["name"],
                   "options": method["options"], "target": target})


def _diff(old, new, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{prefix}.{k}")
        return out
    return [] if old == new else [prefix]


# outputs that hold work (training or results); a directory with only a config in it
# (a run that failed its checks) holds nothing to lose
WORK = ("summary.json", "dense.safetensors", "dense.ckpt.safetensors", "rewind.safetensors")


def existing_artifacts(run_dir: Path) -> list[str]:
    return [a for a in WORK if (run_dir / a).exists()]


def check_writable(out_dir: Path) -> None:
    """Fail before any work if outputs cannot be written (tested by writing, which also
    catches read-only file systems, where permission bits say nothing)."""
    p = out_dir
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"out_dir {out_dir} cannot be created: {p} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ConfigError(f"out_dir {out_dir} is not writable ({p}: {e.strerror or e})") from e


def check_run_dir(cfg: ExperimentConfig, resume: bool, force: bool) -> None:
    """Raise ConfigError if this run may not start in its directory; writes nothing."""
    run_dir = Path(cfg.out_dir) / cfg.name
    check_writable(run_dir)
    found = existing_artifacts(run_dir) if run_dir.is_dir() else []
    if force or not found:
        return
    if not resume:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(found)}); use --resume to continue it "
                          f"or --force to start over")
    stages_path = run_dir / STAGES_FILE
    if not stages_path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no {STAGES_FILE} (written by an older prunekit or "
                          f"not a run directory); use --force to start over")
    try:
        old = json.loads(stages_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot resume {run_dir}: {stages_path} is corrupted ({e}); use --force") from e
    new = normalised(cfg)
    changed = []
    for k in DENSE_FIELDS + RESULT_FIELDS:
        changed += _diff(old.get(k), new[k], k)
    if not changed:  # rows are judged only once the stages they build on are unchanged
        changed += _changed_rows(run_dir / "summary.json", new)
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: the config changed in fields its finished stages depend on: "
                          f"{', '.join(changed)}; restore them, or use --force to start over")


def _changed_rows(summary_path: Path, new: dict) -> list[str]:
    if not summary_path.is_file():
        return []
    try:
        rows = json.loads(summary_path.read_text()).get("results", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(f"cannot resume: {summary_path} is corrupted ({e}); use --force") from e
    out = []
    for r in rows:
        spec = next(((i, m) for i, m in enumerate(new["methods"])
                     if m["name"] == r.get("method") and r.get("target") in m["targets"]), None)
        if spec is None:
            out.append(f"methods (the finished result {r.get('method')} @ {r.get('target')} is no longer listed)")
        elif r.get("config_hash") != row_hash(new, spec[1], r["target"]):
            out.append(f"methods[{spec[0]}].options ({r['method']} @ {r['target']})")
    return out


def init_run_dir(cfg: ExperimentConfig, resume: bool, force: bool) -> Path:
    """Create (or, with force, empty) the run directory and record the config and its stages."""
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for a in ARTIFACTS:
            (run_dir / a).unlink(missing_ok=True)
    clean_orphans(run_dir)  # temp files of a writer killed mid-write
    atomic_write_json(run_dir / "config.json", to_dict(cfg))
    if not (resume and (run_dir / STAGES_FILE).exists()):
        atomic_write_json(run_dir / STAGES_FILE, normalised(cfg))
    return run_dir
