"""TPP benchmark 2: a CIFAR-style ResNet, layer-wise ratios, L1 / L1+OrthP / GReg-2 / TPP / Scratch.

Fast mode (default, ~30 min on one core): ResNet-20 on MNIST-1D as 1x40 images
(``mnist1d``, as_image=True; 3600 train / 400 val / 1000 test). Chosen over mnist5k
because a ResNet-20 step on a 1x40 input costs ~1/20 of a 28x28 one, which is what makes
5 methods x 3 ratios x 2 LRs x 2 seeds fit the budget, and because MNIST-1D is harder
(the dense net is far from 100%), so pruning damage is visible instead of saturating.
As in the paper's ResNet-56 scripts only the first conv of every residual block
(``layer*.conv1``) is pruned, at the same ratio in every block.

Full mode (``--full``, a GPU machine with CIFAR-10 under ./data): the paper's ResNet-56 /
CIFAR-10 setting: pretrain 200 epochs (LR 0.1, x0.1 at 100 and 150, batch 128, wd 5e-4);
TPP reg delta 1e-4 every 10 iterations to 1.0, stabilise 10k iterations, zeroing every
100; fine-tune 120 epochs (LR 0.01 or 0.001, x0.1 at 60 and 90, batch 128, wd 5e-4);
ratios 0.3/0.5/0.7/0.9/0.95.

    .venv/bin/python benchmarks/tpp_resnet.py
    .venv/bin/python benchmarks/tpp_resnet.py --full
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tpp_mlp7 import main  # noqa: E402

FAST = {
    "dataset": "mnist1d", "dataset_options": {"as_image": True, "val_fraction": 0.1},
    "model": "resnet20", "model_options": {},
    "pretrain": {"epochs": 30, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                 "schedule": "multistep", "milestones": [15, 23]},
    # paper: 120 epochs, x0.1 at 60 and 90; scaled to 12 epochs, x0.1 at 6 and 9
    "finetune": {"epochs": 12, "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4,
                 "schedule": "multistep", "milestones": [6, 9]},
    # rise 500 iterations (delta 2e-2), stabilise 300, zeroing a block's conv1 every 25
    "tpp": {"preset": "bench"},
    # GReg-2: uniform picking phase of 200 iterations, then GReg-1 with TPP's bench schedule
    "greg": {"preset": "bench", "pick_iters": 200},
    "select": {"layers": ["layer*.conv1"]},
    "ratios": [0.5, 0.7, 0.9], "lrs": [1e-2, 1e-3], "seeds": [0, 1], "jsv_samples": 32,
    "methods": ["L1", "L1+OrthP", "GReg-2", "TPP", "Scratch"],
}
FULL = {
    **FAST,
    "dataset": "cifar10", "dataset_options": {"augment": True, "val_fraction": 0.1},
    "model": "resnet56",
    "pretrain": {**FAST["pretrain"], "epochs": 200, "milestones": [100, 150]},
    "finetune": {**FAST["finetune"], "epochs": 120, "milestones": [60, 90]},
    "tpp": {"preset": "paper"},
    "greg": {"preset": "paper"},
    "ratios": [0.3, 0.5, 0.7, 0.9, 0.95], "seeds": [0, 1, 2],
}

if __name__ == "__main__":
    main(fast=copy.deepcopy(FAST), full=copy.deepcopy(FULL), default_out="tpp_resnet.json", description=__doc__)
