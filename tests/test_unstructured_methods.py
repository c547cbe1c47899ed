"""Runner methods end to end on a tiny synthetic setup, plus IMP and GMP schedule details."""
import copy

import pytest
import torch
import torch.nn as nn

from prunekit import data as datasets
from prunekit.methods import Context, get
from prunekit.methods.espn import ESPNFinetune
from prunekit.methods.gmp import GMPCallback, cubic_sparsity
from prunekit.methods.imp import RecordAt, imp_schedule
from prunekit.sparse import masks as M
from prunekit.training import TrainHparams, train


class TinyConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def setup():
    data = datasets.load("synthetic", shape=(1, 6, 6), num_classes=4, n_train=96, n_test=48, val_fraction=0.2)

    def build():
        return TinyConvBN()

    torch.manual_seed(0)
    dense = build()
    pre = TrainHparams(epochs=2, batch_size=16, lr=0.05)
    ft = TrainHparams(epochs=2, batch_size=16, lr=0.01)
    rec = RecordAt(3)  # the rewind point: weights after 3 iterations
    train(dense, data, pre, callbacks=[rec], progress=False)
    ctx = Context(data=data, finetune=ft, pretrain=pre, build_model=build, example_inputs=data.example_inputs(2),
                  seed=0, rewind_state=rec.state)
    return dense, ctx


FAST = {"synflow": {"rounds": 5}, "espn": {"alpha": 0.05, "max_search_epochs": 3},
        "espn-finetune": {"alpha": 0.05, "max_search_epochs": 3, "rounds": 2},
        "espn-rewind": {"alpha": 0.05, "max_search_epochs": 3}}
NAMES = ["snip", "grasp", "synflow", "imp", "gmp", "espn", "espn-finetune", "espn-rewind", "magnitude", "random"]


@pytest.mark.parametrize("name", NAMES)
def test_method_end_to_end(setup, name):
    dense, ctx = setup
    before = copy.deepcopy(dense.state_dict())
    meth = get(name, FAST.get(name, {}))
    pruned = meth.prune(dense, 0.8, ctx)
    res = meth.finetune(pruned, ctx)
    total = sum(M.raw_weight(m).numel() for m in M.prunable_modules(pruned).values())
    kept = sum(int(v.sum()) for v in M.get_masks(pruned).values())
    assert kept == M.keep_count(total, 0.8)
    rep = M.sparsity_report(pruned)
    assert rep["sparsity_prunable"] >= 0.8
    assert res.final_test_acc is not None and res.test_at_best_val is not None
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the dense model ({k})"


def test_espn_alias_and_bn_kept_from_pretrained(setup):
    dense, ctx = setup
    assert type(get("espn", {})) is ESPNFinetune
    meth = get("espn", {"alpha": 0.05, "max_search_epochs": 2})
    pruned = meth.prune(dense, 0.8, ctx)
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(pruned.bn, k), getattr(dense.bn, k)), k
    assert not torch.equal(pruned.fc.weight, dense.fc.weight * M.current_mask(pruned.fc))  # folded m
    hp = meth.finetune_hparams(ctx)
    assert (hp.lr, hp.weight_decay, hp.milestones) == (1e-3, 5e-4, [1])
    with pytest.raises(ValueError, match="check_every"):
        get("espn", {"check_every": "sometimes"})


def test_espn_rewind_starts_from_the_rewind_point(setup):
    dense, ctx = setup
    pruned = get("espn-rewind", {"alpha": 0.05, "max_search_epochs": 2}).prune(dense, 0.8, ctx)
    for n, m in M.prunable_modules(pruned).items():
        mask = M.current_mask(m)
        assert torch.equal(M.raw_weight(m)[mask], ctx.rewind_state[f"{n}.weight"][mask])


def test_imp_schedule_and_rewind(setup):
    sched = imp_schedule([0.9], 0.2)
    assert len(sched) == 11 and sched[-1] == 0.9
    assert sched[:3] == pytest.approx([0.2, 0.36, 0.488])
    two = imp_schedule([0.5, 0.9], 0.2)
    assert 0.5 in two and two[-1] == 0.9 and all(a < b for a, b in zip(two, two[1:]))
    dense, ctx = setup
    pruned = get("imp", {"level_epochs": 1}).prune(dense, 0.5, ctx)
    for n, m in M.prunable_modules(pruned).items():
        mask = M.current_mask(m)
        assert torch.equal(M.raw_weight(m)[mask], ctx.rewind_state[f"{n}.weight"][mask])


def test_gmp_cubic_schedule_and_monotone_masks(setup):
    assert cubic_sparsity(0, 0.9, 0, 100) == 0.0
    assert cubic_sparsity(50, 0.9, 0, 100) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert cubic_sparsity(100, 0.9, 0, 100) == 0.9 and cubic_sparsity(500, 0.9, 0, 100) == 0.9
    dense, ctx = setup
    net = copy.deepcopy(dense)
    seen = []

    class Watch(GMPCallback):
        def after_step(self, trainer):
            super().after_step(trainer)
            seen.append(M.get_masks(trainer.model))

    cb = Watch(0.9, start=2, end=10, every=3)
    train(net, ctx.data, TrainHparams(epochs=3, batch_size=16, lr=0.05), callbacks=[cb], progress=False)
    for a, b in zip(seen, seen[1:]):
        assert not any((b[n] & ~a[n]).any() for n in a)  # pruned weights never return
    total = sum(v.numel() for v in seen[-1].values())
    assert sum(int(v.sum()) for v in seen[-1].values()) == M.keep_count(total, 0.9)
