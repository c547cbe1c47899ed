"""Train a tiny MLP on synthetic data; used by the resume and DDP tests.

usage: train_tiny.py OUT_WEIGHTS [--ckpt PATH] [--resume] [--every N] [--sleep S] [--epochs E]
Works unchanged under torchrun (the trainer joins the process group from the environment).
"""
import argparse
import time

import torch
import torch.nn as nn

from prunekit.data import load
from prunekit.foundations.io import save_tensors
from prunekit.training import Callback, TrainHparams, train


class Slow(Callback):
    """Sleep after each step so a test can kill the run mid-epoch."""

    def __init__(self, s):
        self.s = s

    def after_step(self, trainer):
        time.sleep(self.s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ckpt")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--every", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = load("synthetic", shape=(1, 6, 6), num_classes=4, n_train=256, n_test=64, augment=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Dropout(a.dropout), nn.Linear(32, 4))
    hp = TrainHparams(epochs=a.epochs, batch_size=32, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                      schedule="cosine", warmup_epochs=1, seed=3)
    train(model, data, hp, callbacks=[Slow(a.sleep)] if a.sleep else [], checkpoint_path=a.ckpt,
          checkpoint_every=a.every, resume=a.resume, progress=False)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    save_tensors(a.out, model.state_dict())


if __name__ == "__main__":
    main()
