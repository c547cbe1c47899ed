"""The training loop: optimiser, schedule, callbacks, DDP, atomic checkpoints and resume.

Resume is exact: data order is a function of (seed, epoch), augmentation draws from its
own generator, and the checkpoint holds model, optimiser, scheduler, step, position in
the epoch, both RNG states and every callback's state. A run killed mid-epoch and
resumed therefore reaches the same final weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.base import DataBundle, TensorData, augment_batch
from ..foundations.io import join_state, load_tensors, save_tensors, split_state
from .callbacks import Callback
from .distributed import batch_order, init_from_env, local_slice
from .hparams import TrainHparams
from .progress import clean_label, current_phase, epoch_line, is_terminal


def model_device(model: nn.Module) -> torch.device:
    """Batches follow the model: move the model to a GPU and training/evaluation run there."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1000) -> dict:
    """Top-1 and top-5 accuracy (fractions) and mean cross-entropy loss."""
    was = model.training
    model.eval()
    dev = model_device(model)
    n, c1, c5, loss = len(data), 0, 0, 0.0
    for s in range(0, n, batch_size):
        x, y = data.get_batch(slice(s, s + batch_size))
        x, y = x.to(dev), y.to(dev)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum().item()
        c5 += (top == y[:, None]).any(1).sum().item()
    model.train(was)
    return {"top1": c1 / max(n, 1), "top5": c5 / max(n, 1), "loss": loss / max(n, 1)}


def make_optimizer(model: nn.Module, hp: TrainHparams, params=None) -> torch.optim.Optimizer:
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, betas=(hp.momentum, 0.999), weight_decay=hp.weight_decay)
    return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
                           weight_decay=hp.weight_decay)


def lr_factor(hp: TrainHparams, step: int, steps_per_epoch: int) -> float:
    """LR multiplier at an iteration: linear warm-up, then multistep / cosine / constant."""
    warm = hp.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    epoch = step / max(steps_per_epoch, 1)
    if hp.schedule == "cosine":
        total = max(hp.epochs * steps_per_epoch - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total) / total))
    if hp.schedule == "multistep":
        ms = hp.milestones or [int(hp.epochs * 0.5), int(hp.epochs * 0.75)]
        return hp.gamma ** sum(epoch >= m for m in ms)
    return 1.0


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    final_test_acc: float | None = None
    best_test_acc: float | None = None  # best epoch on the TEST set (as ESPN/GraSP code report)
    best_val_acc: float | None = None
    test_at_best_val: float | None = None  # test accuracy of the epoch chosen on validation
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


class Trainer:
    """Holds the loop state; callbacks receive it (``trainer.model``, ``.step``, ``.epoch``)."""

    def __init__(self, model, data, hp, callbacks=(), checkpoint_path=None, checkpoint_every=0,
                 log_path=None, progress=True, optimizer=None, eval_test=True):
        self.rank, self.world = init_from_env()
        self.model = model
        self.net = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(model)
        self.data = data if isinstance(data, DataBundle) else None
        self.train_set = data.train if isinstance(data, DataBundle) else data
        self.hp = hp
        self.callbacks: list[Callback] = list(callbacks)
        self.ckpt = Path(checkpoint_path) if checkpoint_path else None
        self.ckpt_every = checkpoint_every
        self.log_path = Path(log_path) if log_path else None
        self.progress = progress and self.rank == 0
        self.optimizer = optimizer or make_optimizer(model, hp)
        self.spe = len(batch_order(len(self.train_set), hp.batch_size, 0, 0, self.world))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(hp, s, self.spe))
        self.aug_gen = torch.Generator().manual_seed(hp.seed + 7)
        self.device = model_device(model)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.result = TrainResult()
        self.eval_test = eval_test

    # --- checkpointing -------------------------------------------------------------
    def state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "rng": torch.get_rng_state(), "aug_rng": self.aug_gen.get_state(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "history": self.result.history,
        }

    def save_checkpoint(self) -> None:
        if self.ckpt is None or self.rank != 0:
            return
        skel, tensors = split_state(self.state(), prefix="state")
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        save_tensors(self.ckpt, tensors, {"state": skel, "hparams": self.hp.__dict__})

    def load_checkpoint(self) -> None:
        tensors, meta = load_tensors(self.ckpt)
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd)
        st = join_state(meta["state"], tensors)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        torch.set_rng_state(st["rng"])
        self.aug_gen.set_state(st["aug_rng"])
        for cb, s in zip(self.callbacks, st["callbacks"]):
            cb.load_state_dict(s)
        self.result.history = st["history"]

    # --- loop ----------------------------------------------------------------------
    def _log(self, rec: dict) -> None:
        if self.log_path and self.rank == 0:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def run(self, resume: bool = False) -> TrainResult:
        hp = self.hp
        if hp.deterministic:
            torch.use_deterministic_algorithms(True)
        if resume and self.ckpt is not None and self.ckpt.exists():
            self.load_checkpoint()
        else:
            torch.manual_seed(hp.seed)
        for cb in self.callbacks:
            cb.on_train_start(self)
        t0 = time.perf_counter()
        label = clean_label(current_phase())
        # a bar in a terminal; one line per epoch anywhere else (CI, log files)
        lines = self.progress and not is_terminal()
        bar = tqdm(total=hp.epochs * self.spe, initial=self.step, disable=not self.progress or lines,
                   desc=label, leave=False, dynamic_ncols=True)
        stop = False
        while self.epoch < hp.epochs and not stop:
            batches = batch_order(len(self.train_set), hp.batch_size, hp.seed, self.epoch, self.world)
            self.net.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for bi in range(self.batch_in_epoch, len(batches)):
                x, y = self.train_set.get_batch(batches[bi])
                x, y = x.to(self.device), y.to(self.device)
                if self.data is not None and self.data.augment:
                    x = augment_batch(x, self.aug_gen, **self.data.augment)
                x, y = local_slice(x, self.rank, self.world), local_slice(y, self.rank, self.world)
                out = self.net(x)
                loss = F.cross_entropy(out, y)
                total = loss
                for cb in self.callbacks:
                    extra = cb.extra_loss(self, out, y)
                    if extra is not None:
                        total = total + extra
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                for cb in self.callbacks:
                    cb.after_backward(self)
                self.optimizer.step()
                self.scheduler.step()
                for cb in self.callbacks:
                    cb.after_step(self)
                self.step += 1
                self.batch_in_epoch = bi + 1
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                seen += len(y)
                bar.update(1)
                bar.set_postfix(epoch=self.epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if self.ckpt_every and self.step % self.ckpt_every == 0:
                    self.save_checkpoint()
                if any(cb.should_stop(self) for cb in self.callbacks):
                    stop = True
                    break
            rec = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
            if self.data is not None and self.data.val is not None:
                rec["val_acc"] = evaluate(self.model, self.data.val)["top1"]
            if self.data is not None and self.eval_test:
                rec["test_acc"] = evaluate(self.model, self.data.test)["top1"]
            for cb in self.callbacks:
                cb.on_epoch_end(self, rec)
            self.result.history.append(rec)
            self._log(rec)
            if lines:
                print(epoch_line(label, rec, hp.epochs), file=sys.stderr, flush=True)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.save_checkpoint()
            if any(cb.should_stop(self) for cb in self.callbacks):
                stop = True
        bar.close()
        self.result.stopped_early = stop
        self._summarise(time.perf_counter() - t0)
        return self.result

    def _summarise(self, seconds: float) -> None:
        r, h = self.result, self.result.history
        r.steps, r.seconds = self.step, seconds
        tests = [e["test_acc"] for e in h if "test_acc" in e]
        if tests:
            r.final_test_acc, r.best_test_acc = tests[-1], max(tests)
        vals = [(e["val_acc"], i) for i, e in enumerate(h) if "val_acc" in e]
        if vals:
            best, i = max(vals, key=lambda t: (t[0], t[1]))  # latest epoch among ties
            r.best_val_acc = best
            r.test_at_best_val = h[i].get("test_acc")


def train(model: nn.Module, data: DataBundle | TensorData, hp: TrainHparams, *, callbacks=(), checkpoint_path=None,
          checkpoint_every: int = 0, resume: bool = False, log_path=None, progress: bool = True,
          optimizer=None, eval_test: bool = True) -> TrainResult:
    """Train ``model`` in place and return per-epoch history and summary accuracies."""
    return Trainer(model, data, hp, callbacks, checkpoint_path, checkpoint_every, log_path, progress,
                   optimizer, eval_test).run(resume=resume)
