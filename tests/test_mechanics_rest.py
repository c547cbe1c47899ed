"""Mechanics of the methods mutated in the second mutation round (tests/MUTATION.md): options that
must reach the code they name, the shared ``finetune``/``callbacks``/``progress`` contract, GMP's
schedule edges, network slimming's scopes and gamma set, the latency-aware wrapper and the sparse
export's dense-but-masked and CSR-inference paths."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import prunekit.methods.espn as espn_mod
import prunekit.methods.latency_l1 as lat_mod
import prunekit.methods.slimming as slim_mod
from prunekit.methods import get
from prunekit.methods.base import PruningMethod
from prunekit.methods.gmp import only_at_final_sparsity
from prunekit.methods.slimming import GammaL1, SlimmingHparams, gamma_scores
from prunekit.methods.tpp_schedule import groups_of
from prunekit.sparse import masks as M
from prunekit.foundations.io import CheckpointError, load_tensors, save_tensors
from prunekit.sparse.export import (SparseLinear, decode_csr, encode_csr, file_size, load_into, load_sparse, save_sparse,
                                    to_sparse_linear)
from prunekit.structured import slim as structured_slim
from prunekit.training import Callback, TrainHparams
from test_mechanics_common import ConvBN, TrainSpy, make_ctx, tiny_data


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


class TwoConv(nn.Module):
    """conv1(1->4) -> BN -> conv2(4->6) -> BN -> fc on 1x6x6: two channel groups with one BN each."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).flatten(1))


class Residual(nn.Module):
    """Two conv+BN branches summed: one channel group with two BNs."""

    def __init__(self):
        super().__init__()
        self.a, self.bna = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bnb = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bna(self.a(x)) + self.bnb(self.b(x))).flatten(1))


@pytest.fixture(scope="module")
def data4():
    return tiny_data(n_train=48, n_test=16, classes=4, shape=(1, 4, 4))


# --- the finetune contract: callbacks(model, ctx) reach train(), progress is respected ----------


class Counter(Callback):
    def __init__(self):
        self.steps = 0

    def after_step(self, trainer):
        self.steps += 1


def with_callbacks(cls):
    class WithCallbacks(cls):
        def callbacks(self, model, ctx):
            self.seen = (model, ctx)
            self.cb = Counter()
            return [self.cb]

    return WithCallbacks


def _pruned_for(name, data4, opts=None):
    ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01),
                   pre=TrainHparams(epochs=2, batch_size=16, lr=0.01))
    meth_cls = type(get(name))
    meth = with_callbacks(meth_cls)(meth_cls.Hparams(**(opts or {})))
    return meth, M.apply_masks(mlp(), M.magnitude_masks(mlp(), 0.5)), ctx


@pytest.mark.parametrize("name,opts", [("magnitude", None), ("espn", None), ("espn", {"finetune_lr": 0.0}),
                                       ("espn-rewind", None), ("snip", None), ("synflow", None)])
def test_finetune_trains_with_the_methods_callbacks_on_that_model(name, opts, data4):
    meth, net, ctx = _pruned_for(name, data4, opts)
    meth.finetune(net, ctx)
    assert meth.seen[0] is net and meth.seen[1] is ctx
    assert meth.cb.steps > 0


@pytest.mark.parametrize("name", ["magnitude", "espn", "espn-rewind", "snip", "scratch", "gmp", "slimming"])
def test_finetune_is_silent_when_the_context_says_no_progress(name, data4, capsys):
    if name == "scratch":
        ctx = make_ctx(tiny_data(), ConvBN, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01))
        meth, net = get("scratch"), ConvBN()
    elif name == "gmp":
        ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01))
        meth = get("gmp")
        net = meth.prune(mlp(), 0.5, ctx)
    elif name == "slimming":  # its sparsity phase trains inside prune()
        ctx = make_ctx(tiny_data(), TwoConv)
        get("slimming", {"epochs": 1}).prune(two_conv(), 0.5, ctx)
        out = capsys.readouterr()
        assert out.err == "" and out.out == ""
        return
    else:
        meth, net, ctx = _pruned_for(name, data4)
    assert ctx.progress is False
    meth.finetune(net, ctx)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_espn_rewind_retrains_at_least_one_epoch_when_warmup_uses_the_whole_budget(data4, monkeypatch):
    spy = TrainSpy()
    monkeypatch.setattr(espn_mod, "train", spy)
    net = M.apply_masks(mlp(), M.magnitude_masks(mlp(), 0.5))
    for pre_epochs, warm, want in ((2, 1, 1), (3, 3, 1), (5, 2, 3)):
        ctx = make_ctx(data4, mlp, pre=TrainHparams(epochs=pre_epochs, batch_size=16, lr=0.01))
        get("espn-rewind", {"warmup_epochs": warm}).finetune(net, ctx)
        assert spy.calls[-1]["hp"].epochs == want


# --- Context.batch -----------------------------------------------------------------------------


def test_context_batch_is_the_seeded_permutation_prefix():
    data = tiny_data(n_train=200, shape=(1, 4, 4))
    ctx = make_ctx(data, mlp, seed=3)
    x, y = ctx.batch()
    assert len(x) == 128  # documented default
    for seed, n in ((None, 20), (9, 20)):
        g = torch.Generator().manual_seed(3 if seed is None else seed)
        want_x, want_y = data.train.get_batch(torch.randperm(200, generator=g)[:n])
        got_x, got_y = ctx.batch(n, seed=seed)
        assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert not torch.equal(ctx.batch(20, seed=9)[0], ctx.batch(20)[0])


# --- include_classifier reaches the at-init scorers and GMP ------------------------------------


@pytest.mark.parametrize("name", ["snip", "synflow", "gmp"])
def test_include_classifier_false_leaves_the_classifier_dense(name, data4):
    ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=2, batch_size=16, lr=0.01))
    opts = {"include_classifier": False} | ({"rounds": 5} if name == "synflow" else {})
    if name == "snip":
        opts["batch_size"] = 16
    meth = get(name, opts)
    net = meth.prune(mlp(), 0.8, ctx)
    if name == "gmp":
        meth.finetune(net, ctx)
    masks = M.get_masks(net)
    assert list(masks) == ["1"]
    assert int(masks["1"].sum()) == M.keep_count(192, 0.8)
    assert not hasattr(net[3], "parametrizations")


# --- GMP schedule edges -------------------------------------------------------------------------


def test_gmp_schedule_accepts_the_closed_interval_and_rejects_outside():
    assert get("gmp", {"start_fraction": 0.5, "end_fraction": 0.5}).schedule(10) == (5, 6, 1)
    assert get("gmp", {"start_fraction": 0.0, "end_fraction": 1.0, "updates": 3}).schedule(30) == (0, 30, 10)
    assert get("gmp", {"start_fraction": 0.0, "end_fraction": 1.0, "updates": 3}).schedule(10) == (0, 10, 3)
    assert get("gmp", {"start_fraction": 0.0, "end_fraction": 0.5, "updates": 1}).schedule(20) == (0, 10, 10)
    assert get("gmp", {"start_fraction": 0.0, "end_fraction": 0.5, "updates": 20}).schedule(20)[2] == 1
    for bad in ({"end_fraction": 1.5}, {"start_fraction": 0.6, "end_fraction": 0.5}):
        with pytest.raises(ValueError, match=r"^need 0 <= start_fraction <= end_fraction <= 1$"):
            get("gmp", bad).schedule(10)


def test_gmp_callbacks_count_partial_batches_and_finetune_forgets_the_model(data4):
    ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=5, batch_size=10, lr=0.01))  # 48 samples: 5 steps/epoch
    meth = get("gmp", {"start_fraction": 0.0, "end_fraction": 0.8, "updates": 4})
    net = meth.prune(mlp(), 0.7, ctx)
    (cb,) = meth.callbacks(net, ctx)
    spe = math.ceil(48 / 10)
    assert (cb.start, cb.end, cb.every) == meth.schedule(spe * 5)
    meth.finetune(net, ctx)
    with pytest.raises(ValueError, match=r"^gmp: callbacks\(\) needs a model returned by prune\(\)$"):
        meth.callbacks(net, ctx)


def test_only_at_final_sparsity_counts_the_epoch_ending_at_the_end_step():
    hist = [{"step": 3, "test_acc": 0.9, "val_acc": 0.95}, {"step": 9, "test_acc": 0.8, "val_acc": 0.7},
            {"step": 12, "test_acc": 0.5, "val_acc": 0.6}]
    res = only_at_final_sparsity(SimpleNamespace(history=copy.deepcopy(hist)), 9)
    assert (res.final_test_acc, res.best_test_acc, res.best_val_acc, res.test_at_best_val) == (0.5, 0.8, 0.7, 0.8)
    res = only_at_final_sparsity(SimpleNamespace(history=[{"step": 12}]), 9)
    assert (res.final_test_acc, res.best_test_acc, res.best_val_acc, res.test_at_best_val) == (None,) * 4


# --- network slimming ----------------------------------------------------------------------------


def two_conv(seed=0):
    torch.manual_seed(seed)
    net = TwoConv()
    with torch.no_grad():
        net.bn1.weight.copy_(torch.tensor([0.01, 0.02, 0.9, 0.8]))  # the globally smallest gammas
        net.bn2.weight.copy_(torch.tensor([0.5, 0.6, 0.7, 0.4, 0.3, 0.95]))
    return net


def test_slimming_scopes_and_the_gamma_set_of_the_sparsity_phase(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, TwoConv)
    spy = TrainSpy()
    monkeypatch.setattr(slim_mod, "train", spy)
    dense = two_conv()
    g = dense.bn1.weight.detach().clone(), dense.bn2.weight.detach().clone()
    glob = get("slimming", {"epochs": 0}).prune(dense, 0.5, ctx)
    # one threshold over all 10 gammas: the 5 smallest are bn1's 0.01, 0.02 and bn2's 0.3, 0.4, 0.5
    assert (glob.conv1.out_channels, glob.conv2.out_channels) == (2, 3)
    torch.testing.assert_close(glob.bn1.weight, g[0][[2, 3]])
    layer = get("slimming", {"epochs": 0, "scope": "layer"}).prune(dense, 0.5, ctx)
    assert (layer.conv1.out_channels, layer.conv2.out_channels) == (2, 3)
    torch.testing.assert_close(layer.bn2.weight, g[1][[1, 2, 5]])
    torch.testing.assert_close(glob.bn2.weight, g[1][[1, 2, 5]])
    with torch.no_grad():
        dense.bn1.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))  # global now takes 3 of bn1
    glob = get("slimming", {"epochs": 0}).prune(dense, 0.5, ctx)
    layer = get("slimming", {"epochs": 0, "scope": "layer"}).prune(dense, 0.5, ctx)
    assert (glob.conv1.out_channels, glob.conv2.out_channels) == (1, 4)
    assert (layer.conv1.out_channels, layer.conv2.out_channels) == (2, 3)
    assert spy.calls == []
    get("slimming", {"epochs": 1, "s": 0.01}).prune(dense, 0.5, ctx)
    (call,) = spy.calls
    (cb,) = call["callbacks"]
    assert isinstance(cb, GammaL1)
    assert {id(p) for p in cb.gammas} == {id(call["model"].bn1.weight), id(call["model"].bn2.weight)}
    assert not call["kw"].get("eval_test", True)  # the sparsity phase never looks at the test set


def test_slimming_scope_is_validated():
    assert SlimmingHparams(scope="layer").scope == "layer"
    with pytest.raises(ValueError, match="scope must be 'global' or 'layer'"):
        SlimmingHparams(scope="channel")


def test_gamma_scores_average_the_bns_of_a_group():
    net = Residual()
    with torch.no_grad():
        net.bna.weight.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
        net.bnb.weight.copy_(torch.tensor([0.3, 0.2, -0.1, 0.0]))
    groups = [g for g in groups_of(net, torch.zeros(2, 1, 6, 6)) if g.norm_layers]
    (grp,) = [g for g in groups if len(g.norm_layers) == 2]
    s = gamma_scores(net, [grp])[grp.id]
    torch.testing.assert_close(s, (net.bna.weight.abs() + net.bnb.weight.abs()).detach() / 2)


# --- L1 filter options reach slim() --------------------------------------------------------------


def test_l1_filter_options_reach_the_slimming_engine():
    data = tiny_data()
    dense = two_conv()
    x = data.example_inputs(2)
    ctx = make_ctx(data, TwoConv, seed=3)
    widths = lambda m: (m.conv1.out_channels, m.conv2.out_channels)  # noqa: E731
    assert widths(get("l1").prune(dense, 0.5, ctx)) == (2, 3)
    assert widths(get("l1", {"skip": ["conv1"]}).prune(dense, 0.5, ctx)) == (4, 3)
    assert widths(get("l1", {"ignore": ["conv2"]}).prune(dense, 0.5, ctx))[1] == 6
    assert widths(get("l1", {"layer_ratios": {"conv2": 0.2}}).prune(dense, 0.5, ctx)) == (2, 4)
    got = get("l1", {"mode": "global", "criterion": "l1"}).prune(dense, 0.5, ctx)
    assert widths(got) == widths(structured_slim(dense, x, 0.5, criterion="l1", mode="global"))
    for seed in (3, 4):
        ctx = make_ctx(data, TwoConv, seed=seed)
        got = get("l1", {"criterion": "random"}).prune(dense, 0.5, ctx)
        want = structured_slim(dense, x, 0.5, criterion="random", seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))
    a = get("l1", {"criterion": "random"}).prune(dense, 0.5, make_ctx(data, TwoConv, seed=3))
    b = get("l1", {"criterion": "random"}).prune(dense, 0.5, make_ctx(data, TwoConv, seed=4))
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_l1_filter_global_mode_differs_from_uniform():
    data = tiny_data()
    dense = two_conv()
    with torch.no_grad():  # scores are divided by their group's mean before the global ranking
        for conv, scales in ((dense.conv1, [0.01, 1.0, 1.0, 1.0]), (dense.conv2, [1.0] * 6)):
            for i, s in enumerate(scales):
                conv.weight[i] = s * torch.sign(torch.randn_like(conv.weight[i]))
    ctx = make_ctx(data, TwoConv)
    uni = get("l1", {"criterion": "l1"}).prune(dense, 0.5, ctx)
    glob = get("l1", {"criterion": "l1", "mode": "global"}).prune(dense, 0.5, ctx)
    assert (uni.conv1.out_channels, uni.conv2.out_channels) == (2, 3)
    assert (glob.conv1.out_channels, glob.conv2.out_channels) == (3, 2)  # 1 of conv1, 4 of conv2


# --- latency-aware L1: what reaches latency_slim ------------------------------------------------


def test_latency_l1_passes_speedup_inputs_and_options_and_restores_threads(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, ConvBN)
    calls = []
    before = torch.get_num_threads()

    def fake(model, x, speedup, **kw):
        calls.append((model, x, speedup, kw, model.training))
        torch.set_num_threads(before + 1)
        return "slim"

    monkeypatch.setattr(lat_mod, "latency_slim", fake)
    dense = ConvBN().train()
    opts = {"criterion": "l2", "backend": "onnxruntime", "batch_size": 3, "threads": 2, "solver": "greedy",
            "max_ratio": 0.5, "cost": "share"}
    assert get("l1-latency", opts).prune(dense, 0.75, ctx) == "slim"
    assert torch.get_num_threads() == before
    model, x, speedup, kw, training = calls[0]
    assert model is not dense and not training and dense.training
    assert torch.equal(x, data.train.x[:3])
    assert speedup == pytest.approx(4.0)
    assert kw == {"criterion": "l2", "backend": "onnxruntime", "threads": 2, "solver": "greedy", "max_ratio": 0.5,
                  "cost": "share", "data": None}
    # the measured-loss cost gets a seeded labelled batch of data_samples training samples
    get("l1-latency", {**opts, "cost": "sensitivity", "data_samples": 5}).prune(dense, 0.75, ctx)
    bx, by = calls[1][3]["data"]
    want_x, want_y = ctx.batch(5)
    assert calls[1][3]["cost"] == "sensitivity" and torch.equal(bx, want_x) and torch.equal(by, want_y)
    calls.pop()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"fraction of latency removed, in \(0, 1\)"):
            get("l1-latency").prune(dense, bad, ctx)
    assert len(calls) == 1


# --- sparse export: dense-stored masks and CSR inference -----------------------------------------


def test_low_sparsity_weights_are_stored_dense_with_their_mask_bits(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    M.apply_masks(net, M.magnitude_masks(net, 0.3))
    with torch.no_grad():  # a kept entry that is exactly zero must stay kept
        idx = M.current_mask(net[1]).flatten().nonzero()[0]
        M.raw_weight(net[1]).view(-1)[idx] = 0.0
    path = tmp_path / "m.safetensors"
    info = save_sparse(path, net)
    assert info["sparse_tensors"] == 0 and info["bytes"] == file_size(path)
    sd, pats = load_sparse(path, with_patterns=True)
    for n in ("1", "3"):
        assert torch.equal(pats[f"{n}.weight"], M.current_mask(net[int(n)]))
        assert pats[f"{n}.weight"].shape == net[int(n)].weight.shape
    fresh = load_into(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)), path)
    for n, mask in M.get_masks(net).items():
        assert torch.equal(M.get_masks(fresh)[n], mask)
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(fresh(x), net(x))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 6))
        self.deep = nn.Sequential(nn.Sequential(nn.ReLU(), nn.Linear(6, 6)))  # "deep.0.1": two dots
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.deep(self.body(x)))


def test_to_sparse_linear_replaces_in_place_by_threshold():
    torch.manual_seed(0)
    net = Nested()
    with torch.no_grad():
        net.body[2].weight.view(-1)[:27] = 0.0  # 27 of 36 zero: 0.75 sparse
        net.head.weight.view(-1)[:3] = 0.0  # 0.25 sparse
    fast = to_sparse_linear(net, min_sparsity=0.75)
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in net.named_modules()]
    assert isinstance(fast.body[2], SparseLinear)
    assert isinstance(fast.body[0], nn.Linear) and isinstance(fast.head, nn.Linear)
    assert not fast.body[2].bias.requires_grad
    allf = to_sparse_linear(net)
    assert all(isinstance(m, SparseLinear) for m in (allf.body[0], allf.body[2], allf.deep[0][1], allf.head))
    assert allf.body[0].bias is None
    assert [n for n, _ in allf.named_modules()] == [n for n, _ in net.named_modules()]
    x = torch.randn(2, 3, 8)  # leading dimensions are kept
    torch.testing.assert_close(allf(x), net(x), rtol=1e-5, atol=1e-5)
    assert allf(x).shape == (2, 3, 2)
    assert isinstance(net.body[2], nn.Linear) and not isinstance(net.body[2], SparseLinear)


# --- Scratch options and architecture check --------------------------------------------------------


def test_scratch_honours_layer_selection_and_checks_the_fresh_architecture():
    from prunekit.methods.scratch import ScratchHparams

    data = tiny_data()
    dense = two_conv()
    ctx = make_ctx(data, TwoConv)
    slim = get("scratch", {"skip": ["conv1"]}).prune(dense, 0.5, ctx)
    assert (slim.conv1.out_channels, slim.conv2.out_channels) == (4, 3)
    slim = get("scratch", {"layers": ["conv1"]}).prune(dense, 0.5, ctx)
    assert (slim.conv1.out_channels, slim.conv2.out_channels) == (2, 6)
    with pytest.raises(RuntimeError, match=r"^ctx\.build_model\(\) gives a model whose channel groups differ from the pruned one's$"):
        get("scratch").prune(ConvBN(), 0.5, make_ctx(data, lambda: ConvBN(c=8)))
    with pytest.raises(ValueError, match="scratch budget must be 'pretrain' or 'finetune'"):
        ScratchHparams(budget="dense")


# --- sparse export: formats, sizes, bounds, tampered files ---------------------------------------


def _linear_kept(n_kept, shape=(5, 3)):
    net = nn.Sequential(nn.Linear(shape[1], shape[0]))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.view(-1)[:n_kept] = True
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(1, shape[0] * shape[1] + 1, dtype=torch.float32).view(shape))
    return M.apply_masks(net, {"0": mask})


def test_csr_is_chosen_exactly_when_its_parts_are_smaller_than_dense(tmp_path):
    from safetensors.torch import load_file

    for shape in ((5, 3), (3, 7), (2, 4)):  # (2, 4) with 4 kept: CSR 30 bytes against 32 dense
        numel = shape[0] * shape[1]
        for n in range(numel + 1):
            net = _linear_kept(n, shape)
            path = tmp_path / f"m{n}.safetensors"
            info = save_sparse(path, net)
            raw = load_file(path)
            parts = encode_csr(net[0].weight.detach(), M.current_mask(net[0]))
            csr = sum(t.numel() * t.element_size() for t in parts.values())
            dense = numel * 4
            assert ("0.weight::values" in raw) == (csr < dense), (shape, n)
            assert info["sparse_tensors"] == int(csr < dense)
            want_dense = numel * 4 + shape[0] * 4
            assert info["dense_bytes"] == want_dense
            assert info["ratio"] == pytest.approx(want_dense / info["bytes"])
            sd, pats = load_sparse(path, with_patterns=True)
            assert torch.equal(pats["0.weight"], M.current_mask(net[0])) and pats["0.weight"].dtype == torch.bool
            assert torch.equal(sd["0.weight"], net[0].weight.detach() + 0.0)


def test_index_dtypes_at_the_int16_boundary():
    for cols, want in ((32768, torch.int16), (32769, torch.int32)):  # largest column index cols - 1
        w = torch.ones(1, cols)
        p = torch.zeros(1, cols, dtype=torch.bool)
        p[0, -1] = True
        assert encode_csr(w, p)["col"].dtype == want, cols
    for kept, want in ((32767, torch.int16), (32768, torch.int32)):  # crow holds the kept count
        p = torch.zeros(2, 32768, dtype=torch.bool)
        p[0, 0] = True
        p[1, : kept - 1] = True
        parts = encode_csr(torch.ones(2, 32768), p)
        assert parts["crow"].dtype == want and int(parts["crow"][-1]) == kept


def test_conv_half_and_bare_module_round_trips(tmp_path):
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4, 3)).half()
    M.apply_masks(conv, M.magnitude_masks(conv, 0.95))
    save_sparse(tmp_path / "c.safetensors", conv)
    sd = load_sparse(tmp_path / "c.safetensors")
    for n in ("0", "2"):
        assert sd[f"{n}.weight"].dtype == torch.float16 and sd[f"{n}.weight"].shape == conv[int(n)].weight.shape
        assert torch.equal(sd[f"{n}.weight"], conv[int(n)].weight.detach() + 0.0)
    bare = nn.Linear(6, 4)
    M.apply_masks(bare, M.magnitude_masks(bare, 0.5))
    save_sparse(tmp_path / "b.safetensors", bare)
    assert set(load_sparse(tmp_path / "b.safetensors")) == {"weight", "bias"}
    fresh = load_into(nn.Linear(6, 4), tmp_path / "b.safetensors")
    assert torch.equal(M.current_mask(fresh), M.current_mask(bare))


class WithTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)  # 2-D, not prunable: stored dense, no pattern
        self.fc = nn.Linear(4, 3)


def test_unmasked_weights_use_their_non_zeros_and_get_no_masks(tmp_path):
    torch.manual_seed(0)
    net = WithTable()
    with torch.no_grad():
        net.fc.weight[:, :3] = 0.0  # 3 of 12 non-zero: stored as CSR of the non-zeros
    save_sparse(tmp_path / "u.safetensors", net)
    sd, pats = load_sparse(tmp_path / "u.safetensors", with_patterns=True)
    assert torch.equal(pats["fc.weight"], net.fc.weight != 0)
    assert torch.equal(sd["emb.weight"], net.emb.weight.detach())
    fresh = load_into(WithTable(), tmp_path / "u.safetensors")
    assert torch.equal(M.current_mask(fresh.fc), net.fc.weight != 0)  # the CSR pattern becomes the mask
    dense = nn.Sequential(nn.Linear(4, 3))  # no zeros: stored dense, nothing to re-attach
    save_sparse(tmp_path / "d.safetensors", dense)
    back = load_into(nn.Sequential(nn.Linear(4, 3)), tmp_path / "d.safetensors")
    assert not hasattr(back[0], "parametrizations")
    assert torch.equal(back[0].weight, dense[0].weight)


def test_load_into_a_masked_model_without_masks_and_shape_errors(tmp_path):
    torch.manual_seed(0)
    net = mlp(0)
    M.apply_masks(net, M.magnitude_masks(net, 0.9))
    path = tmp_path / "m.safetensors"
    save_sparse(path, net)
    target = mlp(1)
    M.apply_masks(target, M.magnitude_masks(target, 0.5))
    load_into(target, path)
    for n in ("1", "3"):
        assert torch.equal(M.current_mask(target[int(n)]), M.current_mask(net[int(n)]))
    plain = load_into(mlp(2), path, masks=False)
    assert not hasattr(plain[1], "parametrizations")
    torch.testing.assert_close(plain[1].weight, net[1].weight.detach())
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(15, 12), nn.ReLU(), nn.Linear(12, 4))
    with pytest.raises(CheckpointError, match=r"1\.weight has shape \(12, 16\), model has \(12, 15\)"):
        load_into(wrong, path)


def _tamper(src, dst, drop=(), meta_drop=(), meta_set=None):
    tensors, meta = load_tensors(src)
    meta = {k: v for k, v in meta.items() if k not in meta_drop and k != "checksums"} | (meta_set or {})
    save_tensors(dst, {k: v for k, v in tensors.items() if k not in drop}, meta)


def test_tampered_exports_name_what_is_wrong(tmp_path):
    net = mlp(0)
    M.apply_masks(net, {"1": M.magnitude_masks(net, 0.9)["1"], "3": torch.rand(4, 12) > 0.3})
    src = tmp_path / "m.safetensors"
    save_sparse(src, net)
    raw, _ = load_tensors(src)
    assert "1.weight::values" in raw and "3.weight::maskbits" in raw  # one CSR, one dense with mask bits
    _tamper(src, tmp_path / "a", drop=("1.weight::col",))
    with pytest.raises(CheckpointError, match=r"missing CSR part '1\.weight::col' of 1\.weight"):
        load_sparse(tmp_path / "a")
    _tamper(src, tmp_path / "b", drop=("3.weight::maskbits",))
    with pytest.raises(CheckpointError, match=r"missing mask bits of 3\.weight"):
        load_sparse(tmp_path / "b")
    _tamper(src, tmp_path / "c", meta_drop=("bitmasks",))  # files written before mask bits existed
    sd, pats = load_sparse(tmp_path / "c", with_patterns=True)
    assert set(pats) == {"1.weight"}
    _tamper(src, tmp_path / "d", meta_set={"format": "other-v0"})
    with pytest.raises(CheckpointError, match=r"not a prunekit sparse export \(format 'other-v0'\)"):
        load_sparse(tmp_path / "d")


def test_decode_csr_rejects_each_inconsistency_alone():
    good = encode_csr(torch.arange(1.0, 7.0).view(2, 3), torch.tensor([[True, False, True], [False, True, False]]))
    w, p = decode_csr(good, (2, 3))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 3.0], [0.0, 5.0, 0.0]]))
    bad_crows = (torch.tensor([0, 2, 3, 3]), torch.tensor([0, 2, 2]), torch.tensor([0, 4, 3]))
    for crow in bad_crows:  # wrong length / last != number of values / a negative row count
        with pytest.raises(CheckpointError, match=r"inconsistent CSR data for a weight of shape \(2, 3\)"):
            decode_csr(good | {"crow": crow}, (2, 3))
    for col in (torch.tensor([0, 3, 1]), torch.tensor([0, -1, 1])):
        with pytest.raises(CheckpointError, match=r"CSR column index out of range for shape \(2, 3\)"):
            decode_csr(good | {"col": col}, (2, 3))


# --- ESPN method -> search_path, its report and its warning ----------------------------------------


def test_espn_method_passes_its_options_to_the_search_and_reports_each_round(data4, monkeypatch):
    import inspect
    import warnings

    from prunekit.training.progress import current_phase

    real = espn_mod.search_path
    seen = []

    def spy(*args, **kw):
        bound = inspect.signature(real).bind(*args, **kw)
        bound.apply_defaults()
        seen.append({"args": dict(bound.arguments), "phase": current_phase(), "rounds": []})
        for t, res, snap in real(*args, **kw):
            seen[-1]["rounds"].append((t, res.epochs, res.reached))
            yield t, res, snap

    monkeypatch.setattr(espn_mod, "search_path", spy)
    ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01), seed=5)
    opts = {"alpha": 0.0, "alpha_scale": 2000.0, "alpha_family": "cifar", "search_lr": 0.07, "search_batch_size": 12,
            "max_search_epochs": 2, "threshold": 0.02, "include_classifier": False, "check_every": "epoch",
            "rounds": 2}
    meth = get("espn", opts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meth.prune(mlp(), 0.6, ctx)
    (call,) = seen
    a = call["args"]
    assert call["phase"] == "search"
    assert (a["alpha_family"], a["threshold"], a["include_classifier"], a["snapshots"]) == ("cifar", 0.02, False, False)
    kw = a["kw"]
    assert (kw["lr"], kw["max_epochs"], kw["batch_size"], kw["seed"], kw["check_every"]) == (0.07, 2, 12, 5, "epoch")
    assert not kw.get("progress", True)
    assert a["alpha_for"] == meth.alpha
    rounds = call["rounds"]
    assert len(rounds) == 2
    assert meth.last_search == {
        "rounds": [{"target": t, "alpha": meth.alpha(t), "epochs": e, "reached": r} for t, e, r in rounds],
        "epochs": sum(e for _, e, _ in rounds)}
    capped = [t for t, _, r in rounds if not r]
    warned = [w for w in caught if "epoch cap before reaching its keep count" in str(w.message)]
    assert len(warned) == len(capped) and all(issubclass(w.category, RuntimeWarning) for w in warned)
    for w, t in zip(warned, capped):
        assert f"{meth.alpha(t):.3g}" in str(w.message) and f"{t:.4g} sparsity" in str(w.message)


def test_espn_warns_only_for_rounds_that_hit_the_cap(data4):
    import warnings

    ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01))
    for opts, want_warning in (({"alpha": 5.0, "max_search_epochs": 30}, False),
                               ({"alpha": 0.0, "alpha_scale": 1.0, "max_search_epochs": 1}, True)):
        meth = get("espn", opts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            meth.prune(mlp(), 0.5, ctx)
        reached = meth.last_search["rounds"][0]["reached"]
        assert reached is (not want_warning)
        assert any("epoch cap before reaching its keep count" in str(w.message) for w in caught) is want_warning


def test_espn_finetune_hparams_override_the_runners_schedule(data4):
    ft = TrainHparams(epochs=10, batch_size=16, lr=0.05, momentum=0.5, schedule="cosine", warmup_epochs=2.0,
                      gamma=0.5)
    hp = get("espn").finetune_hparams(make_ctx(data4, mlp, ft=ft))
    assert (hp.momentum, hp.schedule, hp.warmup_epochs, hp.gamma, hp.milestones, hp.epochs) == \
        (0.9, "multistep", 0.0, 0.1, [6], 10)


# --- GMP callback used on its own -------------------------------------------------------------------


def test_cubic_sparsity_edges_and_formula():
    from prunekit.methods.gmp import cubic_sparsity

    assert cubic_sparsity(4, 0.9, 4, 4, 0.2) == 0.9 and cubic_sparsity(3, 0.9, 4, 4, 0.2) == 0.2
    assert cubic_sparsity(5, 0.9, 4, 4, 0.2) == 0.9
    assert cubic_sparsity(2, 0.9, 3, 12, 0.1) == 0.1 and cubic_sparsity(13, 0.9, 3, 12, 0.1) == 0.9
    assert cubic_sparsity(3, 0.9, 3, 12, 0.1) == 0.1 and cubic_sparsity(12, 0.9, 3, 12, 0.1) == 0.9  # exact ends
    for t in (4, 6, 11):
        assert cubic_sparsity(t, 0.9, 3, 12, 0.1) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - (t - 3) / 9) ** 3)


class Kept(Callback):
    def __init__(self):
        self.kept, self.masks = [], []

    def after_step(self, trainer):
        masks = M.get_masks(trainer.model)
        self.masks.append(masks)
        self.kept.append({n: int(v.sum()) for n, v in masks.items()})


def test_gmp_callback_alone_attaches_missing_masks_and_prunes_on_its_grid(data4):
    from prunekit.methods.gmp import GMPCallback
    from prunekit.training import train

    with pytest.raises(ValueError, match="every must be >= 1"):
        GMPCallback(0.5, 0, 4, 0)
    net = mlp()
    pre = M.magnitude_masks(net, 0.5, "layer")["1"]
    M.apply_masks(net, {"1": pre.clone()})  # "1" already half pruned, "3" (the classifier) unmasked
    hp = TrainHparams(epochs=4, batch_size=16, lr=0.01)  # 3 steps per epoch: 12 steps
    cb, rec = GMPCallback(0.8, start=4, end=10, every=3, initial=0.6), Kept()
    train(net, data4, hp, callbacks=[cb, rec], progress=False)
    assert set(rec.masks[0]) == {"1", "3"}  # the classifier got a mask: include_classifier defaults to True
    total = [sum(k.values()) for k in rec.kept]
    changes = [t for t in range(2, 13) if total[t - 1] != total[t - 2]]
    assert set(changes) <= {4, 7, 10} and 4 in changes
    assert total[3] == M.keep_count(240, 0.6)  # pruned to ``initial`` at the start step itself
    assert total[:3] == [96 + 48] * 3  # before the start (t = 1 is on the grid's extension): only the existing mask
    assert total[-1] == M.keep_count(240, 0.8)

    net = mlp()
    M.apply_masks(net, {"1": pre.clone()})
    rec = Kept()
    train(net, data4, hp, callbacks=[GMPCallback(0.8, 1, 6, 1, include_classifier=False), rec], progress=False)
    assert set(rec.masks[0]) == {"1"}  # classifier left alone
    assert torch.equal(rec.masks[0]["1"], pre)  # s = 0 at the start step: nothing changes, nothing revives
    assert not hasattr(net[3], "parametrizations")
    assert rec.kept[-1]["1"] == M.keep_count(192, 0.8)


# --- Taylor scores, schedule helpers ------------------------------------------------------------------


class ConvNoBN(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=bias)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _taylor_reference(net, names, data, batches, batch_size, seed, size):
    """d loss / d a at a = 1, a scaling every parameter of one channel, per batch, squared, averaged."""
    import torch.nn.functional as F

    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    score = torch.zeros(size)
    for b in range(batches):
        x, y = data.get_batch(order[(b * batch_size) % len(data):][:batch_size])
        for c in range(size):
            a = torch.ones((), requires_grad=True)
            sc = torch.ones(size) + (a - 1) * F.one_hot(torch.tensor(c), size)
            p = dict(net.named_parameters())
            over = {k: p[k] * sc.view(-1, *([1] * (p[k].dim() - 1))) for k in names}
            out = torch.func.functional_call(copy.deepcopy(net).train(), over, (x,), strict=False)
            (d,) = torch.autograd.grad(F.cross_entropy(out, y), a)
            score[c] += d.item() ** 2 / batches
    return score


@pytest.mark.parametrize("build,names", [(ConvNoBN, ["conv.weight", "conv.bias"]),
                                         (lambda: ConvNoBN(bias=False), ["conv.weight"]),
                                         (ConvBN, ["conv.weight", "conv.bias", "bn.weight", "bn.bias"])])
def test_taylor_scores_equal_the_squared_first_order_change(build, names):
    from prunekit.methods.taylor import taylor_scores

    data = tiny_data()
    torch.manual_seed(0)
    net = build()
    groups = [g for g in groups_of(net, data.example_inputs(2)) if g.prunable and g.out_layers[0][0] == "conv"]
    (g,) = groups
    got = taylor_scores(net, [g], data.train, 3, 12, 2)[g.id]
    want = _taylor_reference(net, names, data.train, 3, 12, 2, g.size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in net.parameters())  # no gradients left behind


def test_channel_sum_over_multi_row_channels_and_reg_schedule_defaults():
    from prunekit.methods.tpp_schedule import RegSchedule, channel_sum

    rows = torch.tensor([[0, 1], [2, 3], [4, -1]])  # the last channel has one valid position
    got = channel_sum(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), rows.flatten(), 3)
    torch.testing.assert_close(got, torch.tensor([3.0, 7.0, 5.0]))
    assert RegSchedule.reaching(1.0, 100) == RegSchedule(0.1, 10, 1.0)  # every defaults to 10
    with pytest.raises(ValueError, match=r"need iters >= every \(10\) to reach the ceiling, got 5"):
        RegSchedule.reaching(1.0, 5)


def test_at_init_finetune_rejects_an_unknown_budget(data4):
    from prunekit.methods.snip import SNIP, SNIPHparams

    ctx = make_ctx(data4, mlp)
    with pytest.raises(ValueError, match="train_budget must be 'pretrain' or 'finetune', got 'dense'"):
        SNIP(SNIPHparams(train_budget="dense")).finetune(mlp(), ctx)


def test_reg_schedule_is_exactly_at_the_ceiling_from_rise_iters_on():
    from prunekit.methods.tpp_schedule import RegSchedule

    s = RegSchedule(3e-4, 1, 0.9)  # 3e-4 * 3000 is 0.8999999999999999 in floats
    assert s.rise_iters == 3000
    assert s.value(2999) < 0.9 and s.value(3000) == 0.9 and s.value(5000) == 0.9


def test_l1_scores_average_rows_then_the_producers_that_see_a_channel():
    from prunekit.methods.tpp_schedule import l1_scores

    net = nn.ModuleDict({"a": nn.Linear(2, 5, bias=False), "b": nn.Linear(3, 3, bias=False)})
    with torch.no_grad():
        net["a"].weight.copy_(torch.arange(10.0).view(5, 2) - 4.0)
        net["b"].weight.copy_(torch.arange(9.0).view(3, 3) * 0.5 - 1.0)
    # channel 0: a rows 0,1 and b row 0; channel 1: a rows 2,3 only; channel 2: a row 4 and b rows 1,2
    rows_a = torch.tensor([[0, 1], [2, 3], [4, -1]])
    rows_b = torch.tensor([[0, -1], [-1, -1], [1, 2]])
    group = SimpleNamespace(size=3, out_layers=[("a", rows_a.flatten()), ("b", rows_b.flatten())])
    ra = net["a"].weight.abs().mean(1).detach()
    rb = net["b"].weight.abs().mean(1).detach()
    want = torch.stack([((ra[0] + ra[1]) / 2 + rb[0]) / 2, (ra[2] + ra[3]) / 2, (ra[4] + (rb[1] + rb[2]) / 2) / 2])
    torch.testing.assert_close(l1_scores(net, group), want)


def test_espn_validation_and_the_rewind_point_check(data4, monkeypatch, capsys):
    from prunekit.methods.espn import ESPNFinetune, ESPNHparams, ESPNRewind, ESPNRewindHparams

    assert get("espn").last_search == {}
    assert ESPNFinetune(ESPNHparams(check_every="epoch")).hp.check_every == "epoch"
    with pytest.raises(ValueError, match="check_every must be 'epoch' or 'step', got 'batch'"):
        ESPNFinetune(ESPNHparams(check_every="batch"))
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        ESPNFinetune(ESPNHparams(rounds=0))
    masked = M.apply_masks(mlp(), M.magnitude_masks(mlp(), 0.5))
    ctx = make_ctx(data4, mlp, rewind_state=copy.deepcopy(mlp().state_dict()))
    with pytest.raises(ValueError, match="^espn-rewind expects an unmasked dense model$"):
        ESPNRewind(ESPNRewindHparams()).warm_model(masked, ctx)
    spy = TrainSpy()
    monkeypatch.setattr(espn_mod, "train", spy)
    ctx = make_ctx(data4, mlp, pre=TrainHparams(epochs=4, batch_size=16, lr=0.05, warmup_epochs=2.0,
                                                 schedule="cosine"))
    get("espn-rewind", {"warmup_epochs": 1}).warm_model(mlp(), ctx)
    (call,) = spy.calls
    assert (call["hp"].epochs, call["hp"].warmup_epochs, call["hp"].schedule) == (1, 0.0, "constant")
    assert not call["kw"].get("eval_test", True)  # the warm-up never evaluates the test set
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_unknown_method_options_name_the_method():
    with pytest.raises(Exception, match="method 'snip'"):
        get("snip", {"no_such_option": 1})


def test_a_method_built_without_hparams_gets_its_defaults():
    from prunekit.methods.magnitude import Magnitude, MagnitudeHparams

    assert Magnitude().hp == MagnitudeHparams()
    assert isinstance(PruningMethod().hp, PruningMethod.Hparams)


def test_ties_go_to_the_lower_index_in_every_plan():
    from prunekit.methods.slimming import global_plan
    from prunekit.methods.tpp_schedule import l1_plan, plan_from_scores

    g = SimpleNamespace(id=0, size=40)
    plan = plan_from_scores([g], {0: torch.zeros(40)}, {0: 0.5})
    assert torch.equal(plan[0], torch.arange(20))  # the unstable sort would scatter the ties
    groups = [SimpleNamespace(id=0, size=24), SimpleNamespace(id=1, size=16)]
    plan = global_plan(groups, {0: torch.ones(24), 1: torch.ones(16)}, {0: 0.5, 1: 0.5})
    assert torch.equal(plan[0], torch.arange(20)) and 1 not in plan  # 20 lowest flat indices, all of group 0
    net = ConvBN()
    assert l1_plan(net, groups_of(net, torch.zeros(2, 1, 6, 6)), 0.0) == {}


@pytest.mark.parametrize("name", ["magnitude", "espn", "espn-rewind", "snip", "scratch", "gmp"])
def test_finetune_shows_progress_when_the_context_asks(name, data4, capsys):
    import dataclasses

    if name == "scratch":
        ctx = make_ctx(tiny_data(), ConvBN, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01))
        meth, net = get("scratch"), ConvBN()
    elif name == "gmp":
        ctx = make_ctx(data4, mlp, ft=TrainHparams(epochs=1, batch_size=16, lr=0.01))
        meth = get("gmp")
        net = meth.prune(mlp(), 0.5, ctx)
    else:
        meth, net, ctx = _pruned_for(name, data4)
    ctx = dataclasses.replace(ctx, progress=True)
    capsys.readouterr()
    meth.finetune(net, ctx)
    assert "epoch 1/" in capsys.readouterr().err  # outside a terminal: one line per epoch


def test_sparsity_and_warm_up_phases_show_progress_when_asked(data4, capsys):
    import dataclasses

    ctx = dataclasses.replace(make_ctx(tiny_data(), TwoConv), progress=True)
    capsys.readouterr()
    get("slimming", {"epochs": 1}).prune(two_conv(), 0.5, ctx)
    assert "epoch 1/" in capsys.readouterr().err
    ctx = dataclasses.replace(make_ctx(data4, mlp, pre=TrainHparams(epochs=2, batch_size=16, lr=0.05)), progress=True)
    get("espn-rewind", {"warmup_epochs": 1}).warm_model(mlp(), ctx)
    assert "epoch 1/" in capsys.readouterr().err


def test_csr_size_estimate_uses_the_real_column_index_width(tmp_path):
    # 32768 columns still fit int16 indices (largest index 32767); 32769 need int32
    for cols, csr in ((32768, True), (32769, False)):
        net = _linear_kept(20000, (1, cols))
        info = save_sparse(tmp_path / f"w{cols}.safetensors", net)
        assert info["sparse_tensors"] == int(csr), cols


def test_plan_from_scores_units_parts_and_groups_without_a_ratio():
    from prunekit.methods.tpp_schedule import plan_from_scores

    heads = SimpleNamespace(id=0, size=8, unit=2)  # 4 heads of 2 channels, scored by their sum
    sc = torch.tensor([5.0, 0.0, 0.1, 0.1, 0.0, 3.0, 1.0, 1.0])  # head sums 5, 0.2, 3, 2
    other = SimpleNamespace(id=1, size=4)
    plan = plan_from_scores([heads, other], {0: sc, 1: torch.arange(4.0)}, {0: 0.5})  # no ratio for group 1
    assert list(plan) == [0]
    assert plan[0].tolist() == [2, 3, 6, 7]
    parts = SimpleNamespace(id=2, size=6, parts=2)  # equally many from each half
    plan = plan_from_scores([parts], {2: torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])}, {2: 0.3})
    assert plan[2].tolist() == [0, 3]


def test_n_pruned_at_zero_and_for_single_channel_groups():
    from prunekit.methods.tpp_schedule import n_pruned

    assert n_pruned(0.0, 10) == 0
    assert n_pruned(0.5, 1) == 0  # a one-channel group keeps its channel
    assert n_pruned(0.7, 10) == 7 and n_pruned(0.9, 200) == 180


def test_plan_rows_keep_single_channel_entries_in_module_order():
    from prunekit.methods.tpp_schedule import PlanRows, RegSchedule

    with pytest.raises(ValueError, match=r"^need delta > 0, every >= 1, ceiling > 0 \(got 0.1, 1, 0.0\)$"):
        RegSchedule(0.1, 1, 0.0)
    net = two_conv()
    groups = [g for g in groups_of(net, torch.zeros(2, 1, 6, 6)) if g.prunable]
    gid = {g.out_layers[0][0]: g.id for g in groups}
    pr = PlanRows(net, groups, {gid["conv1"]: [], gid["conv2"]: [4]})  # an empty entry first; one channel
    assert [e[0] for e in pr.entries] == [gid["conv2"]]
    pr = PlanRows(net, groups, {gid["conv2"]: [4], gid["conv1"]: [1]})
    assert [e[0] for e in pr.entries] == [gid["conv1"], gid["conv2"]]  # model order, not plan order
    pr.zero()
    w1, w2 = net.conv1.weight.detach(), net.conv2.weight.detach()
    assert float(w1[1].abs().sum()) == 0.0 and float(w2[4].abs().sum()) == 0.0
    assert float(net.bn2.weight.detach()[4]) == 0.0 and float(w2[3].abs().sum()) > 0
