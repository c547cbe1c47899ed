"""``prunekit prune``: a user's own model in, a slim, verified, reloadable model out.

Every input is checked before any pruning, and the output directory is built in a temp
directory next to ``--out`` and renamed into place at the end: a failure leaves nothing
half-written in ``--out``.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..foundations.inputs import call_model
from ..foundations.io import CheckpointError, atomic_write_json, atomic_write_text, load_tensors


class PruneError(ValueError):
    """A user error in ``prunekit prune``: one line, exit code 2."""


def import_factory(spec: str):
    """``package.module:callable`` -> the callable."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise PruneError(f"--model must be an import path module:factory (e.g. mypkg.models:build_net), got {spec!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PruneError(f"--model {spec}: cannot import module {mod_name!r} ({e})") from e
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PruneError(f"--model {spec}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PruneError(f"--model {spec}: {attr!r} is not callable")
    return obj


def load_checkpoint(model: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise PruneError(f"--checkpoint {path}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                sd, _ = load_tensors(p)  # prunekit's own files: checksums verified
            except CheckpointError:
                sd = load_file(str(p))  # any other safetensors file
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise PruneError(f"--checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if any(k.startswith("model.") for k in sd) and not any(k.startswith("model.") for k in model.state_dict()):
        sd = {k[6:]: v for k, v in sd.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PruneError(f"--checkpoint {path} does not match the model: {first[-1].strip() if first else e}") from e
    if missing or unexpected:
        raise PruneError(f"--checkpoint {path} does not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise PruneError(f"--input-shape must be integers separated by commas (e.g. 1,3,224,224), got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise PruneError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def load_model(model_spec: str | None, hf: str | None, checkpoint: str | None):
    if (model_spec is None) == (hf is None):
        raise PruneError("give exactly one of --model module:factory or --hf DIR")
    if hf is not None:
        try:
            import transformers
        except ImportError as e:
            raise PruneError("--hf needs the transformers package") from e
        p = Path(hf)
        if not p.exists():
            raise PruneError(f"--hf {hf}: no such directory or config file")
        try:
            cfg = transformers.AutoConfig.from_pretrained(str(p.parent if p.is_file() else p))
            arch = (cfg.architectures or [None])[0]
            cls = getattr(transformers, arch, None) if arch else None
            has_weights = p.is_dir() and any(p.glob("*.safetensors")) or p.is_dir() and any(p.glob("*.bin"))
            if cls is None:
                cls = transformers.AutoModel
                model = cls.from_pretrained(str(p)) if has_weights else cls.from_config(cfg)
            else:
                model = cls.from_pretrained(str(p)) if has_weights else cls(cfg)
        except Exception as e:  # noqa: BLE001
            raise PruneError(f"--hf {hf}: cannot build the model ({type(e).__name__}: {e})") from e
    else:
        factory = import_factory(model_spec)
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001
            raise PruneError(f"--model {model_spec}: the factory failed ({type(e).__name__}: {e})") from e
        if not isinstance(model, nn.Module):
            raise PruneError(f"--model {model_spec} returned a {type(model).__name__}, not an nn.Module")
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model.eval()


def example_inputs(model, input_shape: str | None, inputs_file: str | None, is_hf: bool):
    if inputs_file:
        tensors, _ = load_tensors(inputs_file) if Path(inputs_file).is_file() else (None, None)
        if tensors is None:
            raise PruneError(f"--inputs {inputs_file}: no such file")
        return tensors if len(tensors) > 1 else next(iter(tensors.values()))
    if input_shape:
        return torch.randn(*parse_shape(input_shape))
    if is_hf:
        from .hf import synthetic_inputs

        x = synthetic_inputs(model, batch=1)
        if x is not None:
            return x
    raise PruneError("give --input-shape (e.g. 1,3,224,224) or --inputs FILE.safetensors")


def explain_model(model_spec: str | None = None, hf: str | None = None, checkpoint: str | None = None,
                  input_shape: str | None = None, inputs_file: str | None = None, ignore=(), log=print):
    """``prunekit prune --explain``: the channel-group coverage table, nothing pruned or written."""
    from ..structured import explain
    from .hf import is_hf

    model = load_model(model_spec, hf, checkpoint)
    x = example_inputs(model, input_shape, inputs_file, is_hf(model))
    try:
        e = explain(model, x, ignore=tuple(ignore))
    except Exception as err:  # noqa: BLE001 - a model that cannot be traced is a user error here
        raise PruneError(f"cannot analyse the model on {_describe(x)}: {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
    log(e.to_markdown())
    return e


def prune_to_dir(out: str, model_spec: str | None = None, hf: str | None = None, checkpoint: str | None = None,
                 input_shape: str | None = None, inputs_file: str | None = None, criterion: str = "l1",
                 ratio: float | None = None, flops_reduction: float | None = None, speedup: float | None = None,
                 ignore=(), uniform_layers: bool = False, onnx: bool = False, force: bool = False,
                 threads: int = 1, log=print) -> dict:
    from ..metrics import count_params, flops
    from ..metrics.latency import compare_latency
    from ..structured import check_exact, save_pruned, slim
    from ..structured.selection.importance import CRITERIA
    from .hf import is_hf

    targets = [t for t in (ratio, flops_reduction, speedup) if t is not None]
    if len(targets) != 1:
        raise PruneError("give exactly one of --ratio, --flops-reduction or --speedup")
    t = targets[0]
    if speedup is not None:
        if not speedup > 1.0:
            raise PruneError(f"--speedup must be greater than 1, got {speedup}")
    elif not 0.0 < t < 1.0:
        raise PruneError(f"{'--ratio' if ratio is not None else '--flops-reduction'} must be in (0, 1), got {t}")
    if criterion not in CRITERIA:
        raise PruneError(f"--criterion {criterion!r} is unknown; valid: {', '.join(CRITERIA.names())}")
    out_p = Path(out)
    if out_p.exists() and (not out_p.is_dir() or any(out_p.iterdir())) and not force:
        raise PruneError(f"--out {out} already exists and is not empty; use --force to replace it")
    model = load_model(model_spec, hf, checkpoint)
    x = example_inputs(model, input_shape, inputs_file, is_hf(model))
    try:
        with torch.no_grad():
            call_model(model, x)
    except Exception as e:  # noqa: BLE001
        raise PruneError(f"the model rejects the example inputs {_describe(x)}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        s = slim(model, x, ratio=ratio, criterion=criterion, ignore=tuple(ignore), flops_reduction=flops_reduction,
                 uniform_layers=uniform_layers, speedup=speedup, threads=threads,
                 backend="onnxruntime" if (onnx and speedup is not None) else "torch")
    except ValueError as e:
        raise PruneError(f"cannot prune to this target: {e}") from e
    plan_s = time.perf_counter() - t0
    s.eval()
    err = check_exact(model, s, inputs=x)
    f0, f1 = flops(model, x)["dense"], flops(s, x)["dense"]
    from ..structured.selection.latency_aware import latency_report

    report = {"source": model_spec or hf, "criterion": criterion, "target": {"ratio": ratio,
              "flops_reduction": flops_reduction, "speedup": speedup}, "planning_seconds": round(plan_s, 2),
              "params": {"dense": count_params(model), "slim": count_params(s)},
              "flops": {"dense": f0, "slim": f1, "reduction": f0 / max(f1, 1)},
              "exactness_max_abs_error": err, "latency_ms": {}, "threads": threads, "inputs": _describe(x)}
    from ..structured import slim_report

    if slim_report(s) is not None:  # groups slim froze because the slim model failed validation
        report["frozen_by_validation"] = slim_report(s)["frozen"]
    if latency_report(s) is not None:
        lr = latency_report(s)
        report["latency_aware"] = {k: lr[k] for k in ("requested", "achieved", "backend", "iterations",
                                                      "allocation", "table_cached")}
    backends = ["torch"]
    try:
        import onnxruntime  # noqa: F401

        backends.append("onnxruntime")
    except ImportError:
        pass
    for b in backends:
        try:
            lat = compare_latency({"dense": model, "slim": s}, x, num_threads=threads, backend=b)
            report["latency_ms"][b] = {**lat, "speedup": lat["dense"] / lat["slim"]}
        except Exception as e:  # noqa: BLE001 - a backend that cannot run the model is reported, not fatal
            report["latency_ms"][b] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_p.parent, prefix=f".{out_p.name}.", suffix=".tmp"))
    try:
        save_pruned(s, tmp, example_inputs=x if isinstance(x, dict) else None)
        if onnx:
            from .onnx import to_onnx

            report["onnx"] = to_onnx(s, x, tmp / "model.onnx")
            report["onnx"]["path"] = str(out_p / "model.onnx")
        report["hf_standard_config"] = (tmp / "config.json").exists()
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", report_markdown(report))
        if out_p.exists():
            shutil.rmtree(out_p) if out_p.is_dir() else out_p.unlink()
        os.replace(tmp, out_p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(report_markdown(report))
    return report


def _describe(x) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k}={tuple(v.shape)}" for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return ", ".join(str(tuple(v.shape)) for v in x)
    return str(tuple(x.shape))


def report_markdown(r: dict) -> str:
    lines = [f"# prunekit prune: {r['source']}", "",
             f"Inputs {r['inputs']}, criterion {r['criterion']}, target {json.dumps(r['target'])}, "
             f"{r['threads']} thread(s); planning {r['planning_seconds']} s.", "",
             "| | dense | slim | ratio |", "|---|---|---|---|",
             f"| params | {r['params']['dense']:,} | {r['params']['slim']:,} | "
             f"{r['params']['dense'] / max(r['params']['slim'], 1):.2f}x |",
             f"| FLOPs | {r['flops']['dense']:,} | {r['flops']['slim']:,} | {r['flops']['reduction']:.2f}x |"]
    for b, v in r["latency_ms"].items():
        if "error" in v:
            lines.append(f"| latency ({b}) | - | - | {v['error']} |")
        else:
            lines.append(f"| latency ms ({b}) | {v['dense']:.3f} | {v['slim']:.3f} | {v['speedup']:.2f}x |")
    if "latency_aware" in r:
        la = r["latency_aware"]
        lines += ["", f"Latency-aware ({la['backend']}): requested {la['requested']:.2f}x, achieved "
                      f"{la['achieved']:.2f}x in the planner's verification; widths per group:", "",
                  "| group | kept | of |", "|---|---|---|"]
        lines += [f"| {n} | {a['kept']} | {a['of']} |" for n, a in la["allocation"].items()]
    lines += ["", f"Exactness (slim vs dense with removed channels zeroed): max abs error "
                  f"{r['exactness_max_abs_error']:.2e}. Latency: medians of interleaved rounds."]
    return "\n".join(lines) + "\n"
