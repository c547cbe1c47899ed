import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from prunekit.methods.tpp import TPPCallback, TPPHparams, TPPRegularizer, gram_penalty
from prunekit.methods.tpp_schedule import PlanRows, RegSchedule, SelectHparams, l1_plan, n_pruned

# --- Gram penalty ----------------------------------------------------------------------


def loop_penalty(w, pruned):
    """Explicit double loop over the N x N Gram entries: target 0 wherever a pruned filter is involved."""
    w = w.reshape(len(w), -1)
    n, total = len(w), 0.0
    for i in range(n):
        for j in range(n):
            if pruned[i] or pruned[j]:
                total += float(w[i] @ w[j]) ** 2
    return total / n**2


def block_penalty(w, pruned):
    """Eq. 3 of the paper as blocks: 2 ||W_P W_K^T||^2 + ||W_P W_P^T||^2, scaled by 1/N^2."""
    w = w.reshape(len(w), -1)
    wp, wk = w[pruned], w[~pruned]
    return (2 * (wp @ wk.t()).pow(2).sum() + (wp @ wp.t()).pow(2).sum()) / len(w) ** 2


def test_gram_penalty_matches_double_loop_and_block_form():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 2, 2, dtype=torch.double)
    pruned = torch.tensor([True, False, False, True, False, True])
    got = gram_penalty(w, pruned)
    assert got.item() == pytest.approx(loop_penalty(w, pruned), rel=1e-10)
    assert got.item() == pytest.approx(block_penalty(w, pruned).item(), rel=1e-10)


def test_gram_penalty_gradient_leaves_kept_block_free():
    torch.manual_seed(1)
    w = torch.randn(5, 7, dtype=torch.double, requires_grad=True)
    pruned = torch.tensor([False, True, False, False, True])
    gram_penalty(w, pruned).backward()
    w2 = w.detach().clone().requires_grad_(True)
    block_penalty(w2, pruned).backward()
    torch.testing.assert_close(w.grad, w2.grad)  # same gradient as the target-free block form
    # with the pruned filters at zero, nothing constrains the kept ones (no gradient at all)
    w3 = w.detach().clone()
    w3[pruned] = 0
    w3.requires_grad_(True)
    loss = gram_penalty(w3, pruned)
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(w3.grad) == 0


def test_gram_penalty_rejects_bad_mask():
    with pytest.raises(ValueError, match="bool tensor of shape"):
        gram_penalty(torch.randn(4, 3), torch.tensor([1, 0, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        gram_penalty(torch.randn(4, 3), torch.zeros(3, dtype=torch.bool))


# --- schedule and selection --------------------------------------------------------------


def test_reg_schedule_values():
    s = RegSchedule(1e-4, 10, 1.0)
    assert s.rise_iters == 100_000
    assert [s.value(t) for t in (0, 9, 10, 19, 25)] == [0, 0, pytest.approx(1e-4), pytest.approx(1e-4),
                                                        pytest.approx(2e-4)]
    assert s.value(99_999) == pytest.approx(0.9999)
    assert s.value(100_000) == 1.0 and s.value(10**7) == 1.0
    fast = RegSchedule.reaching(1.0, 500, every=10)
    assert fast.delta == pytest.approx(0.02) and fast.rise_iters == 500 and fast.value(250) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        RegSchedule(0.0, 10, 1.0)


def test_tpp_presets_fill_only_missing_fields():
    h = TPPHparams(preset="paper")
    assert (h.delta, h.every, h.ceiling, h.stabilise, h.zero_every) == (1e-4, 10, 1.0, 10000, 100)
    assert h.total_iters == 110_000
    h = TPPHparams(preset="bench", stabilise=7)
    assert h.stabilise == 7 and h.schedule.rise_iters == 500
    with pytest.raises(ValueError, match="unknown TPP preset"):
        TPPHparams(preset="nope")


def test_n_pruned_is_ceil_with_cap():
    assert n_pruned(0.3, 10) == 3 and n_pruned(0.7, 10) == 7 and n_pruned(0.5, 7) == 4
    assert n_pruned(0.25, 10) == 3  # ceil
    assert n_pruned(0.999, 10) == 9 and n_pruned(0.999, 1000) == 995  # int(0.995 N) cap
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        n_pruned(1.0, 10)


# --- a hand-made two-layer conv net with its channel groups (no engine needed) --------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, bias=True)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def hand_groups():
    return [SimpleNamespace(id=0, size=6, prunable=True, out_layers=[("conv", torch.arange(6))],
                            norm_layers=[("bn", torch.arange(6))], in_layers=[("fc", torch.arange(6))]),
            SimpleNamespace(id=1, size=3, prunable=False, out_layers=[("fc", torch.arange(3))],
                            norm_layers=[], in_layers=[])]


def test_l1_plan_picks_smallest_mean_abs_filters_and_honours_patterns():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for i, s in enumerate([0.5, 0.1, 0.9, 0.2, 0.05, 1.0]):
            net.conv.weight[i] = s * torch.sign(torch.randn_like(net.conv.weight[i]))
    plan = l1_plan(net, hand_groups(), 0.5)
    assert plan[0].tolist() == [1, 3, 4] and 1 not in plan
    assert l1_plan(net, hand_groups(), 0.5, SelectHparams(layer_ratios={"conv": 0.2}))[0].tolist() == [1, 4]
    with pytest.raises(ValueError, match="nothing to prune"):
        l1_plan(net, hand_groups(), 0.5, SelectHparams(skip=["conv"]))


def test_regulariser_gradient_additions_and_schedule():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-1, 1)
    reg = TPPRegularizer(net, None, 0.5, TPPHparams(delta=0.1, every=2, ceiling=0.3, stabilise=4, zero_every=1),
                         groups=hand_groups())
    pruned = torch.zeros(6, dtype=torch.bool)
    pruned[reg.plan[0]] = True
    reg.t = 5  # reg = 0.1 * floor(5 / 2) = 0.2
    assert reg.reg == pytest.approx(0.2) and reg.phase == "rise"
    x = torch.randn(4, 2, 5, 5)
    net.zero_grad()
    loss = net(x).sum() + reg.penalty()
    loss.backward()
    base = {n: p.grad.clone() for n, p in net.named_parameters()}
    reg.after_backward()
    for n in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        p = dict(net.named_parameters())[n]
        torch.testing.assert_close(p.grad[pruned], base[n][pruned] + 0.2 * p.detach()[pruned])
        torch.testing.assert_close(p.grad[~pruned], base[n][~pruned])
    torch.testing.assert_close(net.fc.weight.grad, base["fc.weight"])
    # the penalty is lam * reg * gram term
    assert reg.penalty().item() == pytest.approx(1000 * 0.2 * gram_penalty(net.conv.weight, pruned).item(), rel=1e-6)
    # switches
    net.zero_grad()
    (net(x).sum()).backward()
    g0 = net.conv.weight.grad.clone()
    TPPRegularizer(net, None, 0.5, TPPHparams(delta=0.1, every=2, ceiling=0.3, stabilise=4, zero_every=1),
                   groups=hand_groups(), weight_reg=False).after_backward()  # reg(0) = 0 anyway
    torch.testing.assert_close(net.conv.weight.grad, g0)
    r2 = TPPRegularizer(net, None, 0.5, TPPHparams(delta=0.1, every=2, ceiling=0.3, stabilise=4, zero_every=1,
                                                   weight_reg=False), groups=hand_groups())
    r2.t = 4
    r2.after_backward()
    torch.testing.assert_close(net.conv.weight.grad, g0)
    assert not torch.equal(net.bn.weight.grad[pruned], base["bn.weight"][pruned])  # BN term still on


def test_stabilise_phase_zeroes_groups_one_after_another():
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2))
    groups = [SimpleNamespace(id=i, size=n, prunable=True, out_layers=[(str(i), torch.arange(n))], norm_layers=[],
                              in_layers=[]) for i, n in ((0, 6), (1, 5))]
    reg = TPPRegularizer(net, None, 0.5, TPPHparams(delta=0.5, every=1, ceiling=1.0, stabilise=6, zero_every=2),
                         groups=groups)
    assert reg.schedule.rise_iters == 2 and reg.hp.total_iters == 8
    rows0, rows1 = reg.plan[0], reg.plan[1]
    seen = []
    while not reg.finished:
        reg.step()
        seen.append((reg.t, reg.phase, bool((net[0].weight[rows0] == 0).all()), bool((net[1].weight[rows1] == 0).all())))
    # zeroed from (i+1)*zero_every iterations into the stabilise phase (t = 2 + 2 and 2 + 4)
    assert [(t, a, b) for t, _, a, b in seen] == [(1, False, False), (2, False, False), (3, False, False),
                                                 (4, True, False), (5, True, False), (6, True, True),
                                                 (7, True, True), (8, True, True)]
    assert seen[-1][1] == "done" and reg.phase == "done"
    assert (net[0].bias[rows0] == 0).all() and (net[0].weight.abs().sum(1) > 0).sum() == 6 - len(rows0)
    cb = TPPCallback(reg)
    state = cb.state_dict()
    assert cb.should_stop(None) and state["t"] == 8
    cb.load_state_dict({**state, "t": 3, "plan": [[0, [1, 2, 5]]]})
    assert reg.t == 3 and not cb.should_stop(None) and list(reg.plan) == [0] and reg.plan[0].tolist() == [1, 2, 5]
    assert reg.rows.out_masks["0"].tolist() == [False, True, True, False, False, True]


def test_plan_rows_rejects_unknown_group():
    with pytest.raises(KeyError, match="unknown channel groups"):
        PlanRows(Net(), hand_groups(), {7: torch.tensor([0])})


# --- on the structured engine ----------------------------------------------------------------


def _digits_ctx(model_name, seed=0):
    from prunekit import data as datasets
    from prunekit import models
    from prunekit.methods.base import Context
    from prunekit.training import TrainHparams

    torch.manual_seed(seed)
    data = datasets.load("digits", resize=16, val_fraction=0.1)
    model = models.build(model_name, data.in_channels, data.input_size, data.num_classes)
    hp = TrainHparams(epochs=1, batch_size=64, lr=0.01)
    return model, Context(data=data, finetune=hp, pretrain=hp, build_model=None, example_inputs=data.example_inputs(2))


def test_tpp_prune_removes_exactly_the_smallest_l1_filters_and_is_exact():
    from prunekit.training import TrainHparams, train

    model, ctx = _digits_ctx("lenet5-caffe")
    # independent selection from the pretrained weights: mean |w| per filter, ceil(0.3 N) smallest
    expect = {}
    for name in ("conv1", "conv2", "fc1"):
        w = getattr(model, name).weight.detach()
        score = w.abs().flatten(1).mean(1)
        expect[name] = set(torch.argsort(score)[: math.ceil(0.3 * len(w))].tolist())
    reg = TPPRegularizer(model, ctx.example_inputs, 0.3, TPPHparams(delta=0.25, every=2, ceiling=1.0, stabilise=12,
                                                                     zero_every=3))
    assert {g.out_layers[0][0]: set(reg.plan[g.id].tolist()) for g in reg.groups if g.id in reg.plan} == expect
    train(model, ctx.data, TrainHparams(epochs=3, batch_size=64, lr=1e-3, schedule="constant"),
          callbacks=[TPPCallback(reg)], progress=False, eval_test=False)
    assert reg.finished and reg.t == 8 + 12
    x = ctx.data.test.x[:16]
    model.eval()
    with torch.no_grad():
        before = model(x)  # before prune() zeroes anything: the stabilise phase must have done it
    slim = reg.prune()
    kept = {name: [i for i in range(n) if i not in expect[name]] for name, n in (("conv1", 20), ("conv2", 50),
                                                                               ("fc1", 500))}
    kept["fc2"] = list(range(10))
    for name, prev in (("conv1", None), ("conv2", "conv1"), ("fc1", "conv2"), ("fc2", "fc1")):
        w = getattr(model, name).weight[kept[name]]  # with 16x16 inputs conv2's output is 1x1: fc1 columns = channels
        w = w if prev is None else w[:, kept[prev]]
        torch.testing.assert_close(getattr(slim, name).weight, w)
    # the pruned channels were zeroed by the stabilise phase, so removing them changes nothing
    slim.eval()
    torch.testing.assert_close(slim(x), before, atol=1e-5, rtol=1e-5)


def test_tpp_runner_method_on_bn_free_mlp_and_on_resnet():
    from prunekit.methods import get

    mlp, ctx = _digits_ctx("mlp7-linear")
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    opts = {"delta": 0.5, "every": 2, "stabilise": 14, "zero_every": 2}
    slim = get("tpp", opts).prune(mlp, 0.5, ctx)
    assert [m.out_features for m in slim.modules() if isinstance(m, nn.Linear)] == [50] * 6 + [10]
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())  # dense model untouched
    # residual net: every coupled group (stem + all conv2 + shortcut padding) is pruned in all members
    from prunekit import models

    net = models.build("resnet20", 1, 16, 10)
    r = TPPRegularizer(net, torch.randn(2, 1, 16, 16), 0.5, TPPHparams(delta=0.5, every=1, stabilise=3, zero_every=1))
    assert "layer3.2.conv2" in r.rows.out_masks and r.rows.out_masks["conv1"].sum() == 8
    # option-A shortcuts place the 16 stem channels at 8..23 of stage 2 (half pruned); the 16 padded
    # ends are their own group (half pruned)
    bn = r.rows.norm_masks["layer2.0.bn2"]
    assert bn[8:24].sum() == 8 and bn[:8].sum() + bn[24:].sum() == 8 and r.penalty().item() == 0  # reg(0) = 0
    r.t = 1  # reg(1) = 0.5: the penalty is 1000 * 0.5 * the Gram term of every pruned member layer
    mods = dict(net.named_modules())
    want = 0.0
    for name, mask in r.rows.out_masks.items():
        w = mods[name].weight.detach().reshape(mask.numel(), -1)
        touch = mask[:, None] | mask[None, :]
        want += float(((w @ w.t()) * touch).pow(2).sum()) / mask.numel() ** 2
    assert r.penalty().item() == pytest.approx(1000 * 0.5 * want, rel=1e-4) and want > 0
    r.t = r.hp.total_iters
    slim = r.prune()
    assert slim.layer3[2].conv2.weight.shape[:2] == (32, 32) and slim(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_tpp_regularise_works_in_place_zeroes_all_pruned_rows_and_removal_is_exact():
    import copy

    from prunekit.methods.tpp import TPP

    mlp, ctx = _digits_ctx("mlp7-linear")
    method = TPP(TPPHparams(delta=0.5, every=2, stabilise=14, zero_every=2))
    work = copy.deepcopy(mlp)
    reg = method.regularise(work, 0.5, ctx)
    assert reg.finished and reg.t == 4 + 14
    # trained in place: the kept rows of the first layer moved away from the dense model's
    kept0 = ~reg.rows.out_masks["features.1"]
    assert not torch.equal(work.features[1].weight[kept0], mlp.features[1].weight[kept0])
    # 6 hidden layers zeroed at 2, 4, ..., 12 iterations into the 14-iteration stabilise phase:
    # every pruned row is exactly zero BEFORE prune() zeroes anything itself
    assert len(reg.rows.out_masks) == 6
    for name, mask in reg.rows.out_masks.items():
        w = work.get_submodule(name).weight
        assert mask.sum() == 50 and torch.count_nonzero(w[mask]) == 0 and torch.count_nonzero(w[~mask]) > 0
    x = ctx.data.test.x[:16]
    with torch.no_grad():
        before = work(x)
        slim = reg.prune()
        torch.testing.assert_close(slim(x), before, atol=1e-5, rtol=1e-5)  # removal costs nothing
