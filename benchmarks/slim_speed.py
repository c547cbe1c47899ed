"""Does structured slimming turn FLOPs into CPU speed? prunekit.slim vs Torch-Pruning, side by side.

For each model and channel ratio: FLOPs reduction (prunekit.metrics.flops), measured CPU
latency at batch 1 and 64 and efficiency = latency speed-up / FLOPs reduction. Every
latency is a median over rounds in which the dense model and all slim models are timed
one after another (round robin, torch.utils.benchmark, eval + inference_mode, one
thread), so load from other processes hits them alike; the speed-up is the median of
the per-round dense/slim ratios. Torch-Pruning (MagnitudePruner, L1 importance,
classifier in ignored_layers) slims the same model to the same ratio in the same run,
and its dependency-graph build time is timed beside our channel_groups analysis.

Latency is process CPU time by default (``--clock cpu``): on a shared machine wall
time mostly measures the other processes; with one thread, CPU time is what an idle
machine's wall clock would show. Use ``--clock wall`` on an idle machine.

Two treatments, applied identically to the dense model, ours and Torch-Pruning's:
"eager" (as built) and "deployed" (BN folded into convs; channels-last at batch 64
only - an exploratory run found channels-last slower at batch 1 on this CPU, and the
ablation re-measures it). The ablation times round_to x BN folding x channels-last on
ResNet-56 and round_to on ResNet-18 at ratio 0.3.

    .venv/bin/python benchmarks/slim_speed.py            # ~10 min on one thread
    .venv/bin/python benchmarks/slim_speed.py --full     # 15 rounds, ResNet-18 at 224 px

Torch-Pruning is installed on demand (``pip install --no-deps torch-pruning``: the
installed torch is never touched, and its version is checked afterwards). It is a
benchmark-only dependency, never imported by prunekit.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunekit import models  # noqa: E402
from prunekit.foundations.io import atomic_write_json  # noqa: E402
from prunekit.metrics import flops  # noqa: E402
from prunekit.metrics.latency import OrtRunner  # noqa: E402
from prunekit.structured.surgery.deploy import fold_bn, simd_lanes, simd_round_to, to_channels_last  # noqa: E402

EXPECTED_TORCH = "2.13.0"


# --------------------------------------------------------------------------- Torch-Pruning


def ensure_torch_pruning():
    """Import torch_pruning, installing it without dependencies if missing; torch must stay put."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError:
        pass
    print("installing torch-pruning (no dependencies, torch kept) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "torch-pruning"], check=True)
    # Ask a fresh interpreter: this process already has torch imported.
    ver = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout.strip()
    if not ver.startswith(EXPECTED_TORCH):
        raise SystemExit(f"installing torch-pruning changed torch to {ver}; expected {EXPECTED_TORCH}")
    importlib.invalidate_caches()
    return importlib.import_module("torch_pruning")


def tp_heads(model):
    """Torch-Pruning needs q/k/v -> num_heads to keep attention reshapes consistent."""
    out = {}
    for m in model.modules():
        if hasattr(m, "num_heads") and all(hasattr(m, a) for a in ("q", "k", "v")):
            for lin in (m.q, m.k, m.v):
                out[lin] = m.num_heads
    return out


def tp_slim(tp, dense, x, ratio, classifier):
    m = copy.deepcopy(dense)
    heads = tp_heads(m)
    pruner = tp.pruner.MagnitudePruner(
        m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=[m.get_submodule(classifier)], num_heads=heads or {})
    pruner.step()
    # Torch-Pruning prunes head_dim but leaves the attribute the forward uses.
    for a in m.modules():
        if hasattr(a, "num_heads") and hasattr(a, "q"):
            a.num_heads = pruner.num_heads.get(a.q, a.num_heads)
            a.head_dim = a.q.out_features // a.num_heads
    return m.eval()


def tp_graph_seconds(tp, model, inputs, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --------------------------------------------------------------------------- ours


def our_slim(dense, x, ratio, round_to, groups, slim_kw):
    # No ignore=: the classifier's outputs are model outputs, which the analysis never
    # prunes (what Torch-Pruning's ignored_layers=[fc] achieves). ignore=("fc",) would
    # also freeze fc's *inputs*, i.e. the last stage's whole residual stream.
    from prunekit.structured import slim
    return slim(dense, x, ratio, criterion="l1", round_to=round_to, groups=groups, **slim_kw).eval()


def slimmed_widths(groups, ratio, slim_kw):
    """Sizes of the channel groups ``slim`` will cut at ``ratio`` (for simd_round_to)."""
    from prunekit.structured.selection.planner import group_ratio
    return [g.size for g in groups
            if g.prunable and group_ratio(g, ratio, slim_kw.get("overrides"), slim_kw.get("skip", ())) > 0]


def our_graph_seconds(model, inputs, repeats):
    from prunekit.structured import channel_groups
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        groups = channel_groups(model, inputs)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(groups)


# --------------------------------------------------------------------------- timing


def treat(model, x, fold, channels_last):
    m = fold_bn(model, x[:1]) if fold else copy.deepcopy(model).eval()
    return to_channels_last(m, inplace=True) if channels_last else m


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def round_robin(variants: dict, x, rounds: int, target_s: float, clock: str) -> dict:
    """Per-round latency (ms) of every variant; each round times all variants back to back."""
    timer_fn = CLOCKS[clock]
    numbers = {}
    with torch.inference_mode():
        for k, m in variants.items():
            m(x)  # warm-up: oneDNN primitive creation, allocator
            t = timer_fn()
            m(x)
            numbers[k] = max(1, int(target_s / max(timer_fn() - t, 1e-6)))
        per_round = {k: [] for k in variants}
        for _ in range(rounds):
            for k, m in variants.items():
                timer = benchmark.Timer("m(x)", globals={"m": m, "x": x}, num_threads=1, timer=timer_fn)
                per_round[k].append(timer.timeit(numbers[k]).median * 1e3)
    return per_round


def speedup(per_round, dense_key, key):
    return statistics.median(d / s for d, s in zip(per_round[dense_key], per_round[key]))


# --------------------------------------------------------------------------- models


def specs(full: bool):
    r18 = 224 if full else 64
    return {
        # option B (1x1-conv shortcuts): Torch-Pruning cannot slim option A (its zero-pad
        # shortcut), see resnet56-A.
        "resnet56": dict(build=("resnet56", 3, 32, 10, {"option": "B"}), classifier="fc", slim_kw={}),
        # The TPP paper's setting: option A, only the first conv of each block is pruned
        # (the residual stream is skipped); its FLOPs reductions are the paper's
        # 1.45/1.99/3.59x "speed-ups" at ratios 0.3/0.5/0.7.
        "resnet56-A": dict(build=("resnet56", 3, 32, 10, {"option": "A"}), classifier="fc",
                           slim_kw={"skip": ("conv1", "*.conv2")}),
        "resnet18": dict(build=("resnet18", 3, r18, 1000, {}), classifier="fc", slim_kw={}),
        "vit": dict(build=("vit", 3, 32, 10, {}), classifier="head", slim_kw={}),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="more rounds and ResNet-18 at 224 px (slow)")
    ap.add_argument("--models", nargs="*", default=None, help="subset of: resnet56 resnet56-A resnet18 vit")
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds at batch 1 (default 7, --full 15)")
    ap.add_argument("--rounds64", type=int, default=None, help="timing rounds at batch 64 (default 5, --full 15)")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--no-bert", action="store_true")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: process CPU time (default; robust on a shared machine, one thread); "
                         "wall: wall-clock (use on an idle machine)")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime column")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/slim_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rounds = {1: args.rounds or (15 if args.full else 7), 64: args.rounds64 or (15 if args.full else 5)}
    target = {1: 0.2 if args.full else 0.05, 64: 0.5 if args.full else 0.05}
    graph_repeats = 5 if args.full else 3
    tp = ensure_torch_pruning()
    ort_ok = not args.no_ort
    if ort_ok:
        try:
            import onnxruntime  # noqa: F401

            from prunekit.metrics.latency import OrtRunner  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: no ONNX Runtime column (pip install 'prunekit[deploy]')")
            ort_ok = False
    all_specs = specs(args.full)
    chosen = args.models or list(all_specs)
    unknown = set(chosen) - set(all_specs)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose from {sorted(all_specs)}")
    for r in args.ratios:
        if not 0.0 < r < 1.0:
            raise SystemExit(f"ratio must be in (0, 1), got {r}")

    t_start = time.perf_counter()
    result = {"config": {"full": args.full, "rounds": rounds, "clock": args.clock, "ratios": args.ratios, "threads": 1,
                         "torch": torch.__version__, "torch_pruning": getattr(tp, "__version__", "?"),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "simd_lanes_fp32": simd_lanes(), "machine": platform.machine(),
                         "recipe": {"1": "fold_bn", "64": "fold_bn + channels_last"}},
              "rows": [], "graph": [], "ablation": [], "failures": []}
    rows, failures = result["rows"], result["failures"]

    for name in chosen:
        spec = all_specs[name]
        mname, cin, size, ncls, opts = spec["build"]
        dense = models.build(mname, cin, size, ncls, **opts).eval()
        x1 = torch.randn(1, cin, size, size)
        dense_flops = flops(dense, x1)["dense"]
        g_ours, n_groups = our_graph_seconds(dense, x1, graph_repeats)
        from prunekit.structured import channel_groups
        groups = channel_groups(dense, x1)
        g_tp = None
        try:
            g_tp = tp_graph_seconds(tp, dense, x1, graph_repeats)
        except Exception as e:  # noqa: BLE001 - a baseline failure is a result, not a crash
            failures.append({"model": name, "who": "torch-pruning", "stage": "graph", "error": f"{type(e).__name__}: {e}"})
        result["graph"].append({"model": name, "ours_s": g_ours, "groups": n_groups, "torch_pruning_s": g_tp})
        print(f"[{name}] graph: ours {g_ours:.3f}s ({n_groups} groups), Torch-Pruning "
              f"{'-' if g_tp is None else f'{g_tp:.3f}s'}", flush=True)

        slims, slim_flops, round_tos = {}, {}, {}
        for ratio in args.ratios:
            rt = round_tos[ratio] = simd_round_to(slimmed_widths(groups, ratio, spec["slim_kw"]), ratio)
            try:
                s = our_slim(dense, x1, ratio, rt, groups, spec["slim_kw"])
                assert s(x1).shape == dense(x1).shape
                slims[("ours", ratio)] = s
                slim_flops[("ours", ratio)] = flops(s, x1)["dense"]
            except Exception as e:  # noqa: BLE001
                failures.append({"model": name, "who": "prunekit", "ratio": ratio, "error": f"{type(e).__name__}: {e}"})
            try:
                s = tp_slim(tp, dense, x1, ratio, spec["classifier"])
                assert s(x1).shape == dense(x1).shape
                slims[("tp", ratio)] = s
                slim_flops[("tp", ratio)] = flops(s, x1)["dense"]
            except Exception as e:  # noqa: BLE001
                failures.append({"model": name, "who": "torch-pruning", "ratio": ratio,
                                 "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(f"[{name}] ratio {ratio}: round_to {rt}, FLOPs reduction ours "
                  f"{dense_flops / slim_flops[('ours', ratio)] if ('ours', ratio) in slim_flops else float('nan'):.2f}x, "
                  f"Torch-Pruning {dense_flops / slim_flops[('tp', ratio)] if ('tp', ratio) in slim_flops else float('nan'):.2f}x",
                  flush=True)

        for batch in (1, 64):
            x = torch.randn(batch, cin, size, size)
            treatments = {"eager": (False, False), "deployed": (True, batch >= 64)}
            variants = {}
            for tname, (fold, cl) in treatments.items():
                variants[(tname, "dense", None)] = treat(dense, x, fold, cl)
                for (who, ratio), s in slims.items():
                    variants[(tname, who, ratio)] = treat(s, x, fold, cl)
            if ort_ok:
                # ONNX Runtime (BN folded by to_onnx, one intra-op thread), in the same round robin
                for key, m in [(("onnxruntime", "dense", None), dense)] + [
                        (("onnxruntime", who, ratio), s) for (who, ratio), s in slims.items()]:
                    try:
                        variants[key] = OrtRunner(m, x, threads=1)
                    except Exception as e:  # noqa: BLE001 - an export failure is a result
                        failures.append({"model": name, "who": key[1], "ratio": key[2], "stage": "onnx",
                                         "error": f"{type(e).__name__}: {str(e)[:200]}"})
                if ("onnxruntime", "dense", None) not in variants:
                    variants = {k: v for k, v in variants.items() if k[0] != "onnxruntime"}
            per_round = round_robin(variants, x, rounds[batch], target[batch], args.clock)
            for (tname, who, ratio) in variants:
                if who == "dense":
                    continue
                red = dense_flops / slim_flops[(who, ratio)]
                sp = speedup(per_round, (tname, "dense", None), (tname, who, ratio))
                rows.append({"model": name, "ratio": ratio, "batch": batch, "treatment": tname, "who": who,
                             "round_to": round_tos[ratio] if who == "ours" else None,
                             "dense_ms": statistics.median(per_round[(tname, "dense", None)]),
                             "slim_ms": statistics.median(per_round[(tname, who, ratio)]),
                             "flops_reduction": red, "speedup": sp, "efficiency": sp / red})
            print(f"[{name}] batch {batch} timed ({time.perf_counter() - t_start:.0f}s elapsed)", flush=True)

    if not args.no_ablation and "resnet56" in chosen:
        result["ablation"] = ablation(all_specs["resnet56"], rounds, target, args.clock, 0.3, (1, 8),
                                      [(f, c) for f in (False, True) for c in (False, True)])
    if not args.no_ablation and "resnet18" in chosen:
        # Wider layers (64..512): does rounding to the SIMD width pay off where channels are many?
        result["ablation"] += ablation(all_specs["resnet18"], rounds, target, args.clock, 0.3, (1, 8, 16),
                                       [(False, False), (True, True)])
    if not args.no_bert:
        result["bert"] = bert_graph(tp, graph_repeats)
    result["seconds"] = time.perf_counter() - t_start
    atomic_write_json(args.out, result)
    print_tables(result)
    print(f"\nwrote {args.out} in {result['seconds']:.0f}s")
    return result


def ablation(spec, rounds, target, clock, ratio, round_tos, treatments):
    """round_to values (plus the simd_round_to choice) x (fold BN, channels-last) treatments.

    Ratio 0.3 because its kept counts (11/22/44 of ResNet-56's 16/32/64) are not
    multiples of 8, so round_to matters; at 0.5 they already are (8/16/32).
    """
    from prunekit.structured import channel_groups
    mname, cin, size, ncls, opts = spec["build"]
    dense = models.build(mname, cin, size, ncls, **opts).eval()
    x1 = torch.randn(1, cin, size, size)
    groups = channel_groups(dense, x1)
    chosen = simd_round_to(slimmed_widths(groups, ratio, spec["slim_kw"]), ratio)
    slims = {rt: our_slim(dense, x1, ratio, rt, groups, spec["slim_kw"]) for rt in sorted({chosen, *round_tos})}
    dflops = flops(dense, x1)["dense"]
    out = []
    for batch in (1, 64):
        x = torch.randn(batch, cin, size, size)
        variants = {}
        for fold, cl in treatments:
            variants[("dense", fold, cl)] = treat(dense, x, fold, cl)
            for rt, s in slims.items():
                variants[(rt, fold, cl)] = treat(s, x, fold, cl)
        per_round = round_robin(variants, x, rounds[batch], target[batch], clock)
        for (rt, fold, cl) in variants:
            if rt == "dense":
                continue
            red = dflops / flops(slims[rt], x1)["dense"]
            sp = speedup(per_round, ("dense", fold, cl), (rt, fold, cl))
            out.append({"model": spec["build"][0], "ratio": ratio, "batch": batch, "round_to": rt,
                        "simd_round_to_choice": rt == chosen,
                        "fold_bn": fold, "channels_last": cl,
                        "dense_ms": statistics.median(per_round[("dense", fold, cl)]),
                        "slim_ms": statistics.median(per_round[(rt, fold, cl)]),
                        "flops_reduction": red, "speedup": sp, "efficiency": sp / red})
        print(f"[ablation {spec['build'][0]}] batch {batch} timed", flush=True)
    return out


def bert_graph(tp, repeats):
    """Graph analysis time on a BERT-base-sized model (random weights, nothing downloaded)."""
    from transformers import BertConfig, BertModel
    model = BertModel(BertConfig()).eval()
    ids = torch.randint(0, 1000, (1, 128))
    g_ours, n = our_graph_seconds(model, {"input_ids": ids}, repeats)
    out = {"params": sum(p.numel() for p in model.parameters()), "ours_s": g_ours, "groups": n}
    try:
        out["torch_pruning_s"] = tp_graph_seconds(tp, model, {"input_ids": ids}, repeats)
    except Exception as e:  # noqa: BLE001
        out["torch_pruning_error"] = f"{type(e).__name__}: {e}"
    print(f"[bert-base] graph: ours {g_ours:.2f}s, Torch-Pruning {out.get('torch_pruning_s', float('nan')):.2f}s",
          flush=True)
    return out


def print_tables(result):
    rows = result["rows"]
    idx = {(r["model"], r["ratio"], r["batch"], r["treatment"], r["who"]): r for r in rows}
    print("\nEfficiency = latency speed-up / FLOPs reduction (same treatment for dense and slim)")
    print("| model | ratio | batch | FLOPs red. ours / TP | speed-up ours / TP (deployed) | efficiency ours / TP (deployed) "
          "| efficiency ours / TP (eager) | speed-up ours / TP (ONNX Runtime) | efficiency ours / TP (ONNX Runtime) |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f(r, key, fmt="{:.2f}"):
        return "fail" if r is None else fmt.format(r[key])

    seen = sorted({(r["model"], r["ratio"], r["batch"]) for r in rows}, key=lambda k: (k[0], k[2], k[1]))
    for m, ratio, b in seen:
        od, td = idx.get((m, ratio, b, "deployed", "ours")), idx.get((m, ratio, b, "deployed", "tp"))
        oe, te = idx.get((m, ratio, b, "eager", "ours")), idx.get((m, ratio, b, "eager", "tp"))
        oo, to = idx.get((m, ratio, b, "onnxruntime", "ours")), idx.get((m, ratio, b, "onnxruntime", "tp"))
        print(f"| {m} | {ratio} | {b} | {f(od, 'flops_reduction')}x / {f(td, 'flops_reduction')}x "
              f"| {f(od, 'speedup')}x / {f(td, 'speedup')}x | {f(od, 'efficiency')} / {f(td, 'efficiency')} "
              f"| {f(oe, 'efficiency')} / {f(te, 'efficiency')} | {f(oo, 'speedup')}x / {f(to, 'speedup')}x "
              f"| {f(oo, 'efficiency')} / {f(to, 'efficiency')} |")
    print("\nGraph analysis (median seconds)")
    print("| model | ours (channel_groups) | Torch-Pruning (DependencyGraph) |")
    print("|---|---|---|")
    for g in result["graph"]:
        tp_s = "fail" if g["torch_pruning_s"] is None else f"{g['torch_pruning_s']:.3f}"
        print(f"| {g['model']} | {g['ours_s']:.3f} | {tp_s} |")
    if result.get("bert"):
        b = result["bert"]
        tp_s = f"{b['torch_pruning_s']:.3f}" if "torch_pruning_s" in b else "fail"
        print(f"| BERT-base ({b['params'] / 1e6:.0f}M params, seq 128) | {b['ours_s']:.3f} | {tp_s} |")
    if result["ablation"]:
        print("\nAblation (ratio 0.3; * = simd_round_to's choice)")
        print("| model | batch | round_to | fold BN | channels-last | FLOPs red. | dense ms | slim ms | speed-up | efficiency |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for a in result["ablation"]:
            star = "*" if a["simd_round_to_choice"] else ""
            print(f"| {a['model']} | {a['batch']} | {a['round_to']}{star} | {a['fold_bn']} | {a['channels_last']} "
                  f"| {a['flops_reduction']:.2f}x "
                  f"| {a['dense_ms']:.2f} | {a['slim_ms']:.2f} | {a['speedup']:.2f}x | {a['efficiency']:.2f} |")
    if result["failures"]:
        print("\nFailures")
        for fl in result["failures"]:
            print(f"- {fl}")


if __name__ == "__main__":
    main()
