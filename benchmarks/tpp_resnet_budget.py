"""Budget-matched control for the TPP ResNet-20 benchmark (PROTOCOL.md §4.4).

TPP regularises for 800 steps before its 12-epoch (348-step) fine-tune; L1 and L1+OrthP in
``tpp_resnet.py`` only fine-tune. Here L1 and L1+OrthP fine-tune 40 epochs (1,160 steps,
within 5 % of TPP's 800 + 348 = 1,148), LR schedule scaled alike (x0.1 at 50 % and 75 %),
from the same dense model as ``tpp_resnet.py`` (same data, seed and pretraining code path).

    .venv/bin/python benchmarks/tpp_resnet_budget.py                  # ratio 0.9, LR 1e-3, seeds 0 1 2
    .venv/bin/python benchmarks/tpp_resnet_budget.py --ratio 0.95 --out benchmarks/results/tpp_resnet_budget_0.95.json
    .venv/bin/python benchmarks/tpp_resnet_budget.py --model resnet56 --out benchmarks/results/tpp_resnet56_budget.json
    .venv/bin/python benchmarks/tpp_resnet_budget.py --tiny --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from budget import atomic_write_json  # noqa: E402
from tpp_mlp7 import TPP_REG_STEPS  # noqa: E402
from tpp_resnet import FAST  # noqa: E402
from prunekit import data as datasets  # noqa: E402
from prunekit import models  # noqa: E402
from prunekit.methods.orthp import orthogonalize_  # noqa: E402
from prunekit.methods.tpp_schedule import SelectHparams, groups_of, l1_plan, slim_by_plan  # noqa: E402
from prunekit.training import TrainHparams, evaluate, train  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tpp_resnet_budget.json"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model", default=FAST["model"], help="resnet20 (default) or resnet56")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = copy.deepcopy(FAST)
    cfg["model"] = a.model
    if a.tiny:
        cfg["pretrain"] = {**cfg["pretrain"], "epochs": 1, "milestones": []}
    out = {"config": cfg, "ratio": a.ratio, "lr": a.lr, "dense": [], "rows": []}
    t_all = time.perf_counter()
    for seed in a.seeds:
        data = datasets.load(cfg["dataset"], seed=seed, **cfg["dataset_options"])
        if a.tiny:
            data.train = data.train.subset(torch.arange(256))
        spe = -(-len(data.train) // cfg["finetune"]["batch_size"])
        ft_epochs = cfg["finetune"]["epochs"] + round(TPP_REG_STEPS / spe) if not a.tiny else 2
        torch.manual_seed(seed)
        dense = models.build(cfg["model"], data.in_channels, data.input_size, data.num_classes, **cfg["model_options"])
        pre = TrainHparams(**cfg["pretrain"], seed=seed)
        t0 = time.perf_counter()
        dres = train(dense, data, pre, progress=False)
        out["dense"].append({"seed": seed, "test_acc": evaluate(dense, data.test)["top1"], "steps": dres.steps,
                             "seconds": round(time.perf_counter() - t0, 1)})
        ex = data.example_inputs(2)
        groups = groups_of(dense, ex)
        plan = l1_plan(dense, groups, a.ratio, SelectHparams(**cfg["select"]))
        l1 = slim_by_plan(copy.deepcopy(dense), ex, plan, groups)
        for method, net in (("L1", copy.deepcopy(l1)), ("L1+OrthP", orthogonalize_(copy.deepcopy(l1)))):
            hp = TrainHparams(**{**cfg["finetune"], "epochs": ft_epochs,
                                 "milestones": [ft_epochs // 2, (3 * ft_epochs) // 4]}, lr=a.lr, seed=seed)
            t0 = time.perf_counter()
            res = train(net, data, hp, progress=False)
            out["rows"].append({"method": method, "ratio": a.ratio, "lr": a.lr, "seed": seed, "table": "budget-matched",
                                "final_acc": res.final_test_acc, "val_selected_acc": res.test_at_best_val,
                                "best_acc": res.best_test_acc, "budget_steps": dres.steps + res.steps,
                                "budget": f"dense {dres.steps} + finetune {res.steps} = {dres.steps + res.steps} steps",
                                "finetune_epochs": ft_epochs, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"seed {seed} {method}: val-sel {res.test_at_best_val:.4f} final {res.final_test_acc:.4f} "
                  f"({dres.steps + res.steps} steps)", flush=True)
            out["seconds"] = round(time.perf_counter() - t_all, 1)
            atomic_write_json(Path(a.out), out)


if __name__ == "__main__":
    main()
