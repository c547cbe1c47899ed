"""TPP: Trainability Preserving Pruning (Wang & Fu, ICLR 2023), structured.

1. Choose, once, from the pretrained weights, the ceil(pr N) filters of smallest L1 norm
   in every selected layer (capped at int(0.995 N)).
2. Regularise: loss += lam * reg(t) * sum over pruned layers of mean((W W^T - T)^2), T being
   W W^T (detached) with the pruned rows and columns zeroed; this decorrelates the kept
   filters from the pruned ones (and drives the pruned ones to zero) without constraining
   the kept-vs-kept block, so removing the pruned filters later loses little trainability.
   After backward, grad += reg * param for the pruned filters' weights/biases (GReg-style,
   switchable) and their BN gamma/beta. reg(t) grows by ``delta`` every ``every`` iterations
   up to ``ceiling``.
3. Stabilise: hold reg at the ceiling for ``stabilise`` iterations; pruned group i (model
   order) is zeroed after every step from (i+1) * ``zero_every`` iterations into this phase.
4. Remove the pruned channels physically (prunekit.structured), then fine-tune.

Beyond the official code, every coupled channel group the engine finds can be pruned (a
residual-coupled group is penalised in all its member layers) and BN-free nets work.

Presets (``preset`` fills every schedule field left at None). The paper's CIFAR schedule
is delta 1e-4 every 10 iterations (100k iterations to reach 1.0), then 10k stabilising
iterations with zero_every 100. Scaled presets keep ``every``, ``ceiling`` and the shape of
the schedule and scale delta up so the ceiling is reached in ``rise`` iterations:

    preset   delta   every  -> rise   stabilise  zero_every   (paper x)
    paper    1e-4    10       100000  10000      100          1
    bench    2e-2    10          500    300       25          1/200 rise, 1/33 stabilise
    demo     5e-2    10          200    120       10          1/500 rise, 1/83 stabilise

``demo`` keeps ``prunekit run`` with LeNet-5-Caffe on mnist5k under ~90 s for TPP (18 s measured
for regularisation + removal + the 8-epoch fine-tune on one thread; benchmarks/README_tpp.md).
Because the rise is shorter, the accumulated decay sum(lr * reg) on the pruned filters is
far smaller than in the paper; the stabilise phase's zeroing makes removal exact anyway.

Product API (your own training loop)::

    reg = TPPRegularizer(model, example_inputs, ratio=0.5, hparams=TPPHparams(preset="demo"))
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad(); loss.backward(); reg.after_backward(); opt.step(); reg.step()
        if reg.finished: break
    slim = reg.prune()
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..foundations.hparams import hp
from ..training import Callback, TrainHparams, train
from ..training.progress import subphase
from .base import PruningMethod
from .registry import register
from .tpp_schedule import PlanHparams, PlanRows, RegSchedule, groups_of, l1_plan, selection_plan, slim_by_plan

PRESETS = {
    "paper": {"delta": 1e-4, "every": 10, "ceiling": 1.0, "stabilise": 10000, "zero_every": 100},
    "bench": {"delta": 2e-2, "every": 10, "ceiling": 1.0, "stabilise": 300, "zero_every": 25},
    "demo": {"delta": 5e-2, "every": 10, "ceiling": 1.0, "stabilise": 120, "zero_every": 10},
}


def gram_penalty(weight: torch.Tensor, pruned_mask: torch.Tensor) -> torch.Tensor:
    """mean over the N x N entries of (W W^T - T)^2; T = W W^T detached, pruned rows/cols zeroed.

    ``weight``: N x ... (conv or linear); ``pruned_mask``: bool over the N output rows.
    """
    if pruned_mask.dtype != torch.bool or pruned_mask.shape != weight.shape[:1]:
        raise ValueError(f"pruned_mask must be a bool tensor of shape ({weight.shape[0]},), got "
                         f"{pruned_mask.dtype} {tuple(pruned_mask.shape)}")
    n = weight.shape[0]
    w = weight.reshape(n, -1)
    # T equals W W^T on the kept-vs-kept block, so only entries touching a pruned filter have a
    # residual (target 0 there) and the kept-vs-kept block gives no gradient. Those entries are
    # the rows of A = W_P W^T (and their transposes), with the W_P W_P^T block counted once:
    # sum = 2 ||A||^2 - ||A[:, P]||^2. Same value and gradient as forming the N x N Gram, at
    # |P|/N of the cost.
    a = w[pruned_mask] @ w.t()
    return (2 * a.pow(2).sum() - a[:, pruned_mask].pow(2).sum()) / (n * n)


@dataclass
class TPPHparams(PlanHparams):
    preset: str = hp("demo", f"Schedule preset filling fields left at None: {', '.join(PRESETS)}.", choices=tuple(PRESETS))
    delta: float | None = hp(None, "reg grows by delta every `every` iterations (paper 1e-4).")
    every: int | None = hp(None, "Iterations between reg increments (paper 10 on CIFAR).")
    ceiling: float | None = hp(None, "Largest reg value (paper 1.0).")
    stabilise: int | None = hp(None, "Iterations at the ceiling before removal (paper 10000).")
    zero_every: int | None = hp(None, "Pruned group i is zeroed from (i+1)*zero_every iterations into the "
                                      "stabilise phase (paper 100).")
    lam: float = hp(1000.0, "Weight of the Gram (orthogonality) term, times reg(t) (paper lw_opp 1000).")
    weight_reg: bool = hp(True, "Also add grad += reg*W on the pruned filters (official code default).")
    bn_reg: bool = hp(True, "Add grad += reg*gamma / reg*beta on the pruned channels' BN.")
    lr: float = hp(1e-3, "SGD learning rate of the regularisation phase (paper 1e-3).")
    momentum: float = hp(0.9, "SGD momentum of the regularisation phase.")
    weight_decay: float | None = hp(None, "Weight decay of the regularisation phase (None: the fine-tune one).")
    batch_size: int | None = hp(None, "Batch size of the regularisation phase (None: the fine-tune one).")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown TPP preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        for k, v in PRESETS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.stabilise < 0 or self.zero_every < 1:
            raise ValueError(f"need stabilise >= 0 and zero_every >= 1 (got {self.stabilise}, {self.zero_every})")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        self.schedule  # validates delta/every/ceiling

    @property
    def schedule(self) -> RegSchedule:
        return RegSchedule(float(self.delta), int(self.every), float(self.ceiling))

    @property
    def total_iters(self) -> int:
        return self.schedule.rise_iters + self.stabilise


class TPPRegularizer:
    """TPP for any training loop: ``penalty()``, ``after_backward()``, ``step()``, ``prune()``."""

    def __init__(self, model: nn.Module, example_inputs, ratio: float = 0.5, hparams: TPPHparams | None = None,
                 groups=None, ignore=(), plan=None, **overrides):
        # plan: a given selection ({group id: channels to remove} over ``groups``), e.g. the
        # latency-aware one from structured.selection.latency_aware.latency_plan; default TPP's L1 choice
        self.hp = replace(hparams or TPPHparams(), **overrides) if overrides else (hparams or TPPHparams())
        self.model, self.example_inputs, self.ratio = model, example_inputs, ratio
        if plan is not None and groups is None:
            raise ValueError("a given plan needs the groups it refers to (groups=...)")
        self.groups = groups if groups is not None else groups_of(model, example_inputs, ignore)
        self.plan = plan if plan is not None else l1_plan(model, self.groups, ratio, self.hp)  # fixed from here on
        self.rows = PlanRows(model, self.groups, self.plan)
        self.schedule = self.hp.schedule
        self.t = 0

    @property
    def reg(self) -> float:
        return self.schedule.value(self.t)

    @property
    def phase(self) -> str:
        if self.t < self.schedule.rise_iters:
            return "rise"
        return "stabilise" if self.t < self.hp.total_iters else "done"

    @property
    def finished(self) -> bool:
        return self.t >= self.hp.total_iters

    def penalty(self) -> torch.Tensor:
        """lam * reg(t) * sum of Gram penalties over the pruned layers; add it to the loss."""
        reg = self.reg
        if reg == 0 or self.hp.lam == 0:
            return torch.zeros(())
        total = sum(gram_penalty(self.rows.mods[n].weight, m) for n, m in self.rows.out_masks.items())
        return self.hp.lam * reg * total

    def after_backward(self) -> None:
        self.rows.add_l2_grad(self.reg, weights=self.hp.weight_reg, norms=self.hp.bn_reg)

    def step(self) -> None:
        """Call after each optimiser step: advances t and zeroes the groups due in the stabilise phase."""
        self.t += 1
        into = self.t - self.schedule.rise_iters
        if into > 0:
            self.rows.zero(min(into // self.hp.zero_every, len(self.rows.entries)))

    @property
    def remaining(self) -> int:
        """Iterations left before the schedule (rise + stabilise) is over."""
        return max(0, self.hp.total_iters - self.t)

    def prune(self, force: bool = False) -> nn.Module:
        """Zero every pruned channel (in the regularised model) and return a slim copy without them.

        Raises if the schedule has not finished (the pruned filters have not been driven to zero
        yet, so removing them would cost accuracy); ``force=True`` removes them anyway."""
        if not self.finished and not force:
            raise RuntimeError(f"TPP schedule not finished: {self.remaining} of {self.hp.total_iters} iterations "
                               f"remain (t = {self.t}, phase {self.phase!r}); keep calling step() until "
                               f"`finished`, or call prune(force=True) to remove the channels now")
        self.rows.zero()
        return slim_by_plan(self.model, self.example_inputs, self.plan, self.groups)

    def state_dict(self) -> dict:
        # the plan is saved too: on resume the model's weights are no longer the pretrained
        # ones, and the pruned set must not be re-chosen from them
        return {"t": self.t, "plan": [[gid, idx.tolist()] for gid, idx in self.plan.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        if "plan" in state:
            self.plan = {int(g): torch.tensor(idx, dtype=torch.long) for g, idx in state["plan"]}
            self.rows = PlanRows(self.model, self.groups, self.plan)


class TPPCallback(Callback):
    """Drives a TPPRegularizer from prunekit's trainer; stops training when the schedule ends."""

    def __init__(self, reg: TPPRegularizer, stop_when_done: bool = True):
        self.reg, self.stop_when_done = reg, stop_when_done

    def extra_loss(self, trainer, outputs, targets):
        return self.reg.penalty()

    def after_backward(self, trainer):
        self.reg.after_backward()

    def after_step(self, trainer):
        self.reg.step()

    def should_stop(self, trainer):
        return self.stop_when_done and self.reg.finished

    def state_dict(self):
        return self.reg.state_dict()

    def load_state_dict(self, state):
        self.reg.load_state_dict(state)


def phase_hparams(iters: int, ctx, lr: float, momentum: float, weight_decay, batch_size) -> TrainHparams:
    """A constant-LR SGD run long enough for ``iters`` iterations (a callback stops it)."""
    bs = batch_size or ctx.finetune.batch_size
    spe = max(1, math.ceil(len(ctx.data.train) / bs))
    wd = ctx.finetune.weight_decay if weight_decay is None else weight_decay
    return TrainHparams(epochs=max(1, math.ceil(iters / spe)), batch_size=bs, lr=lr, momentum=momentum,
                        weight_decay=wd, schedule="constant", seed=ctx.seed)


@register
class TPP(PruningMethod):
    name = "tpp"
    kind = "structured"
    target_name = "ratio"
    Hparams = TPPHparams

    def regularizer(self, model, target, ctx) -> TPPRegularizer:
        groups = groups_of(model, ctx.example_inputs)
        plan = selection_plan(model, groups, target, self.hp, ctx.data)
        return TPPRegularizer(model, ctx.example_inputs, target, self.hp, groups=groups, plan=plan)

    def regularise(self, model, target, ctx) -> TPPRegularizer:
        """Run the regularisation + stabilise phases on ``model`` IN PLACE; returns the finished
        regulariser (``reg.prune()`` removes the channels). Split from ``prune`` so benchmarks can
        measure the regularised model right before physical removal."""
        reg = self.regularizer(model, target, ctx)
        h = self.hp
        with subphase("regularise"):
            train(model, ctx.data, phase_hparams(h.total_iters, ctx, h.lr, h.momentum, h.weight_decay,
                                                 h.batch_size),
                  callbacks=[TPPCallback(reg)], progress=ctx.progress, eval_test=False)
        if not reg.finished:
            raise RuntimeError(f"TPP regularisation stopped at iteration {reg.t} of {h.total_iters}")
        return reg

    def prune(self, model, target, ctx):
        return self.regularise(self.copy(model), target, ctx).prune()
