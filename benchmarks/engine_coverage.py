"""How much of each architecture can the structured engine prune? One row per model.

Models: both HuggingFace zoos (tests/test_hf_models.py and tests/test_hf_models_more.py,
tiny configs with random weights) and the hand-written models of ``prunekit.models``.
For each:

- ``slim_ok`` / ``exact``: ``prunekit.structured.slim(model, x, 0.5)`` (no ``ignore=``)
  returns a model, and ``check_exact`` against the zeroed reference is within 1e-4
  relative (the tests' tolerance); ``error`` holds the first line of a failure.
- ``prunable_fraction``: conv/linear output channels in prunable groups over all
  channels in groups (``channel_groups``: sum of ``g.size`` over prunable groups / over
  all), and ``heads_prunable``: True when a prunable group is reshaped into attention
  heads, False when none is but the model has modules named ``*Attention*`` (heads
  frozen, or attention channels pruned one by one), None for models without attention.
- ``unknown_ops``: how many op calls had no rule (``analyse(...).unknown``), and their names.
- ``fallback_frozen_channels`` / ``effective_prunable_fraction``: channels slim's
  automatic fallback froze because the slim model failed validation (``slim_report``;
  absent on engines without the fallback), and the prunable fraction left after that.
- ``param_reduction``: the fraction of parameters slim(0.5) removed (catches weights
  outside conv/linear modules, e.g. fused MoE experts, that no group counts).

    .venv/bin/python benchmarks/engine_coverage.py --label before --out benchmarks/results/engine_coverage_before.json
    .venv/bin/python benchmarks/engine_coverage.py --label after --compare benchmarks/results/engine_coverage_before.json
    .venv/bin/python benchmarks/engine_coverage.py --only bert resnet20        # a few models

Prints a Markdown table; writes benchmarks/results/engine_coverage.json (or ``--out``).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunekit import models  # noqa: E402
from prunekit.foundations.io import atomic_write_json  # noqa: E402
from prunekit.structured import check_exact, slim  # noqa: E402
from prunekit.structured.trace.groups import analyse  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "engine_coverage.json"
RATIO = 0.5
REL_TOL = 1e-4

# prunekit.models: name -> (builder options, input shape). Small inputs: the analysis
# only needs shapes, and the coverage does not depend on the spatial size.
HAND = {
    "lenet-300-100": (dict(in_channels=1, input_size=28), (2, 1, 28, 28)),
    "lenet5-caffe": (dict(in_channels=1, input_size=28), (2, 1, 28, 28)),
    "mlp7-linear": (dict(in_channels=1, input_size=32), (2, 1, 32, 32)),
    "mobilenetv2": (dict(), (2, 3, 32, 32)),
    "resnet20": (dict(), (2, 3, 32, 32)),
    "resnet20-optionB": (dict(option="B"), (2, 3, 32, 32)),
    "resnet32": (dict(), (2, 3, 32, 32)),
    "resnet56": (dict(), (2, 3, 32, 32)),
    "resnet110": (dict(), (2, 3, 32, 32)),
    "resnet18": (dict(), (2, 3, 32, 32)),
    "resnet50": (dict(), (2, 3, 32, 32)),
    "vgg11-bn": (dict(), (2, 3, 32, 32)),
    "vgg16-bn": (dict(), (2, 3, 32, 32)),
    "vgg19-bn": (dict(), (2, 3, 32, 32)),
    "vit": (dict(dim=64, depth=2, heads=4), (2, 3, 32, 32)),
}


def _hand_case(name):
    opts, shape = HAND[name]
    base = name.split("-option")[0]

    def build():
        return models.build(base, **opts)

    return build, lambda: torch.randn(*shape)


def zoo() -> dict[str, tuple]:
    """'zoo/name' -> (build, make_inputs, known gap or None), over all three zoos."""
    sys.path.insert(0, str(ROOT / "tests"))
    out = {}
    try:
        import test_hf_models as first
        import test_hf_models_more as more
    except Exception as e:  # noqa: BLE001 - transformers/pytest missing: hand-written models only
        print(f"HuggingFace zoos skipped ({type(e).__name__}: {e})", file=sys.stderr)
    else:
        for name, (build, inputs) in first.CASES.items():
            out[f"hf/{name}"] = (build, inputs, first.KNOWN_GAPS.get(name))
        for name, (build, inputs) in more.CASES.items():
            gap = more.KNOWN_GAPS.get(name)
            out[f"hf-more/{name}"] = (build, inputs, gap[1] if gap else None)
    for name in HAND:
        build, inputs = _hand_case(name)
        out[f"prunekit/{name}"] = (build, inputs, None)
    return out


def select(all_names, only) -> list[str]:
    """Names matching ``only`` (a full 'zoo/name' or a bare name in any zoo), in zoo order."""
    if not only:
        return list(all_names)
    picked = [n for n in all_names if n in only or n.split("/", 1)[1] in only]
    missing = [o for o in only if not any(o == n or o == n.split("/", 1)[1] for n in all_names)]
    if missing:
        raise SystemExit(f"unknown model(s) {missing}; known: {', '.join(sorted(all_names))}")
    return picked


def _main_output(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    for key in ("logits", "last_hidden_state"):
        if key in out:
            return out[key]
    return next(v for v in out.values() if isinstance(v, torch.Tensor))


def _run(model, x):
    return model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _fallback_frozen(slim_model) -> list | None:
    """Groups slim's automatic fallback froze ([] when none); None where there is no fallback."""
    try:
        from prunekit.structured import slim_report
    except ImportError:  # engine versions before the fallback
        return None
    report = slim_report(slim_model)
    return list(report.get("frozen", [])) if report else []


def _attention_modules(model) -> int:
    """Modules that look like attention (class name contains "Attention", incl. nn.MultiheadAttention).

    Frozen groups carry no head structure, so this is how a model whose heads are all
    frozen (``heads_prunable=False``) is told from one without attention (None)."""
    return sum("attention" in type(m).__name__.lower() for m in model.modules())


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text[:400]


def measure(name: str, build, make_inputs) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    row = {"name": name, "zoo": name.split("/", 1)[0]}
    model = build().eval()
    x = make_inputs()
    row["params_dense"] = _params(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cap = analyse(model, x)
        except Exception as e:  # noqa: BLE001 - the row records the failure
            row.update(analysis_ok=False, analysis_error=_one_line(e))
        else:
            groups = cap.groups
            total = sum(g.size for g in groups)
            prunable = sum(g.size for g in groups if g.prunable)
            head_groups = [g for g in groups if g.heads]
            n_attn = _attention_modules(model)
            frozen = Counter()
            for g in groups:
                if not g.prunable:
                    frozen[g.reason] += g.size
            row.update(analysis_ok=True, groups=len(groups), prunable_groups=sum(g.prunable for g in groups),
                       channels=total, prunable_channels=prunable,
                       prunable_fraction=round(prunable / total, 4) if total else 0.0,
                       attention_modules=n_attn,
                       heads_prunable=True if any(g.prunable for g in head_groups) else False if n_attn else None,
                       unknown_ops=len(cap.unknown),
                       unknown_op_names=sorted({u.split(" in ", 1)[0] for u in cap.unknown}),
                       frozen_channels_by_reason=dict(frozen))
        try:
            with torch.no_grad():
                ref = _main_output(_run(model, x))
            s = slim(model, x, RATIO).eval()
            err = check_exact(model, s, inputs=x)
        except Exception as e:  # noqa: BLE001
            row.update(slim_ok=False, exact=False, error=_one_line(e))
        else:
            tol = REL_TOL * max(1.0, ref.abs().max().item())
            frozen_later = _fallback_frozen(s)
            if frozen_later is not None:  # what slim's automatic fallback froze on top of the analysis
                row.update(fallback_frozen_channels=sum(f["size"] for f in frozen_later),
                           fallback_frozen_modules=sorted({str(f.get("module")) for f in frozen_later}))
                if row.get("channels"):
                    row["effective_prunable_fraction"] = round(
                        (row["prunable_channels"] - row["fallback_frozen_channels"]) / row["channels"], 4)
            row.update(slim_ok=True, exact=bool(err <= tol), max_abs_err=float(err), tol=tol, error=None,
                       params_slim=_params(s), param_reduction=round(1 - _params(s) / row["params_dense"], 4))
    row["warnings"] = sorted({str(w.message).splitlines()[0][:300] for w in caught
                              if "prunekit" in (w.filename or "")})
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _fmt(v, pct=False):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if pct:
        return f"{100 * v:.0f}%"
    return str(v)


def table(rows, before: dict | None = None) -> str:
    head = ["model", "slim 0.5", "exact", "prunable ch.", "heads", "unknown ops", "params removed"]
    if before:
        head += ["prunable ch. before", "slim before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        why = (r["error"] or "").replace("RuntimeError: the slimmed model no longer runs: ", "")
        ok = _fmt(r["slim_ok"]) if r["slim_ok"] else "no: " + why[:90].replace("|", "/")
        if r.get("fallback_frozen_channels"):
            ok += f" (fallback froze {r['fallback_frozen_channels']} ch.)"
        cells = [r["name"], ok, _fmt(r["exact"]) if r["slim_ok"] else "-", _fmt(r.get("prunable_fraction"), True),
                 _fmt(r.get("heads_prunable")), _fmt(r.get("unknown_ops")), _fmt(r.get("param_reduction"), True)]
        if before:
            b = before.get(r["name"], {})
            cells += [_fmt(b.get("prunable_fraction"), True), _fmt(b.get("slim_ok"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows) -> dict:
    ok = [r for r in rows if r["slim_ok"]]
    chans = sum(r.get("channels", 0) for r in rows)
    return {"models": len(rows), "slim_ok": len(ok), "exact": sum(r["exact"] for r in rows),
            "with_unknown_ops": sum(bool(r.get("unknown_ops")) for r in rows),
            "needed_fallback": sum(bool(r.get("fallback_frozen_channels")) for r in rows),
            "prunable_fraction_all": round(sum(r.get("prunable_channels", 0) for r in rows) / chans, 4) if chans else 0,
            "mean_prunable_fraction": round(sum(r.get("prunable_fraction", 0) for r in rows) / len(rows), 4)
            if rows else 0}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file to write (default %(default)s)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="models to run: 'zoo/name' or a bare name (every zoo that has it)")
    ap.add_argument("--label", choices=("before", "after"), default="after",
                    help="which side of a comparison this run is (stored in the JSON)")
    ap.add_argument("--compare", default=None, metavar="JSON", help="an earlier run to show beside this one")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = zoo()
    names = select(cases, args.only)
    before = None
    if args.compare:
        import json

        before = {r["name"]: r for r in json.loads(Path(args.compare).read_text())["rows"]}
    rows = []
    for n in names:
        build, inputs, gap = cases[n]
        row = measure(n, build, inputs)
        row["known_gap"] = gap
        rows.append(row)
        print(f"{n}: slim {'ok' if row['slim_ok'] else 'FAILED'}, prunable {row.get('prunable_fraction')}, "
              f"unknown {row.get('unknown_ops')} ({row['seconds']} s)", file=sys.stderr, flush=True)
    result = {"label": args.label, "ratio": RATIO, "rel_tol": REL_TOL, "commit": _commit(),
              "torch": torch.__version__, "transformers": _transformers_version(), "python": platform.python_version(),
              "summary": summary(rows), "rows": rows}
    atomic_write_json(args.out, result)
    print(table(rows, before))
    s = result["summary"]
    print(f"\n{s['slim_ok']}/{s['models']} slim at {RATIO}, {s['exact']} exact, {s['with_unknown_ops']} with ops "
          f"without a rule; prunable channels {100 * s['prunable_fraction_all']:.1f}% of all "
          f"(mean per model {100 * s['mean_prunable_fraction']:.1f}%). Wrote {args.out}")
    return result


def _transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


if __name__ == "__main__":
    main()
