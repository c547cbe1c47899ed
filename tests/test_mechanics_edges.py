"""Edges of the mechanics: documented (paper) defaults, option plumbing (include_classifier,
thresholds, rates), degenerate inputs, state round trips and what each phase asks the trainer for."""
import copy
import importlib
import inspect
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import prunekit.methods.greg as greg_mod
import prunekit.methods.imp as imp_mod
import prunekit.methods.tpp as tpp_mod
from prunekit.foundations.io import load_tensors
from prunekit.methods import get
from prunekit.methods.greg import GrowingL2
from prunekit.methods.imp import imp_path, imp_schedule
from prunekit.methods.tpp import TPPCallback, TPPHparams, TPPRegularizer
from prunekit.methods.tpp_schedule import RegSchedule
from prunekit.metrics import jacobian_singular_values
from prunekit.sparse import masks as M
from prunekit.sparse.espn import ESPNSearch, default_alpha, search
from test_mechanics_common import ConvBN, TrainSpy, make_ctx, tiny_data

S = importlib.import_module("prunekit.sparse.scores")  # (prunekit.sparse.scores is also a function name)


def three(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8, bias=bias), nn.ReLU(), nn.Linear(8, 6, bias=bias), nn.ReLU(),
                         nn.Linear(6, 4, bias=bias))


def batch(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


def defaults(fn):
    return {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not inspect._empty}


def test_documented_paper_defaults():
    # ESPN: 300-epoch cap, m > 1e-2, per-epoch check (authors' MNIST/CIFAR scripts), lr 0.05, batch 128
    d = defaults(search)
    assert (d["max_epochs"], d["threshold"], d["check_every"], d["lr"], d["batch_size"], d["seed"]) == \
        (300, 1e-2, "epoch", 0.05, 128, 0)
    assert d["alpha_family"] == "mnist" and d["include_classifier"] is True and d["progress"] is False
    assert defaults(S.grasp_scores) == {"temperature": 200.0, "reinit_classifier": True, "include_classifier": True,
                                        "seed": 0}
    assert defaults(S.synflow_masks)["rounds"] == 100 and defaults(S.synflow_masks)["include_classifier"] is True
    assert defaults(imp_schedule)["rate"] == 0.2
    assert defaults(jacobian_singular_values)["chunk_size"] == 32
    for fn in (S.snip_scores, S.synflow_scores, S.magnitude_scores, S.total_weights, S._module_scores, imp_path):
        assert defaults(fn)["include_classifier"] is True, fn


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude"])
def test_include_classifier_reaches_every_score(method):
    net = three()
    b = batch()
    assert list(S.scores(net, method, b)) == ["1.weight", "3.weight", "5.weight"]
    assert list(S.scores(net, method, b, include_classifier=False)) == ["1.weight", "3.weight"]
    assert list(S.score_masks(net, method, 0.5, b, include_classifier=False)) == ["1", "3"]
    assert list(S._module_scores(net, method, b)) == ["1", "3", "5"]
    assert S.total_weights(net) == 128 + 48 + 24 and S.total_weights(net, False) == 128 + 48
    assert list(M.random_masks(net, 0.5, include_classifier=False)) == ["1", "3"]


def test_synflow_options_and_existing_masks():
    net = three()
    x, _ = batch()
    a = S.synflow_masks(net, 0.8, rounds=3, input_shape=(1, 4, 4))
    b = S.synflow_masks(net, 0.8, rounds=3, example=x)
    c = S.synflow_masks(net, 0.8, rounds=3, example=(x, None))
    assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], c[n]) for n in a)
    assert list(S.synflow_masks(net, 0.8, rounds=2, input_shape=(1, 4, 4), include_classifier=False)) == ["1", "3"]
    s1 = S.synflow_scores(net, (1, 4, 4))
    assert list(s1) == ["1", "3", "5"] and list(S.synflow_scores(net, None, example=x)) == ["1", "3", "5"]
    with pytest.raises(ValueError, match="rounds >= 1"):
        S.synflow_masks(net, 0.8, rounds=0, input_shape=(1, 4, 4))
    one = S.synflow_masks(net, 0.8, rounds=1, input_shape=(1, 4, 4))
    assert sum(int(v.sum()) for v in one.values()) == M.keep_count(200, 0.8)
    # a model already masked: pruned entries stay pruned, existing masks are not reset to ones
    M.apply_masks(net, M.magnitude_masks(net, 0.5))
    old = M.get_masks(net)
    new = S.synflow_masks(net, 0.8, rounds=2, input_shape=(1, 4, 4))
    assert all(not (new[n] & ~old[n]).any() for n in new)
    with pytest.raises(ValueError, match="synflow needs the input shape"):
        S.synflow_masks(net, 0.8, rounds=1)


def test_snip_on_a_zero_model_gives_zero_scores_not_nan():
    net = three()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    s = S.scores(net, "snip", batch())
    assert all(torch.equal(v, torch.zeros_like(v)) for v in s.values())


def test_score_checks_name_the_problem():
    net = three()
    with pytest.raises(ValueError, match="valid: snip, grasp, synflow, magnitude"):
        S.scores(net, "nope", batch())
    with pytest.raises(ValueError, match="grasp needs batch=\\(inputs, targets\\), got NoneType"):
        S.scores(net, "grasp", None)
    with pytest.raises(ValueError, match="snip needs batch.*got Tensor"):
        S.scores(net, "snip", torch.zeros(2, 16))


def conv_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 2))  # 4x4 -> 2x2 -> 1x1


def test_grasp_reinit_of_a_conv_classifier_is_xavier_over_fan_in_and_out_times_kernel():
    net = conv_head()
    x, y = batch(8)
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # fan_in = 3 * 2 * 2, fan_out = 4 * 2 * 2
        ref[2].weight.copy_(torch.randn(ref[2].weight.shape, generator=g) * math.sqrt(2.0 / (12 + 16)))
    got = S.grasp_scores(_Flat(net), (x, y), temperature=3.0, reinit_classifier=True, seed=5)
    want = S.grasp_scores(_Flat(ref), (x, y), temperature=3.0, reinit_classifier=False)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-9)


class _Flat(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).flatten(1)


def test_grasp_reinit_keeps_a_masked_classifier_masked():
    net = three()
    M.apply_masks(net, M.magnitude_masks(net, 0.5, scope="layer"))
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(2)
    w = M.raw_weight(ref[5])
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / (6 + 4)) * M.current_mask(ref[5]))
    b = batch()
    got = S.grasp_scores(net, b, temperature=2.0, seed=2)
    want = S.grasp_scores(ref, b, temperature=2.0, reinit_classifier=False)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-9)
    assert list(S.grasp_scores(three(), b, include_classifier=False)) == ["1", "3"]
    # the last layer is re-initialised even when it is not scored
    a = S.grasp_scores(three(), b, include_classifier=False, seed=0)
    c = S.grasp_scores(three(), b, include_classifier=False, reinit_classifier=False)
    assert not torch.allclose(a["1"], c["1"])


def test_grasp_method_passes_its_options(monkeypatch):
    data = tiny_data(n_train=40, classes=4, shape=(1, 4, 4))
    ctx = make_ctx(data, three, seed=1)
    seen = {}
    real = S.score_masks

    def spy(model, method, sparsity, batch=None, include_classifier=True, **opts):
        seen.update(opts, include_classifier=include_classifier, method=method, n=len(batch[1]))
        return real(model, method, sparsity, batch, include_classifier, **opts)

    import prunekit.methods.grasp as grasp_mod

    monkeypatch.setattr(grasp_mod, "score_masks", spy)
    get("grasp", {"temperature": 7.0, "reinit_classifier": False, "include_classifier": False,
                  "samples_per_class": 2}).prune(three(), 0.5, ctx)
    assert seen == {"temperature": 7.0, "reinit_classifier": False, "seed": 1, "include_classifier": False,
                    "method": "grasp", "n": 8}
    x1, _ = grasp_mod.class_balanced_batch(data.train, 2, seed=1)
    x2, _ = grasp_mod.class_balanced_batch(data.train, 2, seed=1)
    assert torch.equal(x1, x2)  # seeded


def test_imp_schedule_validation_and_repeated_targets():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
            imp_schedule([0.5], bad)
    for bad in ([], [0.0], [1.0], [0.5, 1.2]):
        with pytest.raises(ValueError, match=r"targets must be in \(0, 1\)"):
            imp_schedule(bad)
    assert imp_schedule([0.5, 0.5]) == imp_schedule([0.5])
    assert imp_schedule([0.36]) == pytest.approx([0.2, 0.36]) and len(imp_schedule([0.36])) == 2
    assert imp_schedule([0.75], 0.5) == pytest.approx([0.5, 0.75])


def test_imp_path_refuses_masked_models_and_honours_include_classifier():
    net = three()
    state = copy.deepcopy(net.state_dict())
    levels = list(imp_path(net, state, [0.5]))
    assert list(M.get_masks(levels[0][1])) == ["1", "3", "5"]
    levels = list(imp_path(net, state, [0.5], include_classifier=False))
    assert list(M.get_masks(levels[0][1])) == ["1", "3"]
    M.apply_masks(net, M.magnitude_masks(net, 0.5))
    with pytest.raises(ValueError, match="needs the unmasked trained dense model"):
        next(imp_path(net, state, [0.6]))


def test_imp_method_options_reach_the_schedule_and_the_trainer(monkeypatch):
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    from prunekit.training import TrainHparams

    ctx = make_ctx(data, three, pre=TrainHparams(epochs=1, batch_size=8, lr=0.05))
    dense = three()
    ctx.rewind_state = copy.deepcopy(dense.state_dict())
    spy = TrainSpy()
    monkeypatch.setattr(imp_mod, "train", spy)
    pruned = get("imp", {"rate": 0.5, "include_classifier": False, "level_epochs": 1}).prune(dense, 0.75, ctx)
    assert len(spy.calls) == 1  # levels 0.5, 0.75: one trained inside prune
    assert list(M.get_masks(pruned)) == ["1", "3"]
    assert all(c["kw"].get("progress") is ctx.progress for c in spy.calls)
    get("imp").finetune(pruned, ctx)
    assert spy.calls[-1]["kw"]["progress"] is ctx.progress
    # no rewind point and a rewind iteration past the end of level 0: rewind to level 0's end
    spy.calls.clear()
    ctx.rewind_state = None
    snaps = []
    spy.after = lambda m: snaps.append(copy.deepcopy(m.state_dict()))
    pruned = get("imp", {"level_epochs": 1, "rewind_iteration": 10**6}).prune(dense, 0.2, ctx)
    torch.testing.assert_close(M.raw_weight(pruned[1]), snaps[0]["1.weight"] * M.current_mask(pruned[1]))
    assert spy.calls[0]["kw"]["progress"] is ctx.progress


def test_trainer_options_of_the_regularisation_phases(monkeypatch):
    data = tiny_data()
    ctx = make_ctx(data, ConvBN)
    spy = TrainSpy()
    monkeypatch.setattr(tpp_mod, "train", spy)
    monkeypatch.setattr(greg_mod, "train", spy)
    tpp_mod.TPP(TPPHparams(delta=0.5, every=1, stabilise=1)).prune(ConvBN(), 0.5, ctx)
    get("greg1", {"preset": "demo", "stabilise": 0}).prune(ConvBN(), 0.5, ctx)
    for c in spy.calls:
        assert c["kw"]["eval_test"] is False and c["kw"]["progress"] is ctx.progress


def test_orthp_method_passes_selection_and_gain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    ctx = make_ctx(tiny_data(shape=(1, 4, 4)), None)
    slim = get("l1-orthp", {"gain": 2.0, "layers": ["1"]}).prune(net, 0.5, ctx)
    assert [m.out_features for m in slim.modules() if isinstance(m, nn.Linear)] == [4, 8, 3]
    w = slim[2].weight.detach().double() / 2.0
    torch.testing.assert_close(w.t() @ w, torch.eye(4, dtype=torch.double), atol=1e-5, rtol=0)


def test_state_round_trips():
    net = ConvBN()
    reg = TPPRegularizer(net, torch.randn(2, 1, 6, 6), 0.5, TPPHparams(delta=0.5, every=1, stabilise=3))
    reg.t = 2
    st = TPPCallback(reg).state_dict()
    assert st == {"t": 2, "plan": [[g, idx.tolist()] for g, idx in reg.plan.items()]}
    other = TPPRegularizer(ConvBN(), torch.randn(2, 1, 6, 6), 0.5, TPPHparams(delta=0.5, every=1, stabilise=3))
    other.load_state_dict(st)
    assert other.t == 2 and all(other.plan[g].dtype == torch.long and torch.equal(other.plan[g], reg.plan[g])
                                for g in reg.plan)
    cb = GrowingL2(reg.rows, RegSchedule(0.1, 1, 1.0), 5)
    cb.t = 3
    assert cb.state_dict() == {"t": 3}
    cb2 = GrowingL2(reg.rows, RegSchedule(0.1, 1, 1.0), 5)
    cb2.load_state_dict({"t": 4})
    assert cb2.t == 4 and not cb2.should_stop(None)
    cb2.load_state_dict({"t": 5})
    assert cb2.should_stop(None)


def test_espn_search_threshold_and_progress_edges():
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    net = three()
    res = search(net, data, 0.5, alpha=1e-6, threshold=2.0, max_epochs=3, batch_size=16, check_every="step")
    assert res.reached and res.epochs == 1  # every m (about 1) is already below a threshold of 2
    with pytest.raises(ValueError, match=r"sparsity must be in \(0, 1\)"):
        default_alpha(0.0)
    with pytest.raises(ValueError, match="valid: mnist, cifar"):
        default_alpha(0.9, "x")
    s = ESPNSearch(three(), keep_ratio=0.5, alpha=1e-3)
    with torch.no_grad():
        flat = torch.cat([p.flatten() for p in s.mask_parameters()])
        k = s.keep_count()
        o = 0
        for p in s.mask_parameters():  # exactly keep_count entries on
            n = p.numel()
            on = torch.arange(o, o + n) < k
            p.copy_(torch.where(on, torch.ones(n), torch.zeros(n)).view_as(p))
            o += n
    assert flat.numel() == s.total
    p = s.progress()
    assert p["count"] == p["target"] == k and p["done"] and p["to_go"] == 0


def test_remove_masks_with_other_parametrized_tensors():
    lin = nn.Linear(5, 3)

    class Scale(nn.Module):
        def forward(self, b):
            return 2 * b

    M.apply_masks(nn.Sequential(lin), {"0": torch.rand(3, 5) > 0.5})
    mask = M.current_mask(lin).clone()
    parametrize.register_parametrization(lin, "bias", Scale())
    M.remove_masks(nn.Sequential(lin))
    assert not parametrize.is_parametrized(lin, "weight") and parametrize.is_parametrized(lin, "bias")
    assert (lin.weight[~mask] == 0).all() and (lin.weight[mask] != 0).all()


def test_saved_masks_are_labelled(tmp_path):
    net = three()
    masks = M.magnitude_masks(net, 0.5)
    M.save_masks(tmp_path / "m.safetensors", masks)
    tensors, meta = load_tensors(tmp_path / "m.safetensors")
    assert meta.get("kind") == "masks" and all(v.dtype == torch.uint8 for v in tensors.values())
    back = M.load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(back[n], masks[n]) for n in masks)


def test_jsv_chunking_gives_the_same_values_and_two_values_have_a_std():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    a = jacobian_singular_values(net, x)
    b = jacobian_singular_values(net, x, chunk_size=2)
    torch.testing.assert_close(a["values"], b["values"])
    two = jacobian_singular_values(nn.Sequential(nn.Linear(3, 2)), torch.randn(1, 3))
    assert two["values"].numel() == 2 and two["std"] == pytest.approx(two["values"].std().item())
    with pytest.raises(ValueError, match=r"inputs must be a non-empty batch tensor \(N x \.\.\.\), got list \(\)"):
        jacobian_singular_values(net, [1.0])
    with pytest.raises(ValueError, match=r"got Tensor \(0, 4\)"):
        jacobian_singular_values(net, torch.zeros(0, 4))


def test_espn_stop_rule_per_step_or_per_epoch():
    """check_every='step' stops right after the step that reaches the keep count; 'epoch'
    finishes the epoch first (the authors' MNIST/CIFAR scripts)."""
    from prunekit.sparse.espn import run_search

    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))  # 2 steps per epoch at batch 16
    for mode, last_step in (("step", 1), ("epoch", 2)):
        s = ESPNSearch(three(), sparsity=0.5, alpha=1e-6, threshold=2.0)  # done after any step
        epochs, reached, hist = run_search(s, data, lr=0.01, max_epochs=3, batch_size=16, check_every=mode)
        assert reached and epochs == 1 and hist[-1]["step"] == last_step, mode
        assert hist[-1]["mask_on"] == 0 and hist[-1]["mask_target"] == s.keep_count()
    s = ESPNSearch(three(), sparsity=0.5, alpha=1e-6)
    epochs, reached, hist = run_search(s, data, lr=0.01, max_epochs=2, batch_size=16, check_every="step")
    assert not reached and epochs == 2 and hist[-1]["step"] == 4
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        ESPNSearch(three(), keep_ratio=1.5)
    assert ESPNSearch(three(), keep_ratio=1.0, alpha=0.1).keep_count() == s.total
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        ESPNSearch(three(), sparsity=1.0)
