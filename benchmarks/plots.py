"""Plots of the issue-13 experiments that their scripts do not draw themselves, from the JSON.

    .venv/bin/python benchmarks/plots.py      # results/tpp_resnet{,56}.png, results/tpp_controls_sweep.png

(espn_resnet.py and tpp_controls.py draw their own plots: results/espn_resnet*.png,
results/tpp_controls_mlp7_mnist5k.png.)
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RES = ROOT / "benchmarks" / "results"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tpp_resnet(name="tpp_resnet.json", png=RES / "tpp_resnet.png", label="ResNet-20",
               budget_files=("tpp_resnet_budget.json", "tpp_resnet_budget_0.95.json")):
    """Both tables of a TPP ResNet run: paper-recipe lines, budget-matched points (dashed)."""
    from budget import save_png

    p = RES / name
    if not p.exists():
        return
    d = json.loads(p.read_text())
    bm = [r for f in budget_files if (RES / f).exists() for r in json.loads((RES / f).read_text())["rows"]]
    bm += [{**r, "method": r["method"].replace(" (budget-matched)", "")} for r in d["rows"]
           if r.get("table") == "budget-matched"]
    rows = [r for r in d["rows"] if r.get("table") != "budget-matched"]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, lr in zip(axes, (1e-2, 1e-3)):
        for src, suffix, ls in ((rows, "", "-"), (bm, " (budget-matched)", "--")):
            for m in ("L1", "L1+OrthP", "GReg-2", "TPP", "Scratch"):
                pts = {}
                for r in src:
                    if r["method"] == m and (r["lr"] == lr or m == "Scratch"):
                        pts.setdefault(r["ratio"], []).append(100 * r["val_selected_acc"])
                xs = sorted(pts)
                if xs:
                    ax.errorbar(xs, [statistics.mean(pts[x]) for x in xs],
                                yerr=[statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0 for x in xs], ls=ls,
                                marker="o", capsize=2,
                                label=m + suffix + (" (dense budget, LR 0.1)" if m == "Scratch" else ""))
        ax.set_title(f"{label} / MNIST-1D, LR {lr:g}: paper recipe (solid), budget-matched (dashed)",
                     fontsize=8)
        ax.set_xlabel("pruning ratio of layer*.conv1")
        ax.set_ylabel("test % at the epoch chosen on validation")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, png)
    plt.close(fig)


def tpp_sweep(png=RES / "tpp_controls_sweep.png"):
    from budget import save_png

    p = RES / "tpp_controls_mlp7_mnist1d_sweep.json"
    if not p.exists():
        return
    d = json.loads(p.read_text())
    ntr = {r["setup"]: r["n_train"] for r in d["rows"]}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in ("L1", "L1+OrthP", "TPP"):
        pts = sorted((ntr[s["setup"]], s["val_selected"][0]) for s in d["summary"]
                     if s["method"] == m and s["table"] == "paper-recipe")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("training samples (after the validation split)")
    ax.set_ylabel("test % at the epoch chosen on validation")
    ax.set_title("MLP-7-Linear / MNIST-1D, ratio 0.9, LR 1e-3, seed 0", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, png)
    plt.close(fig)


if __name__ == "__main__":
    tpp_resnet()
    tpp_resnet("tpp_resnet56.json", RES / "tpp_resnet56.png", "ResNet-56", ())
    tpp_sweep()
