"""Latency-aware pruning: does ``slim(speedup=s)`` deliver s on this machine?

For each model, batch size and requested speed-up (1.5x, 2x, 3x): plan with
``prunekit.structured.selection.latency_aware.latency_slim`` (L1 importance, one thread), then time
the slim model against the dense model *again, independently of the planner* (fresh
interleaved rounds, CPU clock at one thread, medians), and report achieved / requested,
FLOPs reduction, params and the planning time (table measurement included; the table of
one model and batch is measured once and reused for the three requests, as a user's cache
would). ONNX Runtime is the second backend (``--ort``; planning and timing both on ORT).

    .venv/bin/python benchmarks/latency_aware.py            # default: ~15 min on one thread
    .venv/bin/python benchmarks/latency_aware.py --ort      # adds the ONNX Runtime rows (batch 1)
    .venv/bin/python benchmarks/latency_aware.py --full     # ResNet-18 at 224 px, more rounds
    .venv/bin/python benchmarks/latency_aware.py --planning # planning time, BERT-base size and ResNet-56

Writes benchmarks/results/latency_aware.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunekit import models  # noqa: E402
from prunekit.foundations.io import atomic_write_json  # noqa: E402
from prunekit.metrics import count_params, flops  # noqa: E402
from prunekit.metrics.latency import compare_latency  # noqa: E402
from prunekit.structured.selection.latency_aware import SOLVERS, latency_report, latency_slim  # noqa: E402


# How latency_slim corrects a missed budget: "curve" interpolates the next budget on the measured
# predicted -> achieved curve (next_budget); the runs before it scaled the budget by achieved/requested.
VERIFY = "curve"


def bert(batch):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                       vocab_size=1000, max_position_embeddings=128, num_labels=2)
    net = T.BertForSequenceClassification(cfg).eval()
    return net, {"input_ids": torch.randint(0, 1000, (batch, 64))}


def bert_base(batch, seq=128):
    """BERT-base dimensions (768 hidden, 12 layers, 12 heads, 3072 FFN), random weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2)
    return T.BertForSequenceClassification(cfg).eval(), {"input_ids": torch.randint(0, 30522, (batch, seq))}


def planning(out, solver="greedy"):
    """Issue 10's planning-time target: < 2 min for ResNet-56 and a BERT-base-sized model,
    with the table measured fresh and then reused from the cache (one thread)."""
    torch.set_num_threads(1)
    cases = {"resnet56 b64": lambda: (models.build("resnet56", 3, 32, 10).eval(), torch.randn(64, 3, 32, 32)),
             "bert-base b1 seq128": lambda: bert_base(1)}
    rows = []
    for name, make in cases.items():
        torch.manual_seed(0)
        net, x = make()
        cache = tempfile.mkdtemp(prefix="latency-tables-")
        for run in ("fresh table", "cached table"):
            t0 = time.perf_counter()
            s = latency_slim(net, x, speedup=2.0, threads=1, cache_dir=cache, solver=solver)
            rep = latency_report(s)
            rows.append({"model": name, "run": run, "planning_s": time.perf_counter() - t0,
                         "achieved": rep["achieved"], "iterations": len(rep["iterations"]),
                         "table_cached": rep["table_cached"], "phase_seconds": rep["phase_seconds"]})
            print(f"[{name}] {run}: planning {rows[-1]['planning_s']:.0f}s, achieved {rep['achieved']:.2f}x "
                  f"(requested 2x, {len(rep['iterations'])} iterations)", flush=True)
            atomic_write_json(out, {"rows": rows, "threads": 1, "requested": 2.0, "torch": torch.__version__})
    return rows


def specs(full):
    r18 = 224 if full else 64
    img = lambda c, s: (lambda b: torch.randn(b, c, s, s))  # noqa: E731
    return {
        "resnet56": (lambda: models.build("resnet56", 3, 32, 10), img(3, 32)),
        "vit": (lambda: models.build("vit", 3, 32, 10), img(3, 32)),
        "bert-style (HF)": (None, None),
        "mobilenetv2": (lambda: models.build("mobilenetv2", 3, 32, 10), img(3, 32)),
        "resnet18": (lambda: models.build("resnet18", 3, r18, 1000), img(3, r18)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 64])
    ap.add_argument("--speedups", nargs="*", type=float, default=[1.5, 2.0, 3.0])
    ap.add_argument("--ort", action="store_true", help="also plan and time on ONNX Runtime (batch 1)")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="independent timing rounds (default 7, --full 15)")
    ap.add_argument("--solver", choices=SOLVERS, default="greedy",
                    help="allocation solver; default greedy, the one the committed JSON ran with (the library's "
                         "default is the exact knapsack, added later)")
    ap.add_argument("--planning", action="store_true", help="only the planning-time runs (BERT-base, ResNet-56)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/latency_aware.json "
                                                "(--planning: latency_planning.json)")
    args = ap.parse_args(argv)
    if args.planning:
        return planning(args.out or str(ROOT / "benchmarks/results/latency_planning.json"), args.solver)
    args.out = args.out or str(ROOT / "benchmarks/results/latency_aware.json")
    torch.set_num_threads(1)
    rounds = args.rounds or (15 if args.full else 7)
    all_specs = specs(args.full)
    chosen = args.models or list(all_specs)
    bad = set(chosen) - set(all_specs)
    if bad:
        raise SystemExit(f"unknown model(s) {sorted(bad)}; choose from {sorted(all_specs)}")
    config = {"rounds": rounds, "threads": 1, "clock": "cpu (process time, one thread)", "criterion": "l1",
              "solver": args.solver, "verify": VERIFY, "full": args.full, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    cache = tempfile.mkdtemp(prefix="latency-tables-")  # fresh tables: planning time includes measuring
    rows, t_start = [], time.perf_counter()
    backends = [("torch", b) for b in args.batches] + ([("onnxruntime", 1)] if args.ort else [])
    for name in chosen:
        build, inputs = all_specs[name]
        for backend, batch in backends:
            if build is None:
                net, x = bert(batch)
            else:
                torch.manual_seed(0)
                net, x = build().eval(), inputs(batch)
            f_dense, p_dense = flops(net, x)["dense"], count_params(net)
            for sp in args.speedups:
                t0 = time.perf_counter()
                try:
                    s = latency_slim(net, x, speedup=sp, backend=backend, threads=1, cache_dir=cache, solver=args.solver)
                except Exception as e:  # noqa: BLE001 - a failure is a result
                    rows.append({"model": name, "backend": backend, "batch": batch, "requested": sp,
                                 "error": f"{type(e).__name__}: {e}"})
                    print(f"[{name}] {backend} b{batch} {sp}x: FAILED {e}", flush=True)
                    continue
                plan_s = time.perf_counter() - t0
                rep = latency_report(s)
                t = compare_latency({"dense": net, "slim": s}, x, num_threads=1, rounds=rounds, min_run_time=0.1,
                                    backend=backend)
                achieved = t["dense"] / t["slim"]
                row = {"model": name, "backend": backend, "batch": batch, "requested": sp,
                       "achieved": achieved, "achieved_over_requested": achieved / sp,
                       "planner_achieved": rep["achieved"], "iterations": len(rep["iterations"]),
                       "flops_reduction": f_dense / flops(s, x)["dense"], "params_dense": p_dense,
                       "params_slim": count_params(s), "planning_s": plan_s, "table_cached": rep["table_cached"],
                       "dense_ms": t["dense"], "slim_ms": t["slim"],
                       "widths": {k: v["kept"] for k, v in rep["allocation"].items()}}
                rows.append(row)
                # written after every row: a long run that is stopped keeps what it measured
                atomic_write_json(args.out, {"config": config, "rows": rows, "partial": True,
                                             "seconds": time.perf_counter() - t_start})
                print(f"[{name}] {backend} b{batch} {sp}x: achieved {achieved:.2f}x "
                      f"({achieved / sp:.2f} of requested), FLOPs {row['flops_reduction']:.2f}x, "
                      f"planning {plan_s:.0f}s ({time.perf_counter() - t_start:.0f}s elapsed)", flush=True)
    result = {"config": config, "rows": rows, "partial": False, "seconds": time.perf_counter() - t_start}
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"\nwrote {args.out} in {result['seconds']:.0f}s")
    return result


def print_table(result):
    print("\n| model | backend | batch | requested | achieved | achieved / requested | FLOPs red. | params "
          "| planning s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "error" in r:
            print(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['requested']}x | failed: {r['error'][:60]} "
                  f"| | | | |")
            continue
        print(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['requested']:.1f}x | {r['achieved']:.2f}x "
              f"| {r['achieved_over_requested']:.2f} | {r['flops_reduction']:.2f}x "
              f"| {r['params_slim']:,} / {r['params_dense']:,} | {r['planning_s']:.0f} |")


if __name__ == "__main__":
    main()
