"""Run an experiment: dense model -> every (method, target) -> fine-tune -> measure -> report.

``summary.json`` is rewritten atomically after every result, so a killed run loses at
most the result in progress; ``resume=True`` continues dense training from its
checkpoint and skips results already in the summary.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import torch

from .. import data as datasets
from .. import models
from ..foundations.hparams import from_dict, to_dict
from ..foundations.io import atomic_write_json, load_tensors, save_tensors
from ..methods import Context, get
from ..metrics import count_nonzero, count_params, flops, latency_ms
from ..training import TrainHparams, evaluate, train
from ..training.callbacks import RecordAt
from .config import ExperimentConfig
from .report import render


def load_weights(model, path) -> None:
    tensors, _ = load_tensors(path)
    if any(k.startswith("model.") for k in tensors):
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def measure(model, data, example) -> dict:
    acc = evaluate(model, data.test)
    return {"test_accuracy": acc["top1"], "params": count_params(model), "nonzero_params": count_nonzero(model),
            "flops": flops(model, example)["effective"]}


def run_experiment(cfg: ExperimentConfig, progress: bool = True, resume: bool = False, log=print) -> dict:
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", to_dict(cfg))
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = datasets.load(cfg.dataset, seed=cfg.seed, **cfg.dataset_options)

    opts = dict(cfg.model_options)
    if len(data.input_shape) == 2 and "in_features" in inspect.signature(models.MODELS.get(cfg.model)).parameters:
        opts.setdefault("in_features", math.prod(data.input_shape))  # 1-D signals into an MLP

    def build():
        return models.build(cfg.model, data.in_channels, data.input_size, data.num_classes, **opts)

    model = build()
    pre = from_dict(TrainHparams, {"seed": cfg.seed, **cfg.pretrain}, where="pretrain")
    fin = from_dict(TrainHparams, {"seed": cfg.seed, **cfg.finetune}, where="finetune")
    rec = RecordAt(cfg.rewind_iterations)
    dense_path = run_dir / "dense.safetensors"
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
        log(f"loaded dense weights from {cfg.checkpoint}")
    elif resume and dense_path.exists():
        load_weights(model, dense_path)
        log(f"resumed: dense weights from {dense_path}")
    else:
        log(f"training dense {cfg.model} on {cfg.dataset} ({pre.epochs} epochs)")
        train(model, data, pre, callbacks=[rec] if cfg.rewind_iterations else [], progress=progress,
              checkpoint_path=run_dir / "dense.ckpt.safetensors", checkpoint_every=200, resume=resume,
              log_path=run_dir / "dense_metrics.jsonl")
        save_tensors(dense_path, model.state_dict(), {"model": cfg.model})
        if rec.state is not None:
            save_tensors(run_dir / "rewind.safetensors", rec.state, {"iteration": cfg.rewind_iterations})
    rewind_state = None
    if (run_dir / "rewind.safetensors").exists():
        rewind_state = load_tensors(run_dir / "rewind.safetensors")[0]
    example = data.example_inputs(cfg.latency_batch)
    dense = measure(model, data, example)
    dense["latency_ms"] = latency_ms(model, example, min_run_time=0.1)
    log(f"dense test accuracy {dense['test_accuracy']:.4f}")
    summary = {"name": cfg.name, "dataset": cfg.dataset, "model": cfg.model, "dense": dense, "results": [],
               "config": to_dict(cfg)}
    sp = run_dir / "summary.json"
    done = set()
    if resume and sp.exists():
        old = json.loads(sp.read_text())
        summary["results"] = old.get("results", [])
        done = {(r["method"], r["target"]) for r in summary["results"]}
    for spec in cfg.methods:
        method = get(spec.name, spec.options)
        for target in spec.targets:
            if (spec.name, target) in done:
                continue
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed)
            ctx = Context(data=data, finetune=fin, pretrain=pre, build_model=build,
                          example_inputs=data.example_inputs(2), seed=cfg.seed, progress=progress,
                          rewind_state=rewind_state)
            pruned = method.prune(model, target, ctx)
            after_prune = evaluate(pruned, data.test)["top1"]
            result = method.finetune(pruned, ctx)
            m = measure(pruned, data, example)
            m["latency_ms"] = latency_ms(pruned, example, min_run_time=0.1)
            row = {"method": spec.name, "kind": method.kind, "target": target, **m,
                   "accuracy_after_prune": after_prune, "best_test_accuracy": result.best_test_acc,
                   "test_at_best_val": result.test_at_best_val, "seconds": round(time.perf_counter() - t0, 1)}
            summary["results"].append(row)
            atomic_write_json(sp, summary)
            log(f"{spec.name} @ {target}: test accuracy {m['test_accuracy']:.4f} "
                f"({m['nonzero_params']:,} non-zero params, {row['seconds']} s)")
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(sp, summary)
    render(run_dir)
    log(f"wrote {sp}, {run_dir / 'report.md'}, {run_dir / 'accuracy_vs_sparsity.png'}")
    return summary
