"""TPP mechanics through the paths users take: ``train()`` with ``TPPCallback`` (what
``TPP.prune`` runs), the own-loop API of the README, and the runner method's phases.

Every gradient is checked against an independent computation: cross-entropy gradient at the
weights the step used + lam * reg(t) * gradient of the Gram term written as an explicit masked
N x N Gram matrix + reg(t) * param on the pruned rows (weights, bias, BN gamma/beta)."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import prunekit.methods.tpp as tpp_mod
from prunekit.methods.tpp import TPP, TPPCallback, TPPHparams, TPPRegularizer
from prunekit.training import TrainHparams, train
from test_mechanics_common import ConvBN, StepSpy, TrainSpy, ce_grads, full_batch, make_ctx, tiny_data

SCALES = [0.3, 0.05, 1.0, 0.2, 0.7, 0.1]  # filter magnitudes: the 3 smallest are 1, 5, 3


def model_with_known_l1(seed=0):
    torch.manual_seed(seed)
    net = ConvBN()
    with torch.no_grad():
        for i, s in enumerate(SCALES):
            net.conv.weight[i] = s * torch.sign(torch.randn_like(net.conv.weight[i]))
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


def expected_pruned(ratio=0.5):
    k = math.ceil(ratio * len(SCALES))
    mask = torch.zeros(len(SCALES), dtype=torch.bool)
    mask[torch.argsort(torch.tensor(SCALES))[:k]] = True
    return mask


def gram_term(w, pruned):
    """Explicit N x N Gram G = W W^T; target zero on every entry touching a pruned filter."""
    w = w.reshape(len(w), -1)
    g = w @ w.t()
    touch = pruned[:, None] | pruned[None, :]
    return (g * touch).pow(2).sum() / len(w) ** 2


def reference_grads(model, params, x, y, pruned, reg, lam, weight_reg=True, bn_reg=True):
    base, ps, _ = ce_grads(model, params, x, y)
    (g_gram,) = torch.autograd.grad(lam * reg * gram_term(ps["conv.weight"], pruned), [ps["conv.weight"]])
    out = {k: v.clone() for k, v in base.items()}
    out["conv.weight"] += g_gram
    terms = (["conv.weight", "conv.bias"] if weight_reg else []) + (["bn.weight", "bn.bias"] if bn_reg else [])
    for k in terms:
        out[k][pruned] += reg * params[k][pruned]
    return out


def assert_grads(got, want):
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("weight_reg,bn_reg", [(True, True), (False, True), (True, False)])
def test_gradient_reaching_each_parameter_through_train_and_callback(weight_reg, bn_reg):
    data = tiny_data()
    net = model_with_known_l1()
    h = TPPHparams(delta=0.25, every=1, ceiling=1.0, stabilise=3, zero_every=1, lam=10.0,
                   weight_reg=weight_reg, bn_reg=bn_reg)
    reg = TPPRegularizer(net, data.example_inputs(2), 0.5, h)
    pruned = expected_pruned()
    assert reg.rows.out_masks["conv"].tolist() == pruned.tolist()  # chosen by L1 of the given weights
    assert reg.rows.norm_masks["bn"].tolist() == pruned.tolist()
    spy = StepSpy()
    # one full-batch step per epoch; reg(t) = 0.25 t, so steps 1 and 2 run at reg 0.25 and 0.5
    train(net, data, TrainHparams(epochs=3, batch_size=len(data.train), lr=1e-3, weight_decay=0.0,
                                  schedule="constant"), callbacks=[TPPCallback(reg), spy], progress=False,
          eval_test=False)
    assert reg.t == 3
    x, y = full_batch(data)
    for step, r in ((1, 0.25), (2, 0.5)):
        want = reference_grads(net, spy.params[step], x, y, pruned, r, h.lam, weight_reg, bn_reg)
        assert_grads(spy.grads[step], want)
    # step 0 runs at reg(0) = 0: the task gradient only
    base, _, _ = ce_grads(net, spy.params[0], x, y)
    assert_grads(spy.grads[0], base)


def test_penalty_value_at_nonzero_reg_own_loop_api():
    net = model_with_known_l1()
    reg = TPPRegularizer(net, torch.randn(2, 1, 6, 6), 0.5, TPPHparams(delta=0.1, every=3, ceiling=1.0))
    pruned = expected_pruned()
    for t, r in ((0, 0.0), (2, 0.0), (3, 0.1), (7, 0.2), (10**6, 1.0)):
        reg.t = t
        assert reg.reg == pytest.approx(r)
        want = 1000.0 * r * gram_term(net.conv.weight.detach(), pruned).item()
        assert reg.penalty().item() == pytest.approx(want, rel=1e-5, abs=1e-12)
    reg.t = 7
    assert reg.penalty().item() > 0


def test_penalty_scales_with_lam_and_is_nonzero_in_rise():
    net = model_with_known_l1()
    x = torch.randn(2, 1, 6, 6)
    a = TPPRegularizer(net, x, 0.5, TPPHparams(delta=0.1, every=1, lam=1.0))
    b = TPPRegularizer(net, x, 0.5, TPPHparams(delta=0.1, every=1, lam=250.0))
    a.t = b.t = 4
    assert a.penalty().item() > 0
    assert b.penalty().item() == pytest.approx(250.0 * a.penalty().item(), rel=1e-6)
    c = TPPRegularizer(net, x, 0.5, TPPHparams(delta=0.1, every=1, lam=0.0))
    c.t = 4
    assert c.penalty().item() == 0


def test_own_loop_readme_recipe_matches_the_trainer_callback():
    """The README loop (penalty, backward, after_backward, step, reg.step) and train() with
    TPPCallback give the same weights: the two paths share every term."""
    data = tiny_data()
    x, y = full_batch(data)
    h = TPPHparams(delta=0.25, every=1, ceiling=1.0, stabilise=4, zero_every=1, lam=10.0)
    a = model_with_known_l1()
    b = copy.deepcopy(a)
    ra = TPPRegularizer(a, x[:2], 0.5, h)
    train(a, data, TrainHparams(epochs=20, batch_size=len(x), lr=0.01, momentum=0.9, weight_decay=0.0,
                                schedule="constant"), callbacks=[TPPCallback(ra)], progress=False, eval_test=False)
    assert ra.finished and ra.t == h.total_iters == 8
    rb = TPPRegularizer(b, x[:2], 0.5, h)
    opt = torch.optim.SGD(b.parameters(), lr=0.01, momentum=0.9)
    b.train()
    while not rb.finished:
        loss = nn.functional.cross_entropy(b(x), y) + rb.penalty()
        opt.zero_grad()
        loss.backward()
        rb.after_backward()
        opt.step()
        rb.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_stabilise_zeroing_and_exact_removal_through_train():
    data = tiny_data()
    x, _ = full_batch(data)
    net = model_with_known_l1()
    h = TPPHparams(delta=0.5, every=1, ceiling=1.0, stabilise=3, zero_every=2, lam=10.0)
    reg = TPPRegularizer(net, x[:2], 0.5, h)
    pruned = expected_pruned()
    seen = []

    class Watch(StepSpy):
        def after_step(self, trainer):
            seen.append((reg.t, bool((net.conv.weight[pruned] == 0).all()), bool((net.bn.weight[pruned] == 0).all())))

    train(net, data, TrainHparams(epochs=10, batch_size=len(x), lr=1e-2, schedule="constant", weight_decay=0.0),
          callbacks=[TPPCallback(reg), Watch()], progress=False, eval_test=False)
    # rise 2 iterations; the one group is zeroed from 1 * zero_every = 2 iterations into stabilise (t = 4)
    assert [(t, z) for t, z, _ in seen] == [(1, False), (2, False), (3, False), (4, True), (5, True)]
    assert all(zb == z for _, z, zb in seen)
    assert (net.conv.bias[pruned] == 0).all() and (net.bn.bias[pruned] == 0).all()
    assert (net.conv.weight[~pruned].abs().sum((1, 2, 3)) > 0).all()
    net.eval()
    with torch.no_grad():
        before = net(x).clone()  # BEFORE prune(): the zeroing came from the stabilise phase
        slim = reg.prune()
        slim.eval()
        torch.testing.assert_close(slim(x), before, atol=1e-5, rtol=1e-5)
    kept = (~pruned).nonzero().flatten()
    assert slim.conv.weight.shape[0] == 3
    torch.testing.assert_close(slim.conv.weight, net.conv.weight[kept])
    torch.testing.assert_close(slim.bn.weight, net.bn.weight[kept])
    torch.testing.assert_close(slim.fc.weight, net.fc.weight.view(3, 6, 16)[:, kept].reshape(3, -1))


def test_prune_before_the_schedule_ends_raises_unless_forced():
    net = model_with_known_l1()
    reg = TPPRegularizer(net, torch.randn(2, 1, 6, 6), 0.5, TPPHparams(delta=0.5, every=1, stabilise=5))
    assert reg.hp.total_iters == 7
    reg.t = 3
    with pytest.raises(RuntimeError, match=r"4 of 7 iterations remain"):
        reg.prune()
    assert torch.count_nonzero(net.conv.weight[expected_pruned()]) > 0  # nothing zeroed by the refusal
    slim = reg.prune(force=True)
    assert slim.conv.weight.shape[0] == 3
    assert (net.conv.weight[expected_pruned()] == 0).all()  # forced: zeroed, then removed
    reg.t = 7
    assert reg.remaining == 0 and reg.prune().conv.weight.shape[0] == 3


def test_runner_method_phase_hyperparameters_and_callback(monkeypatch):
    data = tiny_data()
    ft = TrainHparams(epochs=1, batch_size=8, lr=0.01, weight_decay=3e-4)
    ctx = make_ctx(data, ConvBN, ft=ft)
    spy = TrainSpy(add=lambda i: [StepSpy()])
    monkeypatch.setattr(tpp_mod, "train", spy)
    h = TPPHparams(delta=0.25, every=2, ceiling=1.0, stabilise=6, zero_every=2, lr=2e-3, momentum=0.8)
    dense = model_with_known_l1()
    before = copy.deepcopy(dense.state_dict())
    slim = TPP(h).prune(dense, 0.5, ctx)
    assert len(spy.calls) == 1
    hp = spy.calls[0]["hp"]
    assert (hp.lr, hp.momentum, hp.weight_decay, hp.batch_size, hp.schedule) == (2e-3, 0.8, 3e-4, 8, "constant")
    # 14 iterations at 4 steps per epoch: 4 epochs, stopped by the callback at 14
    assert hp.epochs == math.ceil(14 / math.ceil(32 / 8))
    (cb,) = spy.calls[0]["callbacks"]
    assert isinstance(cb, TPPCallback) and cb.reg.finished and cb.reg.t == 14
    assert len(spy.calls[0]["extra"][0].grads) == 14
    assert slim.conv.weight.shape[0] == 3
    # the regularised copy, not the dense model, was trained
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    kept = (~expected_pruned()).nonzero().flatten()
    assert not torch.allclose(slim.conv.weight, dense.conv.weight[kept])
    # explicit phase overrides
    spy.calls.clear()
    TPP(TPPHparams(delta=0.5, every=1, stabilise=2, weight_decay=0.0, batch_size=16)).prune(dense, 0.5, ctx)
    hp = spy.calls[0]["hp"]
    assert (hp.lr, hp.momentum, hp.weight_decay, hp.batch_size) == (1e-3, 0.9, 0.0, 16)


def test_runner_finetune_uses_the_finetune_hparams(monkeypatch):
    import prunekit.methods.base as base_mod

    data = tiny_data()
    ctx = make_ctx(data, ConvBN, ft=TrainHparams(epochs=2, batch_size=16, lr=0.02))
    spy = TrainSpy()
    monkeypatch.setattr(base_mod, "train", spy)
    TPP().finetune(ConvBN(), ctx)
    assert spy.calls[0]["hp"] == ctx.finetune and spy.calls[0]["callbacks"] == []


def test_regularise_refuses_a_schedule_cut_short(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, ConvBN)

    def short(model, data, hp, **kw):  # a trainer that stops after one epoch of 1 step
        from prunekit.training import train as real

        return real(model, data, TrainHparams(epochs=1, batch_size=len(data.train), lr=1e-3), **kw)

    monkeypatch.setattr(tpp_mod, "train", short)
    with pytest.raises(RuntimeError, match="stopped at iteration 1 of"):
        TPP(TPPHparams(delta=0.5, every=1, stabilise=2)).regularise(model_with_known_l1(), 0.5, ctx)
