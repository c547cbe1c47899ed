"""Render summary.json as a Markdown table and an accuracy-vs-target plot."""
from __future__ import annotations

import json
from pathlib import Path

from ..foundations.io import atomic_write_text


def markdown_table(summary: dict) -> str:
    d = summary["dense"]
    lines = [
        f"# {summary['name']}: {summary['model']} on {summary['dataset']}",
        "",
        f"Dense: test accuracy {d['test_accuracy']:.4f}, {d['params']:,} params, {d['flops']:,} FLOPs.",
        "",
        "Test accuracy is the final fine-tuning epoch; `best` is the best epoch on the test set (as several "
        "papers report) and `@val` the test accuracy of the epoch chosen on the validation split.",
        "",
        "| method | kind | target | test acc | best | @val | params | non-zero | FLOPs | latency ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in summary["results"]:
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['target']} | {f(r['test_accuracy'])} | {f(r.get('best_test_accuracy'))} "
            f"| {f(r.get('test_at_best_val'))} | {r['params']:,} | {r['nonzero_params']:,} | {r['flops']:,} "
            f"| {r['latency_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by: dict[str, list] = {}
    for r in summary["results"]:
        # x: fraction of parameters removed, so structured and unstructured share an axis
        removed = 1 - r["nonzero_params"] / summary["dense"]["params"]
        by.setdefault(f"{r['method']} ({r['kind']})", []).append((removed, r["test_accuracy"]))
    for label, pts in sorted(by.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(summary["dense"]["test_accuracy"], color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("fraction of parameters removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{summary['model']} / {summary['dataset']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
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
