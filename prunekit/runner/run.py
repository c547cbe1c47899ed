"""Run an experiment: dense model -> every (method, target) -> fine-tune -> measure -> report.

``summary.json`` is rewritten atomically after every result, so a killed run loses at
most the result in progress. ``resume=True`` continues dense training from its
checkpoint (rewind point included), keeps finished results and recomputes the one that
was in progress from its seed, so the resumed summary equals an uninterrupted run's
(timings aside). A resume under a config that changed a finished stage is refused
(see ``rundir.py``).
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
from ..foundations.io import load_tensors, save_tensors, atomic_write_json
from ..methods import Context, get
from ..metrics import count_nonzero, count_params, flops
from ..metrics.latency import compare_latency
from ..training import TrainHparams, evaluate, train
from ..training.callbacks import RecordAt
from ..training.progress import phase
from .config import ConfigError, ExperimentConfig
from .report import render
from .rundir import check_run_dir, init_run_dir, normalised, row_hash

# fields of a result row that measure time, not the model: they differ between any two runs
TIMING_FIELDS = ("seconds", "latency_ms", "dense_latency_ms", "speedup", "deployed_as")  # deployed_as: the faster kernel


class MethodError(RuntimeError):
    """A pruning method failed at run time; the message names the method, target and stage."""


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


def weights_digest(model) -> str:
    """One hash of every tensor in the state dict: two results with the same digest have
    bit-identical weights (the resume tests compare it; a changed result cannot hide
    behind an accuracy that happens to agree)."""
    import hashlib

    from ..foundations.io import tensor_digest

    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + tensor_digest(v).encode())
    return h.hexdigest()


def deployable(model, example, threads: int = 1):
    """The model as it would ship (``deploy.sparse.fastest_deployable``): masks baked into
    plain weights (a parametrized forward recomputes weight * mask on every call and would
    be timed slower than it deploys), CSR kernels where they measure faster. Returns (model, how)."""
    from ..deploy.sparse import fastest_deployable

    return fastest_deployable(model, example, threads)


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run_experiment(cfg: ExperimentConfig, progress: bool = True, resume: bool = False, log=print,
                   force: bool = False, threads: int | None = None) -> dict:
    check_run_dir(cfg, resume, force)  # before any work: refuse to clobber or to mix configs
    if threads is not None:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    try:
        data = datasets.load(cfg.dataset, seed=cfg.seed, **cfg.dataset_options)
    except (ValueError, TypeError) as e:  # option values the signature check cannot judge
        raise ConfigError(f"dataset {cfg.dataset!r} cannot be loaded with these dataset_options: {e}") from e

    opts = dict(cfg.model_options)
    if len(data.input_shape) == 2 and "in_features" in inspect.signature(models.MODELS.get(cfg.model)).parameters:
        opts.setdefault("in_features", math.prod(data.input_shape))  # 1-D signals into an MLP

    def build():
        return models.build(cfg.model, data.in_channels, data.input_size, data.num_classes, **opts)

    try:
        model = build()
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"model {cfg.model!r} cannot be built for {cfg.dataset} "
                          f"(input {tuple(data.input_shape)}): {e}") from e
    run_dir = init_run_dir(cfg, resume, force)  # nothing is written before the checks above pass
    norm = normalised(cfg)
    pre = from_dict(TrainHparams, {"seed": cfg.seed, **cfg.pretrain}, where="pretrain")
    fin = from_dict(TrainHparams, {"seed": cfg.seed, **cfg.finetune}, where="finetune")
    rec = RecordAt(cfg.rewind_iterations)
    dense_path, rewind_path = run_dir / "dense.safetensors", run_dir / "rewind.safetensors"
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
        log(f"loaded dense weights from {cfg.checkpoint}")
    elif resume and dense_path.exists():
        load_weights(model, dense_path)
        log(f"resumed: dense weights from {dense_path}")
    else:
        log(f"training dense {cfg.model} on {cfg.dataset} ({pre.epochs} epochs)")
        with phase("dense"):
            train(model, data, pre, callbacks=[rec] if cfg.rewind_iterations else [], progress=progress,
                  checkpoint_path=run_dir / "dense.ckpt.safetensors", checkpoint_every=200, resume=resume,
                  log_path=run_dir / "dense_metrics.jsonl")
        # the rewind point first: dense.safetensors existing means both are complete
        if rec.state is not None:
            save_tensors(rewind_path, rec.state, {"iteration": cfg.rewind_iterations})
        save_tensors(dense_path, model.state_dict(), {"model": cfg.model})
    rewind_state = None
    if cfg.rewind_iterations and not cfg.checkpoint:
        if not rewind_path.exists():
            raise MethodError(f"{rewind_path} is missing although dense training finished; use --force to retrain")
        rewind_state = load_tensors(rewind_path)[0]
    example = data.example_inputs(cfg.latency_batch)
    threads_now = torch.get_num_threads()
    dense = measure(model, data, example)
    dense["weights_blake2b"] = weights_digest(model)
    dense_times = [compare_latency({"dense": model}, example, num_threads=threads_now)["dense"]]
    dense["latency_ms"] = dense_times[0]
    log(f"dense test accuracy {dense['test_accuracy']:.4f}")
    summary = {"name": cfg.name, "dataset": cfg.dataset, "model": cfg.model, "num_classes": data.num_classes,
               "dense": dense, "results": [],
               "latency": {"batch_size": cfg.latency_batch, "threads": threads_now,
                           "how": "median of 5 interleaved rounds (dense and pruned alternate), "
                                  "masks removed and CSR Linear kernels used where they measure faster"},
               "config": to_dict(cfg)}
    sp = run_dir / "summary.json"
    done = set()
    if resume and sp.exists():
        old = json.loads(sp.read_text())
        summary["results"] = old.get("results", [])
        done = {(r["method"], r["target"]) for r in summary["results"]}
    for spec, nspec in zip(cfg.methods, norm["methods"]):
        method = get(spec.name, spec.options)
        for target in spec.targets:
            if (spec.name, target) in done:
                continue
            row = _one_result(method, spec.name, target, model, data, ctx_args=dict(
                data=data, finetune=fin, pretrain=pre, build_model=build, example_inputs=data.example_inputs(2),
                seed=cfg.seed, progress=progress, rewind_state=rewind_state), example=example, threads=threads_now,
                dense_times=dense_times, seed=cfg.seed)
            row["config_hash"] = row_hash(norm, nspec, target)
            summary["results"].append(row)
            summary["dense"]["latency_ms"] = _median(dense_times)
            atomic_write_json(sp, summary)
            log(f"{spec.name} @ {target}: test accuracy {row['test_accuracy']:.4f} "
                f"({row['nonzero_params']:,} non-zero params, {row['seconds']} s)")
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(sp, summary)
    render(run_dir)
    log(f"wrote {sp}, {run_dir / 'report.md'}, {run_dir / 'accuracy_vs_sparsity.png'}")
    return summary


def _one_result(method, name, target, model, data, ctx_args, example, threads, dense_times, seed) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # every result starts from the same RNG state, so a rerun reproduces it
    ctx = Context(**ctx_args)
    label = f"{name} @ {target}"
    stage = "prune"
    try:
        with phase(f"{label}: prune"):
            pruned = method.prune(model, target, ctx)
        stage = "evaluate"
        after_prune = evaluate(pruned, data.test)["top1"]
        stage = "fine-tune"
        with phase(f"{label}: fine-tune"):
            result = method.finetune(pruned, ctx)
        stage = "measure"
        m = measure(pruned, data, example)
        shipped, how = deployable(pruned, example, threads)
        t = compare_latency({"dense": model, "pruned": shipped}, example, num_threads=threads)
    except Exception as e:  # noqa: BLE001 - re-raised with the context a user needs
        raise MethodError(f"{label} failed during {stage}: {type(e).__name__}: {e}") from e
    dense_times.append(t["dense"])
    return {"method": name, "kind": method.kind, "target": target, **m,
            "latency_ms": t["pruned"], "dense_latency_ms": t["dense"], "speedup": t["dense"] / t["pruned"],
            "deployed_as": how,
            "weights_blake2b": weights_digest(pruned),
            "accuracy_after_prune": after_prune,
            "best_test_accuracy": result.best_test_acc, "test_at_best_val": result.test_at_best_val,
            "seconds": round(time.perf_counter() - t0, 1)}
