"""ESPN-Finetune and ESPN-Rewind (Cho et al. 2020) for the runner; "espn" is ESPN-Finetune.

Both search a mask with ``prunekit.sparse.espn`` (soft masks, L1 penalty, SGD on weights and
masks, exact global top-k binarisation). They differ in where the search starts and what is
trained afterwards:

* ESPN-Finetune searches from the pretrained dense model, folds m into W, and fine-tunes
  (paper: 50 epochs, lr 1e-3, wd 5e-4, x0.1 after 30). Only conv/linear weights and biases
  come from the search; BN keeps its pretrained parameters and statistics, as in the
  authors' code.
* ESPN-Rewind starts from random init, trains dense for a warm-up (the rewind point;
  ``ctx.rewind_state`` when the runner recorded one), searches on a copy, applies the mask
  to the warm-up weights and retrains with the dense budget minus the warm-up.

Alpha: the official scripts raise alpha with sparsity (MNIST LeNets 6e-5 at 95% to 6e-4 at
99.6%, CIFAR 8e-5 to 5.5e-4); ``default_alpha`` interpolates them log-linearly in the kept
fraction. Those values assume tens of epochs over 50-60k samples; with few SGD steps the
L1 push per step (lr * alpha / (1 - momentum)) must grow in proportion, hence ``alpha_scale``.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch

from ..foundations.hparams import hp
from ..sparse.espn import default_alpha, rising_targets, search_path
from ..sparse.masks import apply_masks, get_masks, prunable_modules, raw_weight
from ..training import train
from ..training.progress import subphase
from .base import PruningMethod
from .registry import METHODS, register


@dataclass
class ESPNHparams:
    alpha: float = hp(0.0, "L1 weight on the masks; 0 = default_alpha(target, alpha_family) * alpha_scale.")
    alpha_family: str = hp("mnist", "Which official alpha range to interpolate: mnist or cifar.", choices=("mnist", "cifar"))
    alpha_scale: float = hp(30.0, "Multiplier on the authors' alpha for the target (1 = their values, tuned for tens of epochs over 50-60k samples). Raise it when your search must finish in fewer steps; a warning says when alpha is too small for the epoch cap. 30 reaches 98% on LeNet-5-Caffe / mnist5k in about 9 epochs.")
    threshold: float = hp(1e-2, "A mask entry counts as kept while m > threshold.")
    search_lr: float = hp(0.05, "SGD learning rate of the search (momentum 0.9, no weight decay).")
    search_batch_size: int = hp(0, "Search batch size; 0 = the fine-tune batch size.")
    max_search_epochs: int = hp(15, "Epoch cap of each search round (paper: 300). If the cap ends the search, binarisation still keeps exactly the target count (top-k of |m|), but of masks that may not have separated yet (a warning says so).")
    check_every: str = hp("step", "When to test the stop rule: epoch (authors' MNIST/CIFAR scripts) or step (their ImageNet scripts; avoids overshooting on small data).", choices=("epoch", "step"))
    rounds: int = hp(1, "Search rounds with rising targets (kept fraction d^(r/R)) and alpha, in one continuing search; 1 = the authors' single search.")
    include_classifier: bool = hp(True, "Also mask the classifier (paper: yes).")
    finetune_lr: float = hp(1e-3, "Fine-tune learning rate (paper 1e-3); 0 = the runner's fine-tune settings unchanged.")
    finetune_weight_decay: float = hp(5e-4, "Fine-tune weight decay (paper 5e-4).")
    finetune_step_at: float = hp(0.6, "LR x0.1 at this fraction of the fine-tune epochs (paper: epoch 30 of 50).")


def copy_searched(dst, src, names) -> None:
    """Copy conv/linear weights and biases of ``src`` into ``dst`` (both may be masked); BN untouched."""
    sm, dm = dict(src.named_modules()), dict(dst.named_modules())
    with torch.no_grad():
        for n in names:
            raw_weight(dm[n]).copy_(raw_weight(sm[n]))
            if getattr(dm[n], "bias", None) is not None:
                dm[n].bias.copy_(sm[n].bias)


class _ESPNBase(PruningMethod):
    Hparams = ESPNHparams

    def __init__(self, hparams=None):
        super().__init__(hparams)
        if self.hp.check_every not in ("epoch", "step"):
            raise ValueError(f"check_every must be 'epoch' or 'step', got {self.hp.check_every!r}")
        if self.hp.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.hp.rounds}")
        self.last_search: dict = {}

    def alpha(self, sparsity: float) -> float:
        return self.hp.alpha or default_alpha(sparsity, self.hp.alpha_family) * self.hp.alpha_scale

    def run_search(self, start, target, ctx):
        """Search on a copy of ``start``; returns it with folded weights and binary masks."""
        net = self.copy(start)
        info = []
        with subphase("search"):
            path = list(search_path(net, ctx.data, rising_targets(target, self.hp.rounds), alpha_for=self.alpha,
                                     lr=self.hp.search_lr, max_epochs=self.hp.max_search_epochs,
                                     batch_size=self.hp.search_batch_size or ctx.finetune.batch_size, seed=ctx.seed,
                                     threshold=self.hp.threshold, include_classifier=self.hp.include_classifier,
                                     alpha_family=self.hp.alpha_family, check_every=self.hp.check_every,
                                     progress=ctx.progress, snapshots=False))
        for t, res, _ in path:
            info.append({"target": t, "alpha": self.alpha(t), "epochs": res.epochs, "reached": res.reached})
            if not res.reached:
                # Before the crossing every untouched m has shrunk by the same L1 drift, so the
                # top-k of |m| is close to random and can starve whole layers (LeNet-5 at 99.8%
                # after a 6-epoch search: 12 of fc1's 400k weights, 16% accuracy).
                warnings.warn(f"{self.name}: the search for {t:.4g} sparsity hit its {res.epochs}-epoch cap before "
                              f"reaching its keep count; the mask is the top-k of masks that may not have "
                              f"separated. Raise max_search_epochs or alpha (now {self.alpha(t):.3g}).",
                              RuntimeWarning, stacklevel=2)
        self.last_search = {"rounds": info, "epochs": sum(r["epochs"] for r in info)}
        return net


@register
class ESPNFinetune(_ESPNBase):
    name = "espn-finetune"

    def prune(self, model, target, ctx):
        searched = self.run_search(model, target, ctx)
        masks = get_masks(searched)
        pruned = self.copy(model)
        copy_searched(pruned, searched, masks)
        return apply_masks(pruned, masks)

    def finetune_hparams(self, ctx):
        if not self.hp.finetune_lr:
            return ctx.finetune
        e = ctx.finetune.epochs
        return dataclasses.replace(ctx.finetune, lr=self.hp.finetune_lr, weight_decay=self.hp.finetune_weight_decay,
                                   momentum=0.9, schedule="multistep", warmup_epochs=0.0,
                                   milestones=[max(1, round(self.hp.finetune_step_at * e))], gamma=0.1)

    def finetune(self, model, ctx):
        return train(model, ctx.data, self.finetune_hparams(ctx), callbacks=self.callbacks(model, ctx),
                     progress=ctx.progress)


METHODS.register("espn", ESPNFinetune)


@dataclass
class ESPNRewindHparams(ESPNHparams):
    warmup_epochs: int = hp(1, "Dense warm-up epochs before the search when no rewind point was recorded (paper: 1 MNIST, 10 CIFAR).")
    retrain_epochs: int = hp(0, "Retraining epochs; 0 = dense (pretrain) epochs minus warm-up.")


@register
class ESPNRewind(_ESPNBase):
    name = "espn-rewind"
    Hparams = ESPNRewindHparams

    def warm_model(self, model, ctx):
        if ctx.rewind_state is not None:
            net = self.copy(model)
            if any(hasattr(m, "parametrizations") for m in prunable_modules(net).values()):
                raise ValueError("espn-rewind expects an unmasked dense model")
            net.load_state_dict(ctx.rewind_state)
            return net
        torch.manual_seed(ctx.seed)
        net = ctx.build_model()
        hp_ = dataclasses.replace(ctx.pretrain, epochs=self.hp.warmup_epochs, schedule="constant", warmup_epochs=0.0)
        train(net, ctx.data, hp_, progress=ctx.progress, eval_test=False)
        return net

    def prune(self, model, target, ctx):
        warm = self.warm_model(model, ctx)
        masks = get_masks(self.run_search(warm, target, ctx))
        return apply_masks(warm, masks)  # the rewind point's weights, not the searched ones

    def finetune(self, model, ctx):
        e = self.hp.retrain_epochs or max(1, ctx.pretrain.epochs - self.hp.warmup_epochs)
        hp_ = dataclasses.replace(ctx.pretrain, epochs=e, milestones=[])
        return train(model, ctx.data, hp_, callbacks=self.callbacks(model, ctx), progress=ctx.progress)
