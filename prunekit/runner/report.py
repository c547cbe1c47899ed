"""Render summary.json as a Markdown report and an accuracy-vs-target plot."""
from __future__ import annotations

import json
from pathlib import Path

from ..foundations.io import atomic_write_text


def _f(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def markdown_table(summary: dict) -> str:
    d = summary["dense"]
    lat = summary.get("latency", {})
    how = (f"Latency: batch {lat['batch_size']}, {lat['threads']} thread(s), {lat['how']}; `speed-up` is dense / "
           f"pruned from the same interleaved rounds." if lat else "Latency: median ms per forward pass.")
    lines = [
        f"# {summary['name']}: {summary['model']} on {summary['dataset']}",
        "",
        "Accuracy columns, by how they were selected: `final` = test accuracy after the last fine-tuning "
        "epoch; `@val` = test accuracy of the epoch chosen on the validation split; `best (test)` = best epoch "
        "on the test set, as several papers report (optimistic: the test set chose the epoch).",
        "",
        how,
        "",
        "| method | kind | target | final | @val | best (test) | after prune | params | non-zero | FLOPs "
        "| latency ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dense | - | - | {_f(d['test_accuracy'])} | - | - | - | {d['params']:,} | {d['nonzero_params']:,} "
        f"| {d['flops']:,} | {_f(d.get('latency_ms'), '.3f')} | 1.00 |",
    ]
    for r in summary["results"]:
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['target']} | {_f(r['test_accuracy'])} | {_f(r.get('test_at_best_val'))} "
            f"| {_f(r.get('best_test_accuracy'))} | {_f(r.get('accuracy_after_prune'))} | {r['params']:,} "
            f"| {r['nonzero_params']:,} | {r['flops']:,} | {_f(r.get('latency_ms'), '.3f')}"
            f"{' (CSR)' if r.get('deployed_as') == 'CSR Linear' else ''} "
            f"| {_f(r.get('speedup'), '.2f')} |")
    return "\n".join(lines) + "\n"


def collapse_floor(summary: dict) -> float:
    """Accuracy below which a result counts as collapsed: halfway from chance to dense.
    Collapsed points are drawn at the panel's floor and labelled, so one dead run does not
    squash the axis that shows the differences between the useful ones."""
    chance = 1.0 / summary.get("num_classes", 10)
    return chance + 0.5 * (summary["dense"]["test_accuracy"] - chance)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("unstructured", "structured") if any(r["kind"] == k for r in summary["results"])]
    kinds = kinds or ["unstructured"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    dense_acc, floor = summary["dense"]["test_accuracy"], collapse_floor(summary)
    markers = "osD^vP*Xhp<>"
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in summary["results"] if r["kind"] == kind]
        useful = [r["test_accuracy"] for r in rows if r["test_accuracy"] >= floor] + [dense_acc]
        lo = min(useful)
        pad = max(0.01, 0.1 * (max(useful) - lo))
        bottom, top = lo - pad, max(useful) + pad
        methods = sorted({r["method"] for r in rows})
        for i, m in enumerate(methods):
            pts = sorted((r["target"], r["test_accuracy"]) for r in rows if r["method"] == m)
            ys = [max(a, bottom) for _, a in pts]
            (line,) = ax.plot([t for t, _ in pts], ys, marker=markers[i % len(markers)], label=m)
            for t, a in pts:
                if a < bottom:
                    ax.annotate(f"collapsed ({a:.0%})", (t, bottom), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=7, color=line.get_color())
        ax.axhline(dense_acc, color="k", ls="--", lw=1, label=f"dense ({dense_acc:.2%})")
        ax.set_ylim(bottom, top)
        ax.set_xlabel("sparsity (fraction of weights removed)" if kind == "unstructured"
                      else "channel ratio removed per layer")
        ax.set_ylabel("test accuracy (final epoch)")
        ax.set_title(f"{kind}: {summary['model']} / {summary['dataset']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")  # the orphan pattern clean_orphans removes
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def render(run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    sp = run_dir / "summary.json"
    if not sp.is_file():
        raise FileNotFoundError(f"no summary.json in {run_dir}")
    summary = json.loads(sp.read_text())
    atomic_write_text(run_dir / "report.md", markdown_table(summary))
    plot(summary, run_dir / "accuracy_vs_sparsity.png")
