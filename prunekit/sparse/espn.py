"""ESPN mask search (Cho et al. 2020), usable from any training loop.

Every conv and linear weight W (classifier included) gets a real-valued mask m, initialised
to 1, through a parametrization: forward sees W * m. Training minimises
``task loss + alpha * sum_layers |m|_1`` with SGD over weights and masks together; the L1
term drives unimportant m towards 0. The search is over when the number of entries with
m > threshold (1e-2, a signed comparison as in the authors' code) is at most
``keep_ratio * N``. ``binarize`` then keeps exactly ``floor(N * keep_ratio)`` entries: the
global top-k of |m|.

In a user's own loop::

    search = ESPNSearch(model, sparsity=0.98)          # attaches the soft masks
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # masks included
    for epoch in range(300):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + search.penalty()
            ...
        if search.done():
            break
    masks = search.finish()      # fold m into W, attach exact binary masks, return them
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .masks import apply_masks, current_mask, keep_count, prunable_modules, raw_weight, unparametrize


class SoftMask(nn.Module):
    """Parametrization W -> W * m with a trainable m (init 1)."""

    def __init__(self, shape, dtype=torch.float32, device=None):
        super().__init__()
        self.m = nn.Parameter(torch.ones(shape, dtype=dtype, device=device))

    def forward(self, w):
        return w * self.m


def _soft(m: nn.Module) -> SoftMask | None:
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, SoftMask):
                return p
    return None


# Official settings (see docs): alpha rises with sparsity. We interpolate log-linearly in the
# log of the kept fraction between the end points of the authors' scripts.
ALPHA_ANCHORS = {
    # family: ((density_a, alpha_a), (density_b, alpha_b))
    "mnist": ((0.05, 6e-5), (0.004, 6e-4)),     # LeNet-300-100 / LeNet-5-Caffe, 95% -> 99.6%
    "cifar": ((0.05, 8e-5), (0.005, 5.5e-4)),   # VGG-19 / ResNet-32, 95% -> 99.5%
}


def default_alpha(sparsity: float, family: str = "mnist") -> float:
    """alpha for a target sparsity: log-linear in log(1 - sparsity) through the official end points
    (extrapolated outside them). E.g. mnist: 90% -> 3.2e-5, 95% -> 6e-5, 99% -> 2.6e-4, 99.8% -> 1.1e-3."""
    if family not in ALPHA_ANCHORS:
        raise ValueError(f"unknown alpha family {family!r}; valid: {', '.join(ALPHA_ANCHORS)}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    (da, aa), (db, ab) = ALPHA_ANCHORS[family]
    t = (math.log(da) - math.log(1.0 - sparsity)) / (math.log(da) - math.log(db))
    return math.exp(math.log(aa) + t * (math.log(ab) - math.log(aa)))


class ESPNSearch:
    """Soft masks on a model plus the search's bookkeeping. Modifies ``model`` in place
    (pass a copy to keep the original)."""

    def __init__(self, model: nn.Module, sparsity: float | None = None, keep_ratio: float | None = None,
                 alpha: float | None = None, threshold: float = 1e-2, include_classifier: bool = True,
                 alpha_family: str = "mnist"):
        if (sparsity is None) == (keep_ratio is None):
            raise ValueError("give exactly one of sparsity or keep_ratio")
        if keep_ratio is not None:
            if not 0.0 < keep_ratio <= 1.0:
                raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
            sparsity = 1.0 - keep_ratio
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if alpha is not None and alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.model = model
        self.sparsity = sparsity
        self.alpha = default_alpha(sparsity, alpha_family) if alpha is None else alpha
        self.threshold = threshold
        self.modules = prunable_modules(model, include_classifier)
        if not self.modules:
            raise ValueError("model has no conv or linear layer to mask")
        for m in self.modules.values():
            if _soft(m) is None:
                w = raw_weight(m)
                parametrize.register_parametrization(m, "weight", SoftMask(w.shape, w.dtype, w.device))
        self.total = sum(raw_weight(m).numel() for m in self.modules.values())

    # -- pieces a training loop needs ------------------------------------------------
    def mask_parameters(self) -> list[nn.Parameter]:
        return [_soft(m).m for m in self.modules.values()]

    def penalty(self) -> torch.Tensor:
        """alpha * sum of |m|_1 over all layers (add it to the task loss)."""
        return self.alpha * sum(p.abs().sum() for p in self.mask_parameters())

    def keep_count(self) -> int:
        """floor(N * keep_ratio): how many weights survive."""
        return keep_count(self.total, self.sparsity)

    @torch.no_grad()
    def count(self) -> int:
        """Entries still 'on': m > threshold, among weights not already pruned by a binary mask."""
        n = 0
        for m in self.modules.values():
            on = _soft(m).m > self.threshold
            bm = current_mask(m)
            n += int((on & bm).sum()) if bm is not None else int(on.sum())
        return n

    def done(self) -> bool:
        return self.count() <= self.keep_count()

    def progress(self) -> dict:
        """Where the search stands: ``count`` entries still on (m > threshold) against the
        ``target`` it must reach (``keep_count()``), out of ``total``."""
        c, k = self.count(), self.keep_count()
        return {"count": c, "target": k, "total": self.total, "to_go": max(0, c - k), "done": c <= k,
                "fraction_on": c / self.total}

    def steps_to_threshold(self, lr: float, momentum: float = 0.9) -> float:
        """SGD steps the L1 term alone needs to move a mask from 1 to the threshold: its gradient
        is alpha, so with momentum the steady drift per step is lr * alpha / (1 - momentum).
        Masks the task loss wants to keep take longer; those it wants gone, less."""
        if self.alpha <= 0 or lr <= 0:
            return math.inf
        return math.ceil((1.0 - self.threshold) * (1.0 - momentum) / (lr * self.alpha))

    def check_alpha(self, lr: float, steps_per_epoch: int, max_epochs: int = 300, momentum: float = 0.9) -> float:
        """Estimated epochs for the L1 drift alone to switch masks off; warns (RuntimeWarning)
        when that exceeds ``max_epochs`` (alpha too small to reach the target in time)."""
        steps = self.steps_to_threshold(lr, momentum)
        epochs = steps / max(1, steps_per_epoch)
        if epochs > max_epochs:
            warnings.warn(f"ESPN alpha {self.alpha:.3g} looks too small for {self.sparsity:.4g} sparsity: at lr {lr} "
                          f"the L1 term alone needs ~{steps:.0f} steps (~{epochs:.0f} epochs of {steps_per_epoch} "
                          f"steps) to push a mask from 1 below {self.threshold:g}, more than the {max_epochs}-epoch "
                          f"budget. Raise alpha (or lr, or the epoch cap).", RuntimeWarning, stacklevel=2)
        return epochs

    @torch.no_grad()
    def binarize(self) -> dict[str, torch.Tensor]:
        """Global top-k of |m| (k = keep_count()); weights already pruned stay pruned."""
        flat = []
        for m in self.modules.values():
            s = _soft(m).m.detach().abs().flatten().float().clone()
            bm = current_mask(m)
            if bm is not None:
                s[~bm.flatten()] = -math.inf
            flat.append(s)
        flat = torch.cat(flat)
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, self.keep_count()).indices] = True
        out, o = {}, 0
        for n, m in self.modules.items():
            k = raw_weight(m).numel()
            out[n] = keep[o: o + k].view(raw_weight(m).shape)
            o += k
        return out

    @torch.no_grad()
    def folded_weights(self) -> dict[str, torch.Tensor]:
        """W * m (raw weight times soft mask), the weights the search ends with."""
        return {n: (raw_weight(m) * _soft(m).m).detach().clone() for n, m in self.modules.items()}

    def finish(self) -> dict[str, torch.Tensor]:
        """Binarise, fold m into W, drop the soft masks and attach the binary masks; returns them."""
        masks = self.binarize()
        folded = self.folded_weights()
        strip_soft_masks(self.model)
        with torch.no_grad():
            for n, m in self.modules.items():
                raw_weight(m).copy_(folded[n])
        apply_masks(self.model, masks)
        return masks


def strip_soft_masks(model: nn.Module) -> nn.Module:
    """Remove every parametrization of conv/linear weights that carries a SoftMask, restoring the
    raw weight (an existing binary mask is removed too; re-apply it afterwards)."""
    for m in model.modules():
        if _soft(m) is not None:
            unparametrize(m, m.parametrizations.weight.original)
    return model


@dataclasses.dataclass
class SearchResult:
    masks: dict
    epochs: int
    reached: bool  # the count fell to keep_count before the epoch cap
    history: list


def _check_mode(check_every: str) -> None:
    if check_every not in ("epoch", "step"):
        raise ValueError(f"check_every must be 'epoch' or 'step', got {check_every!r}")


def run_search(s: ESPNSearch, data, lr: float = 0.05, max_epochs: int = 300, batch_size: int = 128, seed: int = 0,
               check_every: str = "epoch", progress: bool = False) -> tuple[int, bool, list]:
    """Train ``s.model`` with the penalty until ``s.done()`` or the epoch cap (SGD, momentum 0.9,
    no weight decay, constant LR). Returns (epochs, reached, history). Does not binarise."""
    _check_mode(check_every)
    from ..training import Callback, TrainHparams, train

    class _Penalty(Callback):
        def __init__(self):
            self.reached = False

        def extra_loss(self, trainer, out, y):
            return s.penalty()

        def after_step(self, trainer):
            if check_every == "step" and not self.reached:
                self.reached = s.done()

        def on_epoch_end(self, trainer, metrics):
            if not math.isfinite(metrics["train_loss"]):
                # A diverged search would binarise NaN masks into a meaningless pattern.
                raise FloatingPointError(f"ESPN search diverged (non-finite loss) in epoch {trainer.epoch}; "
                                         f"lower the search lr ({lr}) or alpha ({s.alpha:.3g})")
            metrics["mask_on"] = s.count()
            metrics["mask_target"] = s.keep_count()
            self.reached = self.reached or metrics["mask_on"] <= s.keep_count()

        def should_stop(self, trainer):
            return self.reached

    cb = _Penalty()
    n_train = len(data.train) if hasattr(data, "train") else len(data)
    s.check_alpha(lr, math.ceil(n_train / batch_size), max_epochs, momentum=0.9)
    hp = TrainHparams(epochs=max_epochs, batch_size=batch_size, lr=lr, momentum=0.9, weight_decay=0.0,
                      schedule="constant", seed=seed)
    # The search selects a mask, not a model: no validation/test evaluation is needed per epoch.
    train_data = dataclasses.replace(data, val=None) if hasattr(data, "val") else data
    res = train(s.model, train_data, hp, callbacks=[cb], progress=progress, eval_test=False)
    return len(res.history), cb.reached, res.history


def search(model: nn.Module, data, sparsity: float, alpha: float | None = None, lr: float = 0.05,
           max_epochs: int = 300, batch_size: int = 128, seed: int = 0, threshold: float = 1e-2,
           include_classifier: bool = True, alpha_family: str = "mnist", check_every: str = "epoch",
           progress: bool = False) -> SearchResult:
    """Run the ESPN search with prunekit's trainer and finish it: ``model`` (modified in place)
    ends with folded weights and exact binary masks.

    ``check_every``: "epoch" (the authors' MNIST/CIFAR scripts) or "step" (their ImageNet
    scripts). Per-step checking stops at the crossing instead of up to an epoch after it, which
    matters when an epoch is only a few dozen steps and many masks cross together."""
    _check_mode(check_every)
    s = ESPNSearch(model, sparsity=sparsity, alpha=alpha, threshold=threshold,
                   include_classifier=include_classifier, alpha_family=alpha_family)
    epochs, reached, history = run_search(s, data, lr, max_epochs, batch_size, seed, check_every, progress)
    return SearchResult(s.finish(), epochs, reached, history)


def rising_targets(sparsity: float, rounds: int) -> list[float]:
    """Targets of an iterative search: kept fraction d^(r/R), r = 1..R (equal ratios per round)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    d = 1.0 - sparsity
    return [1.0 - d ** (r / rounds) for r in range(1, rounds + 1)]


def snapshot(s: ESPNSearch) -> nn.Module:
    """A copy of the searched model as ``finish`` would leave it (folded, exact binary masks);
    the search itself goes on untouched."""
    import copy

    masks, folded = s.binarize(), s.folded_weights()
    net = copy.deepcopy(s.model)
    strip_soft_masks(net)  # safe on a copy: see unparametrize
    mods = dict(net.named_modules())
    with torch.no_grad():
        for n in s.modules:
            raw_weight(mods[n]).copy_(folded[n])
    return apply_masks(net, masks)


def search_path(model: nn.Module, data, sparsities, alpha_for=None, threshold: float = 1e-2,
                include_classifier: bool = True, alpha_family: str = "mnist", snapshots: bool = True, **kw):
    """Iterative search through rising targets: ONE search (masks are never re-initialised)
    whose target and alpha step up each time the current target is reached or its round hits
    the epoch cap. Yields ``(sparsity, SearchResult, pruned)`` per target, ``pruned`` being a
    finished copy at that point (None with ``snapshots=False``); at the end ``model`` itself is
    finished at the last target.

    One target is the authors' procedure; several is the abstract's "iterative" reading.
    Re-initialising m to 1 between rounds instead is unstable: folded weights can be ~10x
    larger than at the start, so the mask gradients (g * W) blow up at the same learning rate.
    ``alpha_for(sparsity)`` gives each round's alpha (default: ``default_alpha``)."""
    targets = list(sparsities)
    if not targets or any(b <= a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"targets must rise strictly, got {targets}")
    alpha_for = alpha_for or (lambda t: default_alpha(t, alpha_family))
    s = ESPNSearch(model, sparsity=targets[0], alpha=alpha_for(targets[0]), threshold=threshold,
                   include_classifier=include_classifier)
    for i, t in enumerate(targets):
        s.sparsity, s.alpha = t, alpha_for(t)
        epochs, reached, history = run_search(s, data, **kw)
        last = i == len(targets) - 1
        pruned = snapshot(s) if snapshots and not last else None
        if last:
            masks = s.finish()
            pruned = model if snapshots else None
        else:
            masks = s.binarize()
        yield t, SearchResult(masks, epochs, reached, history), pruned


__all__ = ["ALPHA_ANCHORS", "ESPNSearch", "SearchResult", "SoftMask", "default_alpha", "rising_targets",
           "run_search", "search", "search_path", "snapshot", "strip_soft_masks", "unparametrize"]
