"""ESPN, SNIP, GraSP, SynFlow, IMP, GMP, magnitude and random through the runner's path
(``method.prune`` + ``method.finetune``) and ESPN's own-loop API, checked against independent
computations and known answers; plus JSV statistics."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit.methods.espn as espn_mod
import prunekit.methods.imp as imp_mod
import prunekit.methods.snip as snip_mod
import prunekit.training as training_pkg
from prunekit.methods import get
from prunekit.methods.gmp import cubic_sparsity
from prunekit.methods.grasp import class_balanced_batch
from prunekit.metrics import jacobian_singular_values
from prunekit.sparse import masks as M
from prunekit.sparse.espn import ESPNSearch, default_alpha, run_search, search
from prunekit.sparse.scores import grasp_scores
from prunekit.training import Callback, TrainHparams, train
from prunekit.training.callbacks import RecordAt
from prunekit.training.distributed import batch_order
from test_mechanics_common import StepSpy, TrainSpy, make_ctx, tiny_data


def mlp(seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def linear2():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6, bias=False), nn.Linear(6, 4, bias=False))


@pytest.fixture(scope="module")
def data():
    return tiny_data(n_train=64, n_test=32, classes=4, shape=(1, 4, 4), val_fraction=0.25)


def step_batch(data, hp, step):
    spe = len(batch_order(len(data.train), hp.batch_size, hp.seed, 0, 1))
    idx = batch_order(len(data.train), hp.batch_size, hp.seed, step // spe, 1)[step % spe]
    return data.train.get_batch(idx)


def top_k_mask(scores: dict, k: int, largest=True):
    flat = torch.cat([s.flatten() for s in scores.values()])
    order = torch.argsort(flat, descending=largest, stable=True)[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order] = True
    out, o = {}, 0
    for n, s in scores.items():
        out[n] = keep[o:o + s.numel()].view_as(s)
        o += s.numel()
    return out


def kept(masks):
    return sum(int(v.sum()) for v in masks.values())


# --- ESPN -------------------------------------------------------------------------------------


def test_espn_penalty_is_alpha_times_l1_of_signed_masks():
    net = mlp(0)
    s = ESPNSearch(net, sparsity=0.5, alpha=0.3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in s.mask_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    want = 0.3 * sum(float(p.detach().abs().sum()) for p in s.mask_parameters())
    assert s.penalty().item() == pytest.approx(want, rel=1e-6)
    assert s.penalty().item() > 0.3 * abs(sum(float(p.detach().sum()) for p in s.mask_parameters()))


def test_espn_gradient_reaching_weights_and_masks_in_the_search(data, monkeypatch):
    net = mlp(0)
    s = ESPNSearch(net, sparsity=0.5, alpha=0.2)
    with torch.no_grad():
        s.mask_parameters()[0][:, :5] = -0.5  # negative masks: d|m|/dm = -1 there
    spy = TrainSpy(add=lambda i: [StepSpy()])
    monkeypatch.setattr(training_pkg, "train", spy)
    run_search(s, data, lr=0.01, max_epochs=2, batch_size=16, seed=3, check_every="epoch")
    (call,) = spy.calls
    hp = call["hp"]
    assert (hp.lr, hp.momentum, hp.weight_decay, hp.schedule, hp.batch_size, hp.epochs, hp.seed) == \
        (0.01, 0.9, 0.0, "constant", 16, 2, 3)
    st = call["extra"][0]
    names = ["1.parametrizations.weight.original", "1.parametrizations.weight.0.m",
             "3.parametrizations.weight.original", "3.parametrizations.weight.0.m", "1.bias", "3.bias"]
    for step in (0, 5):
        p = {k: st.params[step][k].clone().requires_grad_(True) for k in names}
        x, y = step_batch(data, hp, step)
        h = F.relu(F.linear(x.flatten(1), p[names[0]] * p[names[1]], p["1.bias"]))
        out = F.linear(h, p[names[2]] * p[names[3]], p["3.bias"])
        loss = F.cross_entropy(out, y) + 0.2 * (p[names[1]].abs().sum() + p[names[3]].abs().sum())
        ref = torch.autograd.grad(loss, [p[k] for k in names])
        for k, r in zip(names, ref):
            torch.testing.assert_close(st.grads[step][k], r, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert (st.params[0][names[1]][:, :5] < 0).all()


def test_espn_search_history_reports_count_and_target(data):
    net = mlp(0)
    res = search(net, data, 0.5, alpha=0.05, lr=0.05, max_epochs=2, batch_size=16, check_every="epoch")
    for rec in res.history:
        assert rec["mask_target"] == M.keep_count(16 * 12 + 12 * 4, 0.5)
        assert 0 <= rec["mask_on"] <= 16 * 12 + 12 * 4


def test_espn_progress_counts_against_the_target():
    net = mlp(0)
    s = ESPNSearch(net, keep_ratio=0.25, alpha=1e-3)
    n = 16 * 12 + 12 * 4
    p = s.progress()
    assert p == {"count": n, "target": n // 4, "total": n, "to_go": n - n // 4, "done": False, "fraction_on": 1.0}
    with torch.no_grad():
        s.mask_parameters()[0].fill_(0.0)  # 192 off
        s.mask_parameters()[1][0, :5] = 0.005
    p = s.progress()
    assert p["count"] == 48 - 5 and p["to_go"] == 0 and p["done"] and p["fraction_on"] == pytest.approx(43 / n)


def test_espn_warns_when_alpha_is_too_small_for_the_epoch_budget(data):
    s = ESPNSearch(mlp(0), sparsity=0.9, alpha=1e-4)
    # L1 drift alone: (1 - 0.01) * (1 - 0.9) / (0.05 * 1e-4) = 19800 steps
    assert s.steps_to_threshold(0.05) == 19800
    assert s.steps_to_threshold(0.05, momentum=0.0) == 198000
    with pytest.warns(RuntimeWarning, match=r"too small.*19800 steps.*4950 epochs of 4 steps"):
        assert s.check_alpha(0.05, steps_per_epoch=4, max_epochs=300) == pytest.approx(4950)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert s.check_alpha(0.05, steps_per_epoch=100, max_epochs=300) == pytest.approx(198)
    with pytest.warns(RuntimeWarning, match="too small"):
        run_search(ESPNSearch(mlp(0), sparsity=0.9, alpha=1e-5), data, lr=0.05, max_epochs=1, batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # alpha large enough: no warning
        run_search(ESPNSearch(mlp(0), sparsity=0.9, alpha=0.5), data, lr=0.05, max_epochs=3, batch_size=32)
    assert ESPNSearch(mlp(0), sparsity=0.9, alpha=0.0).steps_to_threshold(0.05) == math.inf


def test_default_alpha_uses_the_authors_end_points_log_linearly():
    # ESPN README: MNIST LeNets alpha 6e-5 at 95% -> 6e-4 at 99.6%; CIFAR 8e-5 at 95% -> 5.5e-4 at 99.5%
    for fam, (s0, a0), (s1, a1) in (("mnist", (0.95, 6e-5), (0.996, 6e-4)), ("cifar", (0.95, 8e-5), (0.995, 5.5e-4))):
        assert default_alpha(s0, fam) == pytest.approx(a0, rel=1e-9)
        assert default_alpha(s1, fam) == pytest.approx(a1, rel=1e-9)
        # geometric mean of the kept fractions -> geometric mean of the alphas (log-linear)
        mid = 1 - math.sqrt((1 - s0) * (1 - s1))
        assert default_alpha(mid, fam) == pytest.approx(math.sqrt(a0 * a1), rel=1e-9)
        # and extrapolated on the same line: a tenth of the kept fraction beyond the end point
        far = 1 - (1 - s1) / 10
        slope = math.log(a1 / a0) / math.log((1 - s0) / (1 - s1))
        assert default_alpha(far, fam) == pytest.approx(a1 * 10 ** slope, rel=1e-9)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        default_alpha(1.0)


def test_espn_method_alpha_scale_and_explicit_alpha():
    assert get("espn", {"alpha": 0.0, "alpha_scale": 3.0}).alpha(0.95) == pytest.approx(3 * 6e-5)
    assert get("espn", {"alpha": 0.0, "alpha_scale": 1.0, "alpha_family": "cifar"}).alpha(0.995) == \
        pytest.approx(5.5e-4)
    assert get("espn", {"alpha": 0.07}).alpha(0.9) == 0.07


def espn_ctx(data, **kw):
    pre = TrainHparams(epochs=4, batch_size=16, lr=0.05, weight_decay=1e-4, milestones=[2])
    ft = TrainHparams(epochs=5, batch_size=16, lr=0.01, weight_decay=0.0)
    return make_ctx(data, lambda: mlp(), ft=ft, pre=pre, **kw)


def test_espn_finetune_mask_and_weights_come_from_the_search_and_finetune_hparams(data, monkeypatch):
    ctx = espn_ctx(data)
    dense = mlp(0)
    opts = {"alpha": 0.05, "max_search_epochs": 6, "search_lr": 0.05, "search_batch_size": 8}
    meth = get("espn", opts)
    pruned = meth.prune(dense, 0.8, ctx)
    twin = copy.deepcopy(dense)  # independent run of the documented search on the dense weights
    search(twin, data, 0.8, alpha=0.05, lr=0.05, max_epochs=6, batch_size=8, seed=0, check_every="step")
    for n in ("1", "3"):
        mask = M.current_mask(dict(pruned.named_modules())[n])
        assert torch.equal(mask, M.current_mask(dict(twin.named_modules())[n]))
        torch.testing.assert_close(M.raw_weight(dict(pruned.named_modules())[n]),
                                   M.raw_weight(dict(twin.named_modules())[n]))
        torch.testing.assert_close(dict(pruned.named_modules())[n].bias, dict(twin.named_modules())[n].bias)
    spy = TrainSpy()
    monkeypatch.setattr(espn_mod, "train", spy)
    meth.finetune(pruned, ctx)
    hp = spy.calls[0]["hp"]
    assert (hp.lr, hp.weight_decay, hp.momentum, hp.schedule, hp.milestones, hp.gamma, hp.epochs) == \
        (1e-3, 5e-4, 0.9, "multistep", [3], 0.1, 5)
    get("espn", {"finetune_lr": 0.0}).finetune(pruned, ctx)
    assert spy.calls[1]["hp"] == ctx.finetune


def test_espn_rewind_applies_the_searched_mask_to_the_rewind_point_and_retrains(data, monkeypatch):
    torch.manual_seed(0)
    warm = mlp(5)
    rewind = copy.deepcopy(warm.state_dict())
    ctx = espn_ctx(data, rewind_state=rewind)
    dense = mlp(1)  # a different "trained" model: the rewind point is what counts
    meth = get("espn-rewind", {"alpha": 0.05, "max_search_epochs": 6, "warmup_epochs": 1})
    pruned = meth.prune(dense, 0.8, ctx)
    twin = copy.deepcopy(warm)
    search(twin, data, 0.8, alpha=0.05, lr=0.05, max_epochs=6, batch_size=16, seed=0, check_every="step")
    for n in ("1", "3"):
        m = dict(pruned.named_modules())[n]
        mask = M.current_mask(m)
        assert torch.equal(mask, M.current_mask(dict(twin.named_modules())[n]))
        torch.testing.assert_close(M.raw_weight(m), rewind[f"{n}.weight"] * mask)
    spy = TrainSpy()
    monkeypatch.setattr(espn_mod, "train", spy)
    meth.finetune(pruned, ctx)
    get("espn-rewind", {"retrain_epochs": 7}).finetune(pruned, ctx)
    a, b = spy.calls[0]["hp"], spy.calls[1]["hp"]
    assert (a.epochs, a.lr, a.weight_decay, a.milestones, a.schedule) == (3, 0.05, 1e-4, [], "multistep")
    assert b.epochs == 7


def test_espn_rewind_without_a_rewind_point_warms_up_a_fresh_model(data, monkeypatch):
    ctx = espn_ctx(data, seed=2)
    spy = TrainSpy()
    monkeypatch.setattr(espn_mod, "train", spy)
    meth = get("espn-rewind", {"alpha": 0.05, "max_search_epochs": 1, "warmup_epochs": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = meth.prune(mlp(0), 0.5, ctx)
    hp = spy.calls[0]["hp"]
    assert (hp.epochs, hp.schedule, hp.warmup_epochs, hp.lr) == (2, "constant", 0.0, 0.05)
    warm = spy.calls[0]["model"]
    for n in ("1", "3"):
        m = dict(pruned.named_modules())[n]
        torch.testing.assert_close(M.raw_weight(m), warm.state_dict()[f"{n}.parametrizations.weight.original"])
    torch.manual_seed(2)
    fresh = mlp()
    assert not torch.equal(fresh[1].weight, mlp(0)[1].weight)


# --- SNIP / GraSP / SynFlow through the method ------------------------------------------------


def test_snip_method_scores_a_fresh_seeded_init_on_one_batch(data, monkeypatch):
    ctx = espn_ctx(data, seed=7)
    pruned = get("snip", {"batch_size": 20}).prune(mlp(0), 0.75, ctx)
    torch.manual_seed(7)
    fresh = mlp()
    x, y = ctx.batch(20)
    ws = [fresh[1].weight, fresh[3].weight]
    grads = torch.autograd.grad(F.cross_entropy(fresh(x), y), ws)
    sc = {"1": (grads[0] * ws[0]).abs().detach(), "3": (grads[1] * ws[1]).abs().detach()}
    want = top_k_mask(sc, M.keep_count(240, 0.75))
    got = M.get_masks(pruned)
    assert all(torch.equal(got[n], want[n]) for n in want)
    torch.testing.assert_close(M.raw_weight(pruned[1]), fresh[1].weight.detach() * want["1"])
    spy = TrainSpy()
    monkeypatch.setattr(snip_mod, "train", spy)
    get("snip").finetune(pruned, ctx)
    get("snip", {"train_budget": "finetune"}).finetune(pruned, ctx)
    get("snip", {"from_init": False}).finetune(pruned, ctx)
    assert [c["hp"] for c in spy.calls] == [ctx.pretrain, ctx.finetune, ctx.finetune]
    with pytest.raises(ValueError, match="train_budget"):
        get("snip", {"train_budget": "x"}).finetune(pruned, ctx)
    dense = mlp(0)
    from_dense = get("snip", {"from_init": False, "batch_size": 20}).prune(dense, 0.75, ctx)
    torch.testing.assert_close(M.raw_weight(from_dense[3]), dense[3].weight.detach() * M.current_mask(from_dense[3]))


def test_class_balanced_batch_takes_per_class_samples_of_every_class(data):
    x, y = class_balanced_batch(data.train, 3, seed=0)
    assert sorted(torch.bincount(y, minlength=4).tolist()) == [3, 3, 3, 3]
    for xi, yi in zip(x, y):
        j = (data.train.x == xi).flatten(1).all(1).nonzero().flatten()
        assert len(j) == 1 and data.train.y[j] == yi
    x2, _ = class_balanced_batch(data.train, 3, seed=1)
    assert not torch.equal(x, x2)


def fd_grasp(net, x, y, temperature):
    ws = [net[1].weight, net[2].weight]

    def grads(ps):
        h = x.flatten(1).double() @ ps[0].T
        return torch.autograd.grad(F.cross_entropy(h @ ps[1].T / temperature, y), ps)

    params = [w.detach().double().requires_grad_(True) for w in ws]
    g = [t.detach() for t in grads(params)]
    eps = 1e-5
    plus = [(p + eps * gi).detach().requires_grad_() for p, gi in zip(params, g)]
    minus = [(p - eps * gi).detach().requires_grad_() for p, gi in zip(params, g)]
    hg = [(a - b) / (2 * eps) for a, b in zip(grads(plus), grads(minus))]
    return {"1": -params[0].detach() * hg[0], "2": -params[1].detach() * hg[1]}


def test_grasp_reinitialises_the_classifier_with_seeded_xavier_normal(data):
    torch.manual_seed(0)
    net = linear2().double()
    x, y = class_balanced_batch(data.train, 4, 0)
    x = x.double()
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        ref[2].weight.copy_(torch.randn(ref[2].weight.shape, generator=g) * math.sqrt(2.0 / (6 + 4)))
    want = fd_grasp(ref, x, y, 5.0)
    got = grasp_scores(net, (x, y), temperature=5.0, reinit_classifier=True, seed=11)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=1e-4, atol=1e-10)
    assert got["1"].abs().sum() > 0
    assert torch.equal(net[2].weight, copy.deepcopy(net)[2].weight)  # the model itself is untouched


def test_grasp_method_removes_the_highest_scores_of_a_fresh_init(data):
    ctx = espn_ctx(data, seed=4)
    ctx.build_model = linear2
    meth = get("grasp", {"samples_per_class": 4, "temperature": 5.0})
    pruned = meth.prune(mlp(0), 0.5, ctx)
    torch.manual_seed(4)
    fresh = linear2()
    x, y = class_balanced_batch(data.train, 4, 4)
    sc = grasp_scores(fresh, (x, y), temperature=5.0, reinit_classifier=True, seed=4)
    ref = fd_grasp(_reinit(fresh, 4), x.double(), y, 5.0)
    for n in sc:
        torch.testing.assert_close(sc[n].double(), ref[n], rtol=2e-3, atol=1e-9)
    want = top_k_mask({n: -v for n, v in sc.items()}, M.keep_count(16 * 6 + 6 * 4, 0.5))
    got = M.get_masks(pruned)
    assert all(torch.equal(got[n], want[n]) for n in want)


def _reinit(net, seed):
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = ref[2].weight
        w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / (w.shape[1] + w.shape[0])))
    return ref


def synflow_reference(w1, w2, sparsity, rounds):
    """Iterative SynFlow for x -> W2 W1 x by closed form: R = 1^T |W2'| |W1'| 1 with W' masked."""
    a1, a2 = w1.abs().double(), w2.abs().double()
    m1, m2 = torch.ones_like(a1, dtype=torch.bool), torch.ones_like(a2, dtype=torch.bool)
    n = a1.numel() + a2.numel()
    for k in range(rounds):
        b1, b2 = a1 * m1, a2 * m2
        s1, s2 = b1 * b2.sum(0)[:, None], b2 * b1.sum(1)[None, :]
        s1 = torch.where(m1, s1, torch.full_like(s1, -math.inf))
        s2 = torch.where(m2, s2, torch.full_like(s2, -math.inf))
        sp = 1 - (1 - sparsity) ** ((k + 1) / rounds) if k < rounds - 1 else sparsity
        masks = top_k_mask({"1": s1, "2": s2}, M.keep_count(n, sp))
        m1, m2 = masks["1"], masks["2"]
    return {"1": m1, "2": m2}


def test_synflow_method_matches_the_iterative_closed_form(data):
    ctx = espn_ctx(data, seed=6)
    ctx.build_model = linear2
    pruned = get("synflow", {"rounds": 4}).prune(mlp(0), 0.9, ctx)
    torch.manual_seed(6)
    fresh = linear2()
    want = synflow_reference(fresh[1].weight.detach(), fresh[2].weight.detach(), 0.9, 4)
    got = M.get_masks(pruned)
    assert kept(got) == M.keep_count(120, 0.9)
    assert all(torch.equal(got[n], want[n]) for n in want)
    one = synflow_reference(fresh[1].weight.detach(), fresh[2].weight.detach(), 0.9, 1)
    assert any(not torch.equal(one[n], want[n]) for n in want)  # the rounds matter on this net


# --- IMP ------------------------------------------------------------------------------------


def test_imp_level_masks_come_from_the_previous_levels_trained_weights(data, monkeypatch):
    ctx = espn_ctx(data)
    torch.manual_seed(0)
    dense = mlp(0)
    rec = RecordAt(2)
    train(dense, data, TrainHparams(epochs=2, batch_size=16, lr=0.05), callbacks=[rec], progress=False)
    ctx.rewind_state = rec.state
    snaps = []
    spy = TrainSpy(after=lambda m: snaps.append(copy.deepcopy(m.state_dict())))
    monkeypatch.setattr(imp_mod, "train", spy)
    meth = get("imp", {"level_epochs": 2})
    pruned = meth.prune(dense, 0.36, ctx)  # two levels: 20%, then 20% of the rest
    assert len(spy.calls) == 1  # level 1 trained inside prune; the last level is left to finetune
    hp = spy.calls[0]["hp"]
    assert (hp.epochs, hp.lr, hp.weight_decay, hp.milestones) == (2, 0.05, 1e-4, [])
    n = 240
    w0 = {k: dense[int(k)].weight.detach().abs() for k in ("1", "3")}
    m1 = top_k_mask(w0, M.keep_count(n, 0.2))
    lvl1 = {k: snaps[0][f"{k}.parametrizations.weight.original"].abs() for k in ("1", "3")}
    assert all(torch.equal(lvl1[k][~m1[k]], torch.zeros_like(lvl1[k][~m1[k]])) for k in m1)
    m2 = top_k_mask({k: torch.where(m1[k], lvl1[k], torch.full_like(lvl1[k], -1.0)) for k in m1},
                    M.keep_count(n, 0.36))
    from_dense = top_k_mask(w0, M.keep_count(n, 0.36))
    assert any(not torch.equal(m2[k], from_dense[k]) for k in m2)  # otherwise the test could not tell
    got = M.get_masks(pruned)
    assert all(torch.equal(got[k], m2[k]) for k in m2)
    for k in ("1", "3"):  # survivors rewound to the rewind point
        torch.testing.assert_close(M.raw_weight(pruned[int(k)]), rec.state[f"{k}.weight"] * m2[k])
    meth.finetune(pruned, ctx)
    assert spy.calls[1]["hp"] == hp and spy.calls[1]["model"] is pruned


def test_imp_without_a_rewind_point_trains_its_own_level_zero(data, monkeypatch):
    ctx = espn_ctx(data, seed=3)
    snaps = []
    spy = TrainSpy(after=lambda m: snaps.append(copy.deepcopy(m.state_dict())))
    monkeypatch.setattr(imp_mod, "train", spy)
    torch.manual_seed(3)
    init = copy.deepcopy(mlp().state_dict())
    pruned = get("imp", {"level_epochs": 1, "rewind_iteration": 0}).prune(mlp(0), 0.2, ctx)
    assert len(spy.calls) == 1 and isinstance(spy.calls[0]["callbacks"][0], RecordAt)
    w = {k: snaps[0][f"{k}.weight"].abs() for k in ("1", "3")}
    want = top_k_mask(w, M.keep_count(240, 0.2))
    got = M.get_masks(pruned)
    assert all(torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(M.raw_weight(pruned[1]), init["1.weight"] * want["1"])  # rewound to init


# --- GMP --------------------------------------------------------------------------------------


class Before(Callback):
    """Runs before GMP's callback: records the weights GMP's magnitude update sees."""

    def __init__(self):
        self.w = []

    def after_step(self, trainer):
        self.w.append({n: M.raw_weight(m).detach().clone() for n, m in M.prunable_modules(trainer.model).items()})


class After(Callback):
    def __init__(self):
        self.masks = []

    def after_step(self, trainer):
        self.masks.append(M.get_masks(trainer.model))


def test_gmp_follows_the_cubic_schedule_by_magnitude_in_finetuning(data):
    ctx = espn_ctx(data)  # 5 epochs x 3 steps (48 training samples, batch 16) = 15 steps
    meth = get("gmp", {"start_fraction": 0.2, "end_fraction": 0.8, "updates": 3})
    assert meth.schedule(15) == (3, 12, 3)
    net = meth.prune(mlp(0), 0.9, ctx)
    assert kept(M.get_masks(net)) == 240
    cbs = meth.callbacks(net, ctx)
    pre, post = Before(), After()
    train(net, data, ctx.finetune, callbacks=[pre] + cbs + [post], progress=False)
    for i, masks in enumerate(post.masks):
        t = i + 1
        prev = post.masks[i - 1] if i else {n: torch.ones_like(v) for n, v in masks.items()}
        if t in (3, 6, 9, 12):
            s = cubic_sparsity(t, 0.9, 3, 12)
            assert kept(masks) == (M.keep_count(240, s) if s > 0 else 240), t
            if s > 0:  # top-k of |w| (after this step's update) among the survivors
                sc = {n: torch.where(prev[n], pre.w[i][n].abs(), torch.full_like(pre.w[i][n], -1.0))
                      for n in masks}
                want = top_k_mask(sc, M.keep_count(240, s))
                assert all(torch.equal(masks[n], want[n]) for n in masks), t
        else:
            assert all(torch.equal(masks[n], prev[n]) for n in masks), t
    assert kept(post.masks[-1]) == M.keep_count(240, 0.9)


def test_gmp_finetune_reports_only_epochs_at_final_sparsity(data, monkeypatch):
    ctx = espn_ctx(data)
    meth = get("gmp", {"start_fraction": 0.0, "end_fraction": 0.5, "updates": 2})
    net = meth.prune(mlp(0), 0.8, ctx)
    res = meth.finetune(net, ctx)
    end = meth.schedule(15)[1]
    h = [e for e in res.history if e["step"] >= end]
    assert len(h) < len(res.history)
    assert res.final_test_acc == h[-1]["test_acc"] and res.best_test_acc == max(e["test_acc"] for e in h)
    assert res.best_val_acc == max(e["val_acc"] for e in h)
    with pytest.raises(ValueError, match="prune"):
        meth.callbacks(mlp(0), ctx)


# --- magnitude and random ---------------------------------------------------------------------


def test_magnitude_method_keeps_the_globally_largest_weights():
    ctx = make_ctx(tiny_data(shape=(1, 4, 4), classes=4), mlp)
    dense = mlp(0)
    pruned = get("magnitude").prune(dense, 0.7, ctx)
    want = top_k_mask({"1": dense[1].weight.detach().abs(), "3": dense[3].weight.detach().abs()},
                      M.keep_count(240, 0.7))
    got = M.get_masks(pruned)
    assert all(torch.equal(got[n], want[n]) for n in want)
    layer = M.get_masks(get("magnitude", {"scope": "layer", "include_classifier": False}).prune(dense, 0.5, ctx))
    assert list(layer) == ["1"]
    assert torch.equal(layer["1"], top_k_mask({"1": dense[1].weight.detach().abs()}, 96)["1"])
    assert not hasattr(dense[1], "parametrizations")


def test_random_method_is_seeded_uniform_per_layer():
    d = tiny_data(shape=(1, 4, 4), classes=4)
    dense = mlp(0)
    a = M.get_masks(get("random").prune(dense, 0.75, make_ctx(d, mlp, seed=1)))
    b = M.get_masks(get("random").prune(dense, 0.75, make_ctx(d, mlp, seed=1)))
    c = M.get_masks(get("random").prune(dense, 0.75, make_ctx(d, mlp, seed=2)))
    assert [int(a[n].sum()) for n in ("1", "3")] == [48, 12]  # every layer at the target
    assert all(torch.equal(a[n], b[n]) for n in a) and any(not torch.equal(a[n], c[n]) for n in a)
    g = M.get_masks(get("random", {"scope": "global"}).prune(dense, 0.75, make_ctx(d, mlp, seed=1)))
    assert kept(g) == 60
    # not magnitude in disguise
    mag = M.get_masks(get("magnitude", {"scope": "layer"}).prune(dense, 0.75, make_ctx(d, mlp)))
    assert not torch.equal(a["1"], mag["1"])
    # uniform: over many seeds each position of a layer is kept about 25% of the time
    freq = torch.stack([M.random_masks(dense, 0.75, generator=torch.Generator().manual_seed(s))["3"].float()
                        for s in range(200)]).mean(0)
    assert freq.min() > 0.1 and freq.max() < 0.4


# --- JSV ----------------------------------------------------------------------------------------


def test_jsv_statistics_match_per_sample_svds():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(4, 5)
    out = jacobian_singular_values(net, x, chunk_size=3)
    svs = []
    for i in range(4):
        j = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0)).squeeze(0), x[i])
        svs.append(torch.linalg.svdvals(j))
    svs = torch.stack(svs)
    torch.testing.assert_close(out["values"], svs.flatten(), rtol=1e-4, atol=1e-6)
    assert out["std"] == pytest.approx(svs.flatten().std().item(), rel=1e-4)
    assert out["cond"] == pytest.approx((svs.max(1).values / svs.min(1).values).mean().item(), rel=1e-4)
    assert out["mean"] == pytest.approx(svs.mean().item(), rel=1e-4)
    assert out["max"] == pytest.approx(svs.max().item(), rel=1e-4)
    assert out["min"] == pytest.approx(svs.min().item(), rel=1e-4)
    one = jacobian_singular_values(net, x[:1], chunk_size=None)
    assert one["cond"] == pytest.approx((svs[0].max() / svs[0].min()).item(), rel=1e-4)
    single = jacobian_singular_values(nn.Linear(4, 1), torch.randn(1, 4))
    assert single["std"] == 0.0 and single["values"].numel() == 1
    for bad in (torch.zeros(3), [1.0, 2.0]):
        with pytest.raises(ValueError, match="non-empty batch"):
            jacobian_singular_values(net, bad)
