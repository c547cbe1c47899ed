"""More edges found by mutation testing: mask bookkeeping, schedule boundaries, option
plumbing of GReg/TPP/ESPN, the ESPN search's stop and warning arithmetic."""
import copy
import inspect
import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import prunekit.methods.greg as greg_mod
import prunekit.sparse.espn as espn_sparse
from prunekit.methods import get
from prunekit.methods.greg import GRegHparams, GrowingL2
from prunekit.methods.tpp import TPPHparams, TPPRegularizer, gram_penalty, phase_hparams
from prunekit.methods.tpp_schedule import PlanRows, RegSchedule
from prunekit.sparse import masks as M
from prunekit.sparse.espn import ESPNSearch, SoftMask, default_alpha, run_search, search_path
from prunekit.training import TrainHparams, train
from test_mechanics_common import ConvBN, TrainSpy, make_ctx, tiny_data


def three(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


class Twice(nn.Module):
    def forward(self, b):
        return 2 * b


# --- masks ----------------------------------------------------------------------------------


def test_keep_count_bounds():
    assert M.keep_count(10, 0.0) == 10 and M.keep_count(10, 0.95) == 1 and M.keep_count(1000, 0.999) == 1
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
            M.keep_count(10, bad)


def test_masks_from_scores_scopes_and_ends():
    s = {"a": torch.tensor([1.0, 9.0, 3.0, 7.0]), "b": torch.tensor([[2.0, 8.0], [0.5, 6.0]]),
         "c": torch.tensor([4.0, 5.0, 10.0, 0.1])}
    g = M.masks_from_scores(s, 0.5)  # default: global, keep the largest 6 of 12
    assert g["a"].tolist() == [False, True, False, True] and g["b"].tolist() == [[False, True], [False, True]]
    assert g["c"].tolist() == [False, True, True, False] and all(v.dtype == torch.bool for v in g.values())
    lo = M.masks_from_scores(s, 0.5, "global", largest=False)
    assert lo["a"].tolist() == [True, False, True, False] and lo["c"].tolist() == [True, False, False, True]
    lay = M.masks_from_scores(s, 0.5, "layer")
    assert lay["a"].tolist() == [False, True, False, True] and lay["c"].tolist() == [False, True, True, False]
    assert all(v.dtype == torch.bool for v in lay.values())
    lay_lo = M.masks_from_scores(s, 0.5, "layer", largest=False)
    assert lay_lo["b"].tolist() == [[True, False], [True, False]]
    with pytest.raises(ValueError, match="scope must be 'global' or 'layer', got 'x'"):
        M.masks_from_scores(s, 0.5, "x")
    net = three()
    assert sum(int(v.sum()) for v in M.magnitude_masks(net, 0.5).values()) == M.keep_count(200, 0.5)
    default = M.magnitude_masks(net, 0.9)
    glob = M.magnitude_masks(net, 0.9, "global")
    assert all(torch.equal(default[n], glob[n]) for n in glob)
    assert any(not torch.equal(default[n], M.magnitude_masks(net, 0.9, "layer")[n]) for n in glob)


def test_apply_masks_errors_and_float_masks():
    net = three()
    with pytest.raises(KeyError, match="mask for unknown module 'x'"):
        M.apply_masks(net, {"x": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask for 1 has shape \(2, 2\), weight has \(8, 16\)"):
        M.apply_masks(net, {"1": torch.ones(2, 2, dtype=torch.bool)})
    f = (torch.rand(8, 16) > 0.5).float()
    M.apply_masks(net, {"1": f})
    assert M.current_mask(net[1]).dtype == torch.bool and torch.equal(M.current_mask(net[1]), f.bool())


def test_mask_helpers_ignore_other_parametrized_tensors():
    lin = nn.Linear(3, 2)
    parametrize.register_parametrization(lin, "bias", Twice())
    assert M.raw_weight(lin) is lin.weight and M.current_mask(lin) is None
    net = nn.Sequential(lin)
    rep = M.sparsity_report(net)
    assert rep["total_params"] == 8 and rep["prunable_params"] == 6
    M.remove_masks(net)
    assert parametrize.is_parametrized(lin, "bias")
    s = ESPNSearch(nn.Sequential(copy.deepcopy(lin)), sparsity=0.5, alpha=0.1)
    assert len(s.mask_parameters()) == 1


def test_sparsity_report_counts():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    M.apply_masks(net, {"0": torch.tensor([[True, False, False, False]] * 3), "1": torch.tensor([[True, True, False]])})
    rep = M.sparsity_report(net)
    assert (rep["prunable_params"], rep["prunable_zeros"]) == (15, 15 - 3 - 2)
    assert (rep["total_params"], rep["total_zeros"]) == (18, 10 + 2)
    assert rep["sparsity_overall"] == pytest.approx(12 / 18) and rep["compression"] == pytest.approx(18 / 6)
    one = nn.Sequential(nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        one[0].weight.zero_()
    r1 = M.sparsity_report(one)
    assert r1["sparsity_prunable"] == 1.0 and r1["sparsity_overall"] == 1.0 and r1["compression"] == 1.0
    lone = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        lone[0].weight.copy_(torch.tensor([[0.0, 0.0, 3.0, 0.0]]))
    assert M.sparsity_report(lone)["compression"] == 4.0
    assert M.sparsity_report(nn.Sequential(nn.Linear(1, 1, bias=False)))["sparsity_prunable"] == 0.0
    assert list(M.sparsity_report(three(), include_classifier=False).values())[0] == 128 + 48


# --- GReg ----------------------------------------------------------------------------------


def test_growing_l2_stops_at_its_iteration_count_and_starts_at_zero():
    data = tiny_data()
    net = ConvBN()
    rows = PlanRows(net, [_group()], {0: torch.tensor([0, 1])})
    cb = GrowingL2(rows, RegSchedule(0.1, 1, 1.0), 10)
    assert cb.t == 0 and cb.state_dict() == {"t": 0}
    res = train(net, data, TrainHparams(epochs=3, batch_size=8, lr=1e-3), callbacks=[cb], progress=False,
                eval_test=False)
    assert res.steps == 10 and cb.t == 10


def _group():
    from types import SimpleNamespace

    return SimpleNamespace(id=0, size=6, prunable=True, out_layers=[("conv", torch.arange(6))],
                           norm_layers=[("bn", torch.arange(6))])


def test_greg_hparams_and_options_reach_the_phases(monkeypatch):
    with pytest.raises(ValueError, match="unknown preset 'x'; valid: paper, bench, demo"):
        GRegHparams(preset="x")
    assert GRegHparams(preset="bench").stabilise == 300 and GRegHparams(preset="bench", stabilise=3).stabilise == 3
    assert GRegHparams(preset="bench").pick_iters == 500
    data = tiny_data()
    ctx = make_ctx(data, ConvBN, ft=TrainHparams(epochs=1, batch_size=8, weight_decay=5e-4))
    spy = TrainSpy()
    monkeypatch.setattr(greg_mod, "train", spy)
    for name in ("greg1", "greg2"):
        spy.calls.clear()
        slim = get(name, {"preset": "demo", "stabilise": 0, "pick_iters": 10, "weight_decay": 1e-3,
                          "batch_size": 16, "layer_ratios": {"conv": 0.2}}).prune(ConvBN(), 0.5, ctx)
        assert slim.conv.weight.shape[0] == 4  # ceil(0.2 * 6) = 2 removed, not ceil(0.5 * 6)
        for c in spy.calls:
            assert (c["hp"].weight_decay, c["hp"].batch_size) == (1e-3, 16)


# --- TPP -------------------------------------------------------------------------------------


def test_tpp_validation_messages_and_boundaries():
    with pytest.raises(ValueError, match=r"shape \(4,\), got torch.bool \(3,\)"):
        gram_penalty(torch.randn(4, 3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid: paper, bench, demo"):
        TPPHparams(preset="x")
    assert TPPHparams(stabilise=0).total_iters == TPPHparams().schedule.rise_iters
    for bad in ({"stabilise": -1}, {"zero_every": 0}):
        with pytest.raises(ValueError, match="need stabilise >= 0 and zero_every >= 1"):
            TPPHparams(**bad)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        TPPHparams(lam=-1.0)


def test_tpp_regulariser_defaults_overrides_selection_options_and_ignore():
    x = torch.randn(2, 1, 6, 6)
    net = ConvBN()
    assert len(TPPRegularizer(net, x).plan[0]) == 3  # default ratio 0.5 of 6
    h = TPPHparams(delta=0.5, every=1, stabilise=4)
    r = TPPRegularizer(net, x, 0.5, h, lam=7.0)
    assert r.hp.lam == 7.0 and r.hp.stabilise == 4 and h.lam == 1000.0
    assert TPPRegularizer(net, x, 0.5, None, lam=3.0).hp.lam == 3.0
    assert len(TPPRegularizer(net, x, 0.5, TPPHparams(layer_ratios={"conv": 0.2})).plan[0]) == 2
    with pytest.raises(ValueError, match="nothing to prune"):
        TPPRegularizer(net, x, 0.5, ignore=["fc"])


def test_tpp_zero_every_one_zeroes_right_after_the_rise():
    net = ConvBN()
    reg = TPPRegularizer(net, torch.randn(2, 1, 6, 6), 0.5, TPPHparams(delta=0.5, every=1, stabilise=3, zero_every=1))
    pruned = reg.rows.out_masks["conv"]
    reg.step(), reg.step()  # t = 2 = rise: not yet
    assert torch.count_nonzero(net.conv.weight[pruned]) > 0
    reg.step()  # one iteration into the stabilise phase
    assert torch.count_nonzero(net.conv.weight[pruned]) == 0


def test_phase_hparams_iterations_epochs_and_seed():
    data = tiny_data(n_train=4)
    ctx = make_ctx(data, ConvBN, ft=TrainHparams(batch_size=8, weight_decay=1e-4), seed=5)
    hp = phase_hparams(3, ctx, 0.01, 0.5, None, None)
    assert (hp.epochs, hp.batch_size, hp.seed, hp.weight_decay, hp.lr, hp.momentum) == (3, 8, 5, 1e-4, 0.01, 0.5)
    assert phase_hparams(1, ctx, 0.01, 0.5, 0.0, 2).epochs == 1
    assert phase_hparams(5, ctx, 0.01, 0.5, 0.0, 2).epochs == 3  # 2 steps per epoch


# --- ESPN ------------------------------------------------------------------------------------


def test_espn_search_construction_options():
    net = three().double()
    s = ESPNSearch(net, sparsity=0.0, alpha=0.1)
    assert s.keep_count() == s.total and all(p.dtype == torch.float64 for p in s.mask_parameters())
    assert ESPNSearch(three(), sparsity=0.95).alpha == pytest.approx(6e-5)
    assert ESPNSearch(three(), sparsity=0.95, alpha_family="cifar").alpha == pytest.approx(8e-5)
    assert list(ESPNSearch(three(), sparsity=0.5, include_classifier=False).modules) == ["1", "3"]
    net = three()
    ESPNSearch(net, sparsity=0.5)
    again = ESPNSearch(net, sparsity=0.5)
    assert all(sum(isinstance(p, SoftMask) for p in m.parametrizations.weight) == 1 for m in again.modules.values())
    assert isinstance(SoftMask((2, 3)).m, nn.Parameter) and SoftMask((2, 3)).m.dtype == torch.float32
    with pytest.raises(ValueError, match="give exactly one of sparsity or keep_ratio"):
        ESPNSearch(three())
    with pytest.raises(ValueError, match="model has no conv or linear layer to mask"):
        ESPNSearch(nn.Sequential(nn.ReLU()), sparsity=0.5)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        espn_sparse.rising_targets(0.9, 0)


def test_espn_done_at_exactly_the_keep_count_and_alpha_arithmetic():
    s = ESPNSearch(three(), keep_ratio=0.5, alpha=0.099 / 600.5)
    with torch.no_grad():
        k, o = s.keep_count(), 0
        for p in s.mask_parameters():
            p.copy_((torch.arange(o, o + p.numel()) < k).float().view_as(p))
            o += p.numel()
    assert s.count() == k and s.done()
    # L1 drift: ceil(0.99 * 0.1 / (1.0 * alpha)) = 601 steps
    assert s.steps_to_threshold(1.0) == 601 and s.steps_to_threshold(0.0) == float("inf")
    with pytest.warns(RuntimeWarning, match="too small"):
        assert s.check_alpha(1.0, 2) == pytest.approx(300.5)  # default budget: 300 epochs
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s.check_alpha(1.0, 601, max_epochs=1)  # exactly at the budget: no warning
    assert s.check_alpha(1.0, 1, max_epochs=10**6) == 601
    assert s.check_alpha(1.0, 601, max_epochs=10**6, momentum=0.0) == pytest.approx(6006 / 601, rel=1e-3)


def test_run_search_warning_uses_steps_per_epoch_and_budget():
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))  # batch 16: 2 steps per epoch
    kw = dict(lr=0.05, max_epochs=3, batch_size=16)
    with pytest.warns(RuntimeWarning, match="7 steps"):  # 3.5 epochs > 3
        run_search(ESPNSearch(three(), sparsity=0.5, alpha=0.099 / (0.05 * 6.5)), data, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # 2.5 epochs
        run_search(ESPNSearch(three(), sparsity=0.5, alpha=0.099 / (0.05 * 4.5)), data, **kw)
        run_search(ESPNSearch(three(), sparsity=0.5, alpha=0.099 / (0.05 * 4.5)), data.train, **kw)  # plain tensors


def test_run_search_defaults_skip_validation_and_trainer_options(monkeypatch):
    d = {k: v.default for k, v in inspect.signature(run_search).parameters.items() if v.default is not inspect._empty}
    assert d == {"lr": 0.05, "max_epochs": 300, "batch_size": 128, "seed": 0, "check_every": "epoch",
                 "progress": False}
    d = {k: v.default for k, v in inspect.signature(search_path).parameters.items() if v.default is not inspect._empty}
    assert (d["threshold"], d["alpha_family"], d["include_classifier"], d["snapshots"]) == (1e-2, "mnist", True, True)
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4), val_fraction=0.25)
    import prunekit.training as training_pkg

    spy = TrainSpy()
    monkeypatch.setattr(training_pkg, "train", spy)
    _, _, hist = run_search(ESPNSearch(three(), sparsity=0.5, alpha=0.3), data, lr=0.05, max_epochs=2, batch_size=8)
    assert all("val_acc" not in h for h in hist)
    assert spy.calls[0]["kw"] == {"progress": False, "eval_test": False}
    assert spy.calls[0]["hp"].momentum == 0.9


def test_search_path_alpha_threshold_snapshots_and_history(monkeypatch):
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    seen = []
    real = espn_sparse.run_search

    def spy(s, data, **kw):
        seen.append((s.sparsity, s.alpha, s.threshold, list(s.modules)))
        return real(s, data, **kw)

    monkeypatch.setattr(espn_sparse, "run_search", spy)
    out = list(search_path(three(), data, [0.9, 0.95], alpha_family="cifar", threshold=0.5, include_classifier=False,
                           snapshots=False, lr=0.05, max_epochs=1, batch_size=16))
    assert [p for _, _, p in out] == [None, None]
    assert [(a, pytest.approx(b), c, d) for a, b, c, d in seen] == \
        [(0.9, default_alpha(0.9, "cifar"), 0.5, ["1", "3"]), (0.95, default_alpha(0.95, "cifar"), 0.5, ["1", "3"])]
    assert all(isinstance(r.history, list) and len(r.history) == r.epochs == 1 for _, r, _ in out)
    with pytest.raises(ValueError, match="rise strictly"):
        list(search_path(three(), data, [0.5, 0.5]))
    with pytest.raises(ValueError, match="rise strictly"):
        list(search_path(three(), data, []))
