"""Structured baselines (OrthP, GReg-1/2, network slimming, Taylor, L1, Scratch) through the
runner's path (``method.prune`` / ``method.finetune``), on models built so the right selection is
known, with the gradients their training phases apply checked against independent sums."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit.methods.greg as greg_mod
import prunekit.methods.scratch as scratch_mod
import prunekit.methods.slimming as slim_mod
from prunekit.methods import get
from prunekit.methods.greg import GrowingL2
from prunekit.methods.orthp import default_gain, orthogonalize_
from prunekit.methods.slimming import GammaL1
from prunekit.training import TrainHparams
from prunekit.training.distributed import batch_order
from test_mechanics_common import ConvBN, StepSpy, TrainSpy, ce_grads, make_ctx, tiny_data

SCALES = [0.3, 0.05, 1.0, 0.2, 0.7, 0.1]


def smallest(scores, k):
    m = torch.zeros(len(scores), dtype=torch.bool)
    m[torch.argsort(torch.as_tensor(scores), stable=True)[:k]] = True
    return m


def convbn(seed=0, scales=SCALES):
    torch.manual_seed(seed)
    net = ConvBN()
    with torch.no_grad():
        for i, s in enumerate(scales):
            net.conv.weight[i] = s * torch.sign(torch.randn_like(net.conv.weight[i]))
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


def step_batch(data, hp, step):
    spe = len(batch_order(len(data.train), hp.batch_size, hp.seed, 0, 1))
    idx = batch_order(len(data.train), hp.batch_size, hp.seed, step // spe, 1)[step % spe]
    return data.train.get_batch(idx)


def assert_close_dict(got, want, keys):
    for k in keys:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


# --- OrthP ---------------------------------------------------------------------------------


def assert_positive_qr_factor(o, a, gain):
    """o / gain is the Q of the QR of a (of a^T when a is wide) with R's diagonal positive:
    orthonormal columns and Q^T a upper triangular with a positive diagonal (unique)."""
    o, a = o.double() / gain, a.double()
    if a.shape[0] < a.shape[1]:
        o, a = o.t(), a.t()
    torch.testing.assert_close(o.t() @ o, torch.eye(o.shape[1], dtype=torch.double), atol=1e-5, rtol=0)
    r = o.t() @ a
    torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), atol=1e-5, rtol=0)
    assert (torch.diagonal(r) > 0).all(), torch.diagonal(r)


def test_orthp_method_selects_by_l1_then_orthogonalises_each_slim_layer():
    s1, s2 = [0.5, 0.1, 0.9, 0.2, 0.05, 1.0, 0.3, 0.15], [0.2, 0.8, 0.1, 0.6, 0.4, 0.05, 0.7, 0.3]
    k1, k2 = (~smallest(s1, 4)).nonzero().flatten(), (~smallest(s2, 4)).nonzero().flatten()
    # Rows are scale * random signs, so L1 ranks filters by scale alone. A random 4x4 sign
    # block can be singular, and then its QR (and the positive-diagonal check) is not unique:
    # draw until every kept block is well conditioned, so the test does not hang on the RNG.
    for seed in range(100):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 3))
        with torch.no_grad():
            for lin, sc in ((net[1], s1), (net[2], s2)):
                lin.weight.copy_(torch.tensor(sc)[:, None] * torch.sign(torch.randn_like(lin.weight)))
        expect = [net[1].weight[k1], net[2].weight[k2][:, k1], net[3].weight[:, k2]]
        if all(torch.linalg.svdvals(a.detach().double()).min() > 0.05 for a in expect):
            break
    ctx = make_ctx(tiny_data(shape=(1, 4, 4)), None)
    slim = get("l1-orthp").prune(net, 0.5, ctx)
    lins = [m for m in slim.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in lins] == [(4, 16), (4, 4), (3, 4)]
    assert default_gain(net) == 1.0
    for m, a in zip(lins, expect):
        assert_positive_qr_factor(m.weight.detach(), a.detach(), 1.0)


def test_orthp_sign_fix_and_relu_gain_on_random_and_conv_weights():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 1, groups=1), nn.Flatten(),
                        nn.Linear(4, 9), nn.Conv2d(4, 4, 3, groups=4))
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert default_gain(net) == pytest.approx(math.sqrt(2))
    orthogonalize_(net)
    for i in (0, 2, 4):
        a = before[f"{i}.weight"].reshape(before[f"{i}.weight"].shape[0], -1)
        assert_positive_qr_factor(net[i].weight.detach().reshape(a.shape[0], -1), a, math.sqrt(2))
    assert torch.equal(net[5].weight, before["5.weight"])  # grouped conv: left alone
    assert torch.equal(net[0].bias, before["0.bias"])  # biases are not touched
    # explicit gain, and a zero filter keeps a non-zero (sign-fixed) orthonormal column
    lin = nn.Linear(3, 6)
    with torch.no_grad():
        lin.weight[:, 1] = 0
    orthogonalize_(nn.Sequential(lin), gain=0.5)
    w = lin.weight.detach().double() / 0.5
    torch.testing.assert_close(w.t() @ w, torch.eye(3, dtype=torch.double), atol=1e-5, rtol=0)


# --- GReg ----------------------------------------------------------------------------------


def greg_setup(monkeypatch):
    data = tiny_data()
    ft = TrainHparams(epochs=1, batch_size=8, lr=0.01, weight_decay=0.0)
    ctx = make_ctx(data, ConvBN, ft=ft)
    snaps = []
    spy = TrainSpy(add=lambda i: [StepSpy()], after=lambda m: snaps.append(copy.deepcopy(m.state_dict())))
    monkeypatch.setattr(greg_mod, "train", spy)
    return data, ctx, spy, snaps


def check_growing_l2(data, net, call, rows_mask, steps_regs):
    spy = call["extra"][0]
    for step, r in steps_regs:
        x, y = step_batch(data, call["hp"], step)
        want, _, _ = ce_grads(net, spy.params[step], x, y)
        for k in ("conv.weight", "conv.bias"):
            want[k][rows_mask] += r * spy.params[step][k][rows_mask]
        assert_close_dict(spy.grads[step], want, ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight"])


def test_greg1_growing_l2_reaches_the_pruned_filters_in_training(monkeypatch):
    data, ctx, spy, snaps = greg_setup(monkeypatch)
    dense = convbn()
    slim = get("greg1", {"preset": "demo", "stabilise": 4, "lr": 5e-3}).prune(dense, 0.5, ctx)
    (call,) = spy.calls
    hp = call["hp"]
    assert (hp.lr, hp.momentum, hp.weight_decay, hp.batch_size, hp.schedule) == (5e-3, 0.9, 0.0, 8, "constant")
    (cb,) = call["callbacks"]
    assert isinstance(cb, GrowingL2) and cb.iters == 204 and cb.t == 204
    pruned = smallest(SCALES, 3)
    assert cb.rows.out_masks["conv"].tolist() == pruned.tolist()
    # demo preset: reg = 0.05 * floor(t / 10), 1.0 from t = 200
    check_growing_l2(data, dense, call, pruned, [(3, 0.0), (15, 0.05), (157, 0.75), (202, 1.0)])
    kept = (~pruned).nonzero().flatten()
    torch.testing.assert_close(slim.conv.weight, snaps[0]["conv.weight"][kept])
    torch.testing.assert_close(slim.bn.weight, snaps[0]["bn.weight"][kept])


def test_greg2_penalises_every_filter_first_then_picks_by_l1_after_that_phase(monkeypatch):
    data, ctx, spy, snaps = greg_setup(monkeypatch)
    close = [0.1, 0.1001, 0.1002, 0.1003, 0.1004, 0.1005]  # near ties: the picking phase decides
    dense = convbn(scales=close)
    slim = get("greg2", {"preset": "demo", "stabilise": 0, "pick_iters": 20, "pick_ceiling": 0.1,
                         "lr": 0.5}).prune(dense, 0.5, ctx)
    assert len(spy.calls) == 2
    pick, main = spy.calls
    assert pick["callbacks"][0].rows.out_masks["conv"].all() and pick["callbacks"][0].iters == 20
    # picking schedule: 0.1 reached in 20 iterations at every = 10: reg = 0.05 from t = 10
    check_growing_l2(data, dense, pick, torch.ones(6, dtype=torch.bool), [(4, 0.0), (12, 0.05)])
    after_pick = snaps[0]["conv.weight"].abs().flatten(1).mean(1)
    expect = smallest(after_pick, 3)
    assert expect.tolist() != smallest(close, 3).tolist()  # the test would not tell otherwise
    assert main["callbacks"][0].rows.out_masks["conv"].tolist() == expect.tolist()
    kept = (~expect).nonzero().flatten()
    torch.testing.assert_close(slim.conv.weight, snaps[1]["conv.weight"][kept])


# --- network slimming ------------------------------------------------------------------------


def test_slimming_l1_on_gamma_in_training_then_global_gamma_selection(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, ConvBN, ft=TrainHparams(epochs=1, batch_size=8, lr=0.01, weight_decay=1e-4))
    snaps = []
    spy = TrainSpy(add=lambda i: [StepSpy()], after=lambda m: snaps.append(copy.deepcopy(m.state_dict())))
    monkeypatch.setattr(slim_mod, "train", spy)
    dense = convbn()
    with torch.no_grad():
        dense.bn.weight.copy_(torch.tensor([0.9, -0.05, 0.5, 0.02, -0.8, 0.3]))
    slim = get("slimming", {"s": 0.01, "epochs": 2, "lr": 0.02}).prune(dense, 0.5, ctx)
    (call,) = spy.calls
    hp = call["hp"]
    assert (hp.epochs, hp.lr, hp.momentum, hp.batch_size, hp.weight_decay) == (2, 0.02, 0.9, 8, 1e-4)
    assert isinstance(call["callbacks"][0], GammaL1)
    sp = call["extra"][0]
    assert len(sp.grads) == 8
    for step in (0, 5):
        x, y = step_batch(data, hp, step)
        want, _, _ = ce_grads(dense, sp.params[step], x, y)
        want["bn.weight"] = want["bn.weight"] + 0.01 * torch.sign(sp.params[step]["bn.weight"])
        assert_close_dict(sp.grads[step], want, ["bn.weight", "bn.bias", "conv.weight", "fc.weight"])
    g = snaps[0]["bn.weight"].abs()
    kept = (~smallest(g, 3)).nonzero().flatten()
    torch.testing.assert_close(slim.bn.weight, snaps[0]["bn.weight"][kept])
    torch.testing.assert_close(slim.conv.weight, snaps[0]["conv.weight"][kept])


# --- Taylor --------------------------------------------------------------------------------


def test_taylor_prunes_the_channels_of_smallest_squared_first_order_change():
    data = tiny_data()
    dense = convbn()
    ctx = make_ctx(data, ConvBN, seed=3)
    slim = get("taylor", {"batches": 3, "batch_size": 12}).prune(dense, 0.5, ctx)
    # independent: d loss / d a at a = 1, a scaling every parameter of channel c, per batch, squared, averaged
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(3))
    score = torch.zeros(6)
    for b in range(3):
        idx = order[(b * 12) % 32:][:12]
        x, y = data.train.get_batch(idx)
        for c in range(6):
            a = torch.ones((), requires_grad=True)
            sc = torch.ones(6) + (a - 1) * F.one_hot(torch.tensor(c), 6)
            p = dict(dense.named_parameters())
            over = {"conv.weight": p["conv.weight"] * sc[:, None, None, None], "conv.bias": p["conv.bias"] * sc,
                    "bn.weight": p["bn.weight"] * sc, "bn.bias": p["bn.bias"] * sc}
            net = copy.deepcopy(dense).train()
            (d,) = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(net, over, (x,), strict=False), y), a)
            score[c] += d.item() ** 2 / 3
    kept = (~smallest(score, 3)).nonzero().flatten()
    torch.testing.assert_close(slim.conv.weight, dense.conv.weight[kept])
    torch.testing.assert_close(slim.bn.weight, dense.bn.weight[kept])
    torch.testing.assert_close(slim.fc.weight, dense.fc.weight.view(3, 6, 16)[:, kept].reshape(3, -1))


# --- L1 and Scratch ------------------------------------------------------------------------------


def test_l1_method_removes_the_smallest_l1_filters_and_their_inputs():
    dense = convbn()
    ctx = make_ctx(tiny_data(), ConvBN)
    before = copy.deepcopy(dense.state_dict())
    slim = get("l1").prune(dense, 0.5, ctx)
    kept = (~smallest(SCALES, 3)).nonzero().flatten()
    torch.testing.assert_close(slim.conv.weight, dense.conv.weight[kept])
    torch.testing.assert_close(slim.conv.bias, dense.conv.bias[kept])
    torch.testing.assert_close(slim.bn.weight, dense.bn.weight[kept])
    torch.testing.assert_close(slim.bn.running_var, dense.bn.running_var[kept])
    torch.testing.assert_close(slim.fc.weight, dense.fc.weight.view(3, 6, 16)[:, kept].reshape(3, -1))
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())


def test_scratch_takes_the_l1_architecture_and_fresh_weights_and_trains_with_the_dense_budget(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, ConvBN, seed=4, pre=TrainHparams(epochs=2, batch_size=16, lr=0.1),
                   ft=TrainHparams(epochs=1, batch_size=8, lr=0.001))
    dense = convbn()
    slim = get("scratch").prune(dense, 0.5, ctx)
    torch.manual_seed(5)  # ctx.seed + 1
    fresh = ConvBN()
    kept = (~smallest(SCALES, 3)).nonzero().flatten()
    torch.testing.assert_close(slim.conv.weight, fresh.conv.weight[kept])
    torch.testing.assert_close(slim.fc.weight, fresh.fc.weight.view(3, 6, 16)[:, kept].reshape(3, -1))
    spy = TrainSpy()
    monkeypatch.setattr(scratch_mod, "train", spy)
    get("scratch").finetune(slim, ctx)
    get("scratch", {"budget": "finetune"}).finetune(slim, ctx)
    assert spy.calls[0]["hp"] == ctx.pretrain and spy.calls[1]["hp"] == ctx.finetune
