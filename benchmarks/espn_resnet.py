"""ESPN vs the unstructured baselines on CIFAR-style ResNets, budget-matched (PROTOCOL.md).

    .venv/bin/python benchmarks/espn_resnet.py                         # the committed fast run
    .venv/bin/python benchmarks/espn_resnet.py --seeds 0 --sparsities 0.995 --methods espn-finetune imp
    .venv/bin/python benchmarks/espn_resnet.py --merge                 # table/JSON/plot from the parts
    .venv/bin/python benchmarks/espn_resnet.py --paper-recipe          # authors' epochs x 1/40, unequal budgets
    .venv/bin/python benchmarks/espn_resnet.py --full                  # ResNet-32 (width 2) / CIFAR-10, GPU + data

Fast mode: ResNet-20 (option A) on MNIST-1D as 1x40 images, 20,000 generated training
samples (18,000 train / 2,000 validation, split by the seed) and 5,000 test samples.
Every method gets the same total number of optimiser steps B = dense D + X (budget-matched
table). Every run is written atomically to benchmarks/results/espn_resnet/ as soon as it
finishes, and merged into benchmarks/results/espn_resnet.json.

Methods (all masks are an exact global top-k over conv+linear weights, classifier included):
  espn-finetune        the authors' alpha (CIFAR family: 8e-5 at 95% -> 5.5e-4 at 99.5%, log-linear)
  espn-finetune-rule   alpha x s, s fixed by a written rule (no accuracy consulted): the L1
                       drift alone must switch masks off after half of the search allowance
  imp                  20%/level, global |w|, rewind to the end of dense epoch 1, equal steps per level
  snip, grasp, synflow at init (fresh seeded init), trained from scratch for B steps
  magnitude, random    on the dense model, fine-tuned X steps with the dense recipe
  gmp                  from the dense model, X steps of the same fine-tune recipe with gradual
                       magnitude pruning (cubic schedule, 20 mask updates over the first 75 %)
  espn-rewind          warm-up = dense epoch 1 (rewind point), search, retrain to B
Controls (99.5% by default): espn-mask/dense-weights/imp-recipe, imp-mask/dense-weights/espn-recipe,
espn-finetune x3 fine-tune.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from budget import Budget, atomic_write_json, layer_kept, mnist1d_bundle, save_png, steps_per_epoch, train_steps  # noqa: E402
from prunekit import data as datasets  # noqa: E402
from prunekit import models  # noqa: E402
from prunekit.methods.espn import copy_searched  # noqa: E402
from prunekit.methods.gmp import GMPCallback, only_at_final_sparsity  # noqa: E402
from prunekit.methods.imp import imp_path, imp_schedule  # noqa: E402
from prunekit.sparse.espn import ESPNSearch, default_alpha  # noqa: E402
from prunekit.sparse.masks import apply_masks, get_masks, magnitude_masks, random_masks, sparsity_report  # noqa: E402
from prunekit.sparse.scores import score_masks, synflow_masks  # noqa: E402
from prunekit.training import TrainHparams, evaluate, train  # noqa: E402
from prunekit.training.callbacks import Callback, RecordAt  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ALL_METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "imp", "gmp", "espn-finetune",
               "espn-finetune-rule", "espn-rewind"]
CONTROLS = ["ctl-espn-mask-dense-imp-recipe", "ctl-imp-mask-dense-espn-recipe", "ctl-espn-finetune-ft-x3"]

FAST = {
    "name": "resnet20-mnist1d",
    "model": "resnet20", "model_options": {"option": "A"},
    "data": {"kind": "mnist1d", "n_train": 20000, "n_test": 5000, "val_fraction": 0.1},
    # dense recipe (also IMP's per-level recipe and the at-init methods' recipe)
    "dense": {"epochs": 8, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"},
    "x_epochs": 5,  # steps after dense pretraining, in epochs of the training split: B = D + X
    # ESPN (authors): search SGD lr 0.05, momentum 0.9, wd 0; fine-tune lr 1e-3, wd 5e-4, x0.1 at 60%
    "espn": {"search_lr": 0.05, "threshold": 1e-2, "alpha_family": "cifar", "search_cap_fraction": 0.75,
             "rule_crossing_fraction": 0.5, "ft_lr": 1e-3, "ft_wd": 5e-4, "ft_step_at": 0.6},
    "imp_rate": 0.2,
    "sparsities": [0.995, 0.98, 0.99],  # run order: the most informative first
    "seeds": [0, 1, 2],
    "methods": ["espn-finetune", "espn-finetune-rule", "imp", "snip"],
    "controls": CONTROLS, "control_sparsities": [0.995],
}
# The paper's CIFAR-10 ResNet-32 setting (ESPN code: widths 32/64/128, option A). B = the
# paper's ESPN-Finetune budget: dense 160 + search (cap 300) + 50; everyone else matched to it.
FULL = {
    **FAST,
    "name": "resnet32w2-cifar10",
    "model": "resnet32", "model_options": {"option": "A", "width": 2},
    "data": {"kind": "cifar10", "val_fraction": 0.1, "augment": True},
    "dense": {"epochs": 160, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
              "schedule": "multistep", "milestones": [80, 120]},
    "x_epochs": 110,
    "sparsities": [0.9, 0.95, 0.98, 0.99, 0.995, 0.998],
    "methods": ALL_METHODS,
    "control_sparsities": [0.98, 0.995],
}

# Paper-recipe table (PROTOCOL.md §1: "each method as its authors ran it, scaled by one stated
# factor for all methods alike"). The authors' CIFAR epochs, every one multiplied by SCALE:
# dense 160, ESPN search cap 300 and fine-tune 50, IMP 160 per level, SNIP 160 from init.
# 1/40 is the largest factor at which IMP's 24 levels at 99.5 % fit this machine's session
# (24 x 4 epochs per seed); budgets are deliberately unequal and every row states its own.
PAPER_EPOCHS = {"dense": 160, "search_cap": 300, "finetune": 50, "imp_level": 160, "from_init": 160}
PAPER = {
    **FAST,
    "name": "resnet20-mnist1d-paper",
    "recipe": "paper", "paper_scale": 1 / 40,
    "dense": {**FAST["dense"], "epochs": 4},  # 160 x 1/40
    "sparsities": [0.995],
    "methods": ["espn-finetune", "imp", "snip"],
    "controls": [], "control_sparsities": [],
}


def paper_steps(cfg, phase: str, spe: int) -> int:
    """Optimiser steps of one phase of the authors' recipe, scaled by cfg['paper_scale']."""
    return max(1, round(PAPER_EPOCHS[phase] * cfg["paper_scale"] * spe))


def load_data(cfg, seed):
    d = cfg["data"]
    if d["kind"] == "mnist1d":
        return mnist1d_bundle(d["n_train"], d["n_test"], d["val_fraction"], seed=seed, as_image=True)
    return datasets.load(d["kind"], val_fraction=d["val_fraction"], seed=seed, augment=d.get("augment", False))


def build(cfg, data):
    return models.build(cfg["model"], data.in_channels, data.input_size, data.num_classes, **cfg["model_options"])


class _Search(Callback):
    """ESPN's L1 penalty; stops when the count of m > threshold reaches the keep count (checked
    per step) or at ``cap`` steps."""

    def __init__(self, s: ESPNSearch, cap: int):
        self.s, self.cap, self.reached = s, cap, False

    def extra_loss(self, trainer, out, y):
        return self.s.penalty()

    def after_step(self, trainer):
        self.reached = self.reached or self.s.done()

    def should_stop(self, trainer):
        return self.reached or trainer.step >= self.cap


def espn_search(start, data, target, alpha, cfg, seed, cap: int | None = None):
    """Search on a copy of ``start`` for at most ``cap`` steps (default: the budget-matched
    allowance); returns (searched net with folded W and binary masks, steps, reached)."""
    e = cfg["espn"]
    net = copy.deepcopy(start)
    s = ESPNSearch(net, sparsity=target, alpha=alpha, threshold=e["threshold"])
    spe = steps_per_epoch(data, cfg["dense"]["batch_size"])
    cap = cap or int(e["search_cap_fraction"] * cfg["x_epochs"] * spe)
    hp = TrainHparams(epochs=math.ceil(cap / spe), batch_size=cfg["dense"]["batch_size"], lr=e["search_lr"],
                      momentum=0.9, weight_decay=0.0, schedule="constant", seed=seed)
    cb = _Search(s, cap)
    res = train(net, dataclasses.replace(data, val=None), hp, callbacks=[cb], progress=False, eval_test=False)
    s.finish()
    return net, res.steps, cb.reached


def rule_alpha(target, data, cfg) -> tuple[float, float]:
    """The written rule: alpha_scale = max(1, steps the authors' alpha needs for the L1 drift
    alone to reach the threshold / (rule_crossing_fraction x X steps)). No accuracy is used."""
    e = cfg["espn"]
    a = default_alpha(target, e["alpha_family"])
    need = (1 - e["threshold"]) * (1 - 0.9) / (e["search_lr"] * a)
    allow = e["rule_crossing_fraction"] * cfg["x_epochs"] * steps_per_epoch(data, cfg["dense"]["batch_size"])
    scale = max(1.0, need / allow)
    return a * scale, scale


def espn_ft_hp(cfg, seed, steps, spe):
    e = cfg["espn"]
    ep = max(1, math.ceil(steps / spe))
    return TrainHparams(epochs=ep, batch_size=cfg["dense"]["batch_size"], lr=e["ft_lr"], momentum=0.9,
                        weight_decay=e["ft_wd"], schedule="multistep",
                        milestones=[max(1, round(e["ft_step_at"] * ep))], seed=seed)


def dense_hp(cfg, seed, **kw):
    return TrainHparams(**{**cfg["dense"], **kw}, seed=seed)


def result_row(cfg, method, sparsity, seed, net, res, budget: Budget, t0, **extra) -> dict:
    rep = sparsity_report(net)
    return {"setup": cfg["name"], "model": cfg["model"], "method": method, "sparsity": sparsity, "seed": seed,
            "final_acc": res.final_test_acc, "val_selected_acc": res.test_at_best_val, "best_acc": res.best_test_acc,
            "best_val_acc": res.best_val_acc, "train_acc_final": res.history[-1]["train_acc"] if res.history else None,
            "sparsity_measured": round(rep["sparsity_prunable"], 6), **budget.record(), **layer_kept(net),
            "seconds": round(time.perf_counter() - t0, 1), **extra}


def part_path(out_dir: Path, cfg, seed, sparsity, method) -> Path:
    return out_dir / f"{cfg['name']}_s{seed}_{sparsity:g}_{method}.json"


def dense_model(cfg, seed, data, out_dir, log, cache_dir=ROOT / "runs" / "espn_resnet_dense"):
    """Train (or reload) the seed's dense model and its rewind point (end of epoch 1)."""
    cache = Path(cache_dir) / f"{cfg['name']}_s{seed}.pt"
    spe = steps_per_epoch(data, cfg["dense"]["batch_size"])
    torch.manual_seed(seed)
    net = build(cfg, data)
    if cache.exists():
        st = torch.load(cache, weights_only=True)
        net.load_state_dict(st["model"])
        return net, st["rewind"], st["row"]
    rec = RecordAt(spe)
    t0 = time.perf_counter()
    res = train(net, data, dense_hp(cfg, seed), callbacks=[rec], progress=False)
    b = Budget(spe).add("dense", res.steps)
    row = {"setup": cfg["name"], "method": "dense", "sparsity": 0.0, "seed": seed, "final_acc": res.final_test_acc,
           "val_selected_acc": res.test_at_best_val, "best_acc": res.best_test_acc, "best_val_acc": res.best_val_acc,
           "train_acc_final": res.history[-1]["train_acc"], **b.record(), "seconds": round(time.perf_counter() - t0, 1)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "rewind": rec.state, "row": row}, cache)
    atomic_write_json(out_dir / f"{cfg['name']}_s{seed}_dense.json", {"rows": [row]})
    log(f"[s{seed}] dense val-sel {row['val_selected_acc']:.4f} final {row['final_acc']:.4f} ({row['seconds']} s)")
    return net, rec.state, row


def imp_levels(cfg, sparsity, seed, data, dense, rewind, per: int, budget: Budget):
    """IMP to ``sparsity`` from the dense model, ``per`` steps of the dense recipe per level
    (rewinding to ``rewind``); returns (final net, its last TrainResult, number of levels)."""
    sched = imp_schedule([sparsity], cfg["imp_rate"])
    for i, (_, net) in enumerate(imp_path(copy.deepcopy(dense), rewind, sched)):
        last = i == len(sched) - 1
        res = train_steps(net, data if last else dataclasses.replace(data, val=None), dense_hp(cfg, seed), per,
                          seed=seed + 1000 * i, eval_test=last)
        budget.add("levels", res.steps)
    return net, res, len(sched)


def at_init_net(cfg, method, sparsity, seed, data):
    """A fresh seeded init masked by SNIP, GraSP or SynFlow scores."""
    torch.manual_seed(seed + 1)
    net = build(cfg, data)
    if method == "synflow":
        masks = synflow_masks(net, sparsity, example=data.example_inputs(2))
    else:
        n = 100 if method == "grasp" else 128
        idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
        masks = score_masks(net, method, sparsity, data.train.get_batch(idx))
    apply_masks(net, masks)
    return net


def run_method_paper(cfg, method, sparsity, seed, data, dense, rewind, dense_row):
    """One paper-recipe run: the authors' epochs x cfg['paper_scale'], budgets unequal."""
    spe = steps_per_epoch(data, cfg["dense"]["batch_size"])
    D = dense_row["budget_steps"]
    t0 = time.perf_counter()
    if method == "espn-finetune":
        alpha = default_alpha(sparsity, cfg["espn"]["alpha_family"])
        searched, ss, reached = espn_search(dense, data, sparsity, alpha, cfg, seed,
                                            cap=paper_steps(cfg, "search_cap", spe))
        net, ft = copy.deepcopy(searched), paper_steps(cfg, "finetune", spe)
        res = train_steps(net, data, espn_ft_hp(cfg, seed, ft, spe), ft, seed=seed)
        b = Budget(spe).add("dense", D).add("search", ss).add("finetune", res.steps)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0, alpha=alpha, alpha_scale=1.0,
                          search_steps=ss, reached=reached, recipe="paper")
    if method == "imp":
        per = paper_steps(cfg, "imp_level", spe)
        b = Budget(spe).add("dense", D)
        net, res, L = imp_levels(cfg, sparsity, seed, data, dense, rewind, per, b)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0, levels=L, level_steps=per, recipe="paper")
    if method == "snip":
        net = at_init_net(cfg, method, sparsity, seed, data)
        res = train_steps(net, data, dense_hp(cfg, seed), paper_steps(cfg, "from_init", spe), seed=seed)
        return result_row(cfg, method, sparsity, seed, net, res, Budget(spe).add("from-init", res.steps), t0,
                          recipe="paper")
    raise ValueError(f"the paper-recipe table runs espn-finetune, imp and snip, not {method!r}")


def run_method(cfg, method, sparsity, seed, data, dense, rewind, dense_row, cache: dict):
    """One budget-matched run. ``cache`` shares masks between a method and its controls."""
    spe = steps_per_epoch(data, cfg["dense"]["batch_size"])
    D = dense_row["budget_steps"]
    X = cfg["x_epochs"] * spe
    t0 = time.perf_counter()
    if method in ("espn-finetune", "espn-finetune-rule", "ctl-espn-finetune-ft-x3"):
        base = "espn-finetune-rule" if method == "ctl-espn-finetune-ft-x3" else method
        if base == "espn-finetune":
            alpha, scale = default_alpha(sparsity, cfg["espn"]["alpha_family"]), 1.0
        else:
            alpha, scale = rule_alpha(sparsity, data, cfg)
        key = ("espn", base, sparsity)
        if key not in cache:
            cache[key] = espn_search(dense, data, sparsity, alpha, cfg, seed)
        searched, ss, reached = cache[key]
        net = copy.deepcopy(searched)
        ft = X - ss if method != "ctl-espn-finetune-ft-x3" else 3 * (X - ss)
        res = train_steps(net, data, espn_ft_hp(cfg, seed, ft, spe), ft, seed=seed)
        b = Budget(spe).add("dense", D).add("search", ss).add("finetune", res.steps)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0, alpha=alpha, alpha_scale=scale,
                          search_steps=ss, reached=reached)
    if method == "imp":
        per = max(1, X // len(imp_schedule([sparsity], cfg["imp_rate"])))
        b = Budget(spe).add("dense", D)
        net, res, L = imp_levels(cfg, sparsity, seed, data, dense, rewind, per, b)
        cache[("imp", sparsity)] = get_masks(net)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0, levels=L, level_steps=per)
    if method in ("snip", "grasp", "synflow"):
        net = at_init_net(cfg, method, sparsity, seed, data)
        res = train_steps(net, data, dense_hp(cfg, seed), D + X, seed=seed)
        return result_row(cfg, method, sparsity, seed, net, res, Budget(spe).add("from-init", res.steps), t0)
    if method in ("magnitude", "random"):
        net = copy.deepcopy(dense)
        masks = magnitude_masks(net, sparsity, "global") if method == "magnitude" else random_masks(net, sparsity, "global", generator=torch.Generator().manual_seed(seed))
        apply_masks(net, masks)
        res = train_steps(net, data, dense_hp(cfg, seed, lr=0.01), X, seed=seed)
        return result_row(cfg, method, sparsity, seed, net, res, Budget(spe).add("dense", D).add("finetune", res.steps), t0)
    if method == "gmp":
        net = copy.deepcopy(dense)
        ramp = max(1, int(0.75 * X))
        cb = GMPCallback(sparsity, start=0, end=ramp, every=max(1, ramp // 20))
        res = train_steps(net, data, dense_hp(cfg, seed, lr=0.01), X, callbacks=[cb], seed=seed)
        # only epochs that ended at the final sparsity may be selected (an earlier, denser
        # epoch would win on validation and report a model that is not at the target)
        res = only_at_final_sparsity(res, cb.end)
        return result_row(cfg, method, sparsity, seed, net, res, Budget(spe).add("dense", D).add("gradual", res.steps), t0,
                          selected_from_step=cb.end)
    if method == "espn-rewind":
        warm = copy.deepcopy(dense)
        warm.load_state_dict(rewind)
        alpha, scale = rule_alpha(sparsity, data, cfg)
        searched, ss, reached = espn_search(warm, data, sparsity, alpha, cfg, seed)
        net = copy.deepcopy(dense)
        net.load_state_dict(rewind)
        apply_masks(net, get_masks(searched))
        steps = D + X - spe - ss
        res = train_steps(net, data, dense_hp(cfg, seed), steps, seed=seed)
        b = Budget(spe).add("warm-up", spe).add("search", ss).add("retrain", res.steps)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0, alpha=alpha, alpha_scale=scale,
                          search_steps=ss, reached=reached)
    if method == "ctl-espn-mask-dense-imp-recipe":
        # ESPN's mask (rule alpha) on the PRETRAINED dense weights (not folded), retrained with
        # the dense/IMP recipe (lr 0.1 cosine) for the steps ESPN-Finetune fine-tunes
        key = ("espn", "espn-finetune-rule", sparsity)
        if key not in cache:
            alpha, _ = rule_alpha(sparsity, data, cfg)
            cache[key] = espn_search(dense, data, sparsity, alpha, cfg, seed)
        searched, ss, _ = cache[key]
        net = copy.deepcopy(dense)
        apply_masks(net, get_masks(searched))
        res = train_steps(net, data, dense_hp(cfg, seed), X - ss, seed=seed)
        b = Budget(spe).add("dense", D).add("search", ss).add("retrain", res.steps)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0)
    if method == "ctl-imp-mask-dense-espn-recipe":
        # IMP's final mask on the PRETRAINED dense weights, ESPN's fine-tune recipe for X steps
        # (IMP's own levels cost budget too: counted, so this row is over budget by design)
        masks = cache.get(("imp", sparsity))
        if masks is None:
            raise RuntimeError("run imp before ctl-imp-mask-dense-espn-recipe")
        net = copy.deepcopy(dense)
        apply_masks(net, masks)
        res = train_steps(net, data, espn_ft_hp(cfg, seed, X, spe), X, seed=seed)
        b = Budget(spe).add("dense", D).add("imp-levels (for the mask)", X).add("finetune", res.steps)
        return result_row(cfg, method, sparsity, seed, net, res, b, t0)
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------
def merge(out_dir: Path, out_json: Path, cfg) -> list[dict]:
    rows = {}
    for p in sorted(out_dir.glob(f"{cfg['name']}_s*.json")):
        for r in json.loads(p.read_text())["rows"]:
            rows[(r["method"], r["sparsity"], r["seed"])] = r
    rows = sorted(rows.values(), key=lambda r: (r["sparsity"], r["method"], r["seed"]))
    atomic_write_json(out_json, {"config": cfg, "rows": rows, "tables": tables(rows)})
    return rows


def ms(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (None, None)


def tables(rows) -> dict:
    """{method: {sparsity: {"n", "val_selected", "final", "best_test", "budget_steps", ...}}}."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(str(r["sparsity"]), []).append(r)
    summ = {}
    for m, by in out.items():
        summ[m] = {}
        for s, rs in by.items():
            summ[m][s] = {"n": len(rs), "seeds": sorted(r["seed"] for r in rs),
                          "val_selected": ms([100 * r["val_selected_acc"] for r in rs]),
                          "final": ms([100 * r["final_acc"] for r in rs]),
                          "best_test": ms([100 * r["best_acc"] for r in rs]),
                          "train_acc_final": ms([100 * r["train_acc_final"] for r in rs if r.get("train_acc_final") is not None]),
                          "budget_steps": [min(r["budget_steps"] for r in rs), max(r["budget_steps"] for r in rs)],
                          "budget_epochs": [min(r["budget_epochs"] for r in rs), max(r["budget_epochs"] for r in rs)],
                          "collapsed_runs": sum(bool(r.get("empty_layers")) for r in rs),
                          "reached": sum(bool(r.get("reached")) for r in rs) if "reached" in rs[0] else None,
                          "seconds": round(sum(r["seconds"] for r in rs), 1)}
    return summ


def markdown(summ) -> str:
    sps = sorted({s for m in summ.values() for s in m if float(s) > 0}, key=float)
    lines = ["| method | sparsity | n | final epoch % | test @ val-chosen epoch % | best epoch on test % (as the paper reports) "
             "| budget (steps / epochs) | runs with an empty layer |", "|---" * 8 + "|"]
    d = summ.get("dense", {}).get("0.0")
    if d:
        lines.append(f"| dense | 0 | {d['n']} | {d['final'][0]:.2f} ± {d['final'][1]:.2f} | {d['val_selected'][0]:.2f} ± "
                     f"{d['val_selected'][1]:.2f} | {d['best_test'][0]:.2f} ± {d['best_test'][1]:.2f} | "
                     f"{d['budget_steps'][0]} / {d['budget_epochs'][0]} | - |")
    for s in sps:
        for m in [*ALL_METHODS, *CONTROLS]:
            v = summ.get(m, {}).get(s)
            if not v:
                continue
            bs = v["budget_steps"]
            be = v["budget_epochs"]
            lines.append(f"| {m} | {float(s) * 100:g}% | {v['n']} | {v['final'][0]:.2f} ± {v['final'][1]:.2f} | "
                         f"{v['val_selected'][0]:.2f} ± {v['val_selected'][1]:.2f} | {v['best_test'][0]:.2f} ± "
                         f"{v['best_test'][1]:.2f} | {bs[0]}{'-' + str(bs[1]) if bs[1] != bs[0] else ''} / "
                         f"{be[0]}{'-' + str(be[1]) if be[1] != be[0] else ''} | {v['collapsed_runs']} |")
    return "\n".join(lines)


def plot(summ, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in [*ALL_METHODS, *CONTROLS]:
        pts = sorted((float(s), v) for s, v in summ.get(m, {}).items())
        if not pts:
            continue
        ax.errorbar([1 / (1 - p[0]) for p in pts], [p[1]["val_selected"][0] for p in pts],
                    yerr=[p[1]["val_selected"][1] for p in pts], marker="o", ms=3, capsize=2, label=m,
                    ls="--" if m.startswith("ctl") else "-")
    d = summ.get("dense", {}).get("0.0")
    if d:
        ax.axhline(d["val_selected"][0], color="k", ls=":", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression (conv+linear weights / kept)")
    ax.set_ylabel("test % at the epoch chosen on validation")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, png)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--sparsities", nargs="*", type=float)
    ap.add_argument("--methods", nargs="*")
    ap.add_argument("--controls", nargs="*")
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--tiny", action="store_true", help="a tiny slice of the chosen mode (unit tests)")
    ap.add_argument("--model", choices=["resnet20", "resnet32"], help="fast mode only: the ResNet depth (default 20)")
    ap.add_argument("--paper-recipe", action="store_true",
                    help="fast mode only: the paper-recipe table (authors' epochs x 1/40, unequal budgets)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = copy.deepcopy(FULL if a.full else PAPER if a.paper_recipe else FAST)
    for k in ("seeds", "sparsities", "methods", "controls"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if a.model and not a.full:
        cfg["model"], cfg["name"] = a.model, f"{a.model}-mnist1d" + ("-paper" if a.paper_recipe else "")
    if a.tiny:  # the same code path on a tiny slice: 1-epoch phases, small batches, narrow model
        cfg["dense"] = {**cfg["dense"], "epochs": 1, "milestones": [], "batch_size": 32}
        cfg["x_epochs"] = 1
        cfg["name"] += "-tiny"
        if cfg["data"]["kind"] == "mnist1d":
            cfg["data"] = {**cfg["data"], "n_train": 1000, "n_test": 300}
        cfg["model_options"] = {**cfg["model_options"], "width": cfg["model_options"].get("width", 1) / 4}
    results = Path(a.out) if a.out else RESULTS
    out_dir = results / "espn_resnet"
    suffix = (f"{'_full' if a.full else ''}{'_' + a.model if a.model and a.model != 'resnet20' else ''}"
              f"{'_paper' if cfg.get('recipe') == 'paper' else ''}")
    out_json = results / f"espn_resnet{suffix}{'_tiny' if a.tiny else ''}.json"
    log = lambda m: print(m, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    if not a.merge:
        dense = {}
        for seed in cfg["seeds"]:
            data = load_data(cfg, seed)
            if a.tiny:  # a tiny slice: 128 train / 64 val / 64 test samples
                def cut(split, n):
                    return split.subset(torch.arange(min(n, len(split))))
                data = dataclasses.replace(data, train=cut(data.train, 128), val=cut(data.val, 64), test=cut(data.test, 64))
            cache_dir = results / "cache" if a.out else ROOT / "runs" / "espn_resnet_dense"
            dense[seed] = (data, *dense_model(cfg, seed, data, out_dir, log, cache_dir))
        for sp in cfg["sparsities"]:
            for seed in cfg["seeds"]:
                data, net, rewind, drow = dense[seed]
                cache: dict = {}
                todo = cfg["methods"] + (cfg["controls"] if sp in cfg["control_sparsities"] else [])
                for m in todo:
                    p = part_path(out_dir, cfg, seed, sp, m)
                    if p.exists():
                        continue
                    torch.manual_seed(seed)
                    r = (run_method_paper(cfg, m, sp, seed, data, net, rewind, drow) if cfg.get("recipe") == "paper"
                         else run_method(cfg, m, sp, seed, data, net, rewind, drow, cache))
                    atomic_write_json(p, {"rows": [r]})
                    log(f"[s{seed} {sp:g}] {m}: val-sel {r['val_selected_acc']:.4f} final {r['final_acc']:.4f} "
                        f"best-test {r['best_acc']:.4f} budget {r['budget_steps']} steps "
                        f"{'reached ' + str(r['reached']) if 'reached' in r else ''} ({r['seconds']} s, "
                        f"total {time.perf_counter() - t_all:.0f} s)")
                    merge(out_dir, out_json, cfg)
    rows = merge(out_dir, out_json, cfg)
    summ = tables(rows)
    print(markdown(summ))
    if rows and not a.tiny:
        plot(summ, results / f"espn_resnet{suffix}.png",
             f"{cfg['name']}, paper recipe x {cfg['paper_scale']:g} (unequal budgets)" if cfg.get("recipe") == "paper"
             else f"{cfg['name']}, budget-matched (every method {cfg['dense']['epochs']}+{cfg['x_epochs']} epochs of steps)")


if __name__ == "__main__":
    main()
