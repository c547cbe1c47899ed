"""Shared helpers for the mechanics tests (tiny models, spies on the trainer)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import data as datasets
from prunekit.methods.base import Context
from prunekit.training import Callback, TrainHparams
from prunekit.training import train as real_train



class ConvBN(nn.Module):
    """conv(1->6, 3x3) -> BN -> ReLU -> flatten -> linear(6*4*4 -> 3) on 1x6x6 inputs."""

    def __init__(self, c=6, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c * 16, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny_data(n_train=32, n_test=16, classes=3, val_fraction=0.0, shape=(1, 6, 6)):
    return datasets.load("synthetic", shape=shape, num_classes=classes, n_train=n_train, n_test=n_test,
                         val_fraction=val_fraction)


def make_ctx(data, build, ft=None, pre=None, seed=0, rewind_state=None):
    ft = ft or TrainHparams(epochs=1, batch_size=len(data.train), lr=0.01, weight_decay=5e-4)
    pre = pre or TrainHparams(epochs=1, batch_size=len(data.train), lr=0.05, weight_decay=5e-4)
    return Context(data=data, finetune=ft, pretrain=pre, build_model=build, example_inputs=data.example_inputs(2),
                   seed=seed, rewind_state=rewind_state)


class StepSpy(Callback):
    """Records, per step, the parameters the forward pass used and the gradients the optimiser
    received (after every earlier callback's ``after_backward``)."""

    def __init__(self, model=None):
        self.model = model
        self.params, self.grads = [], []

    def on_train_start(self, trainer):
        self.model = trainer.model

    def extra_loss(self, trainer, outputs, targets):
        # forward is done, the optimiser step not yet: these are the weights of this step
        self.params.append({k: v.detach().clone() for k, v in self.model.named_parameters()})
        return None

    def after_backward(self, trainer):
        self.grads.append({k: (v.grad.detach().clone() if v.grad is not None else None)
                           for k, v in self.model.named_parameters()})


class TrainSpy:
    """Stands in for ``train`` in a module: records each call's hyperparameters and callbacks,
    optionally adds callbacks, and runs the real trainer."""

    def __init__(self, add=None, after=None):
        self.calls = []
        self.add = add  # callable(call_index) -> list of callbacks appended after the method's own
        self.after = after  # callable(model) run when each call returns

    def __call__(self, model, data, hp, *args, callbacks=(), **kw):
        extra = list(self.add(len(self.calls))) if self.add else []
        self.calls.append({"hp": copy.deepcopy(hp), "callbacks": list(callbacks), "model": model, "extra": extra,
                           "kw": dict(kw)})
        res = real_train(model, data, hp, *args, callbacks=list(callbacks) + extra, **kw)
        if self.after:
            self.after(model)
        return res


def full_batch(data):
    return data.train.x, data.train.y


def ce_grads(model, params: dict, x, y, train_mode=True):
    """Gradient of the mean cross-entropy at ``params`` (a fresh copy of ``model``; BN in batch mode)."""
    net = copy.deepcopy(model)
    net.train(train_mode)
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = torch.func.functional_call(net, ps, (x,), strict=False)
    loss = F.cross_entropy(out, y)
    g = torch.autograd.grad(loss, list(ps.values()), allow_unused=True)
    return {k: (gi if gi is not None else torch.zeros_like(ps[k])) for k, gi in zip(ps, g)}, ps, net
