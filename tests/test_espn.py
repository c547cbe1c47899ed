"""ESPN search: penalty, stop rule, exact binarisation, folding, rounds, and masked weights staying zero."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import data as datasets
from prunekit.sparse import masks as M
from prunekit.sparse.espn import ESPNSearch, SoftMask, default_alpha, rising_targets, search, search_path
from prunekit.training import TrainHparams, train


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


@pytest.fixture(scope="module")
def tiny():
    return datasets.load("synthetic", shape=(1, 4, 4), num_classes=4, n_train=128, n_test=64)


def test_default_alpha_hits_the_official_end_points_and_rises():
    assert default_alpha(0.95) == pytest.approx(6e-5)
    assert default_alpha(0.996) == pytest.approx(6e-4)
    assert default_alpha(0.95, "cifar") == pytest.approx(8e-5)
    assert default_alpha(0.995, "cifar") == pytest.approx(5.5e-4)
    sp = [0.9, 0.95, 0.98, 0.99, 0.995, 0.998]
    a = [default_alpha(s) for s in sp]
    assert all(x < y for x, y in zip(a, a[1:]))
    with pytest.raises(ValueError, match="unknown alpha family"):
        default_alpha(0.9, "imagenet")


def test_penalty_count_and_keep_count():
    net = mlp()
    s = ESPNSearch(net, keep_ratio=0.1, alpha=0.5)
    n = 16 * 12 + 12 * 4
    assert s.total == n
    assert s.keep_count() == math.floor(n * 0.1)
    assert float(s.penalty().detach()) == pytest.approx(0.5 * n)  # masks start at 1
    assert s.count() == n and not s.done()
    with torch.no_grad():
        s.mask_parameters()[0].fill_(0.005)  # below the 1e-2 threshold
        s.mask_parameters()[1][:, :3].fill_(-2.0)  # negative: off under the signed comparison
    assert s.count() == 12 * 4 - 4 * 3
    # forward sees W * m
    x = torch.randn(2, 1, 4, 4)
    w1 = M.raw_weight(net[1]) * s.mask_parameters()[0]
    w2 = M.raw_weight(net[3]) * s.mask_parameters()[1]
    ref = F.linear(F.relu(F.linear(x.flatten(1), w1, net[1].bias)), w2, net[3].bias)
    torch.testing.assert_close(net(x), ref)


def test_binarize_is_global_top_k_of_abs_m_with_exact_count():
    net = mlp()
    s = ESPNSearch(net, sparsity=0.9, alpha=1e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in s.mask_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    masks = s.binarize()
    flat_m = torch.cat([p.detach().abs().flatten() for p in s.mask_parameters()])
    flat_k = torch.cat([masks[n].flatten() for n in ("1", "3")])
    assert int(flat_k.sum()) == s.keep_count() == math.floor(s.total * 0.1)
    assert flat_m[flat_k].min() >= flat_m[~flat_k].max()


def test_finish_folds_m_into_w_and_attaches_binary_masks():
    net = mlp()
    s = ESPNSearch(net, sparsity=0.8, alpha=1e-3)
    with torch.no_grad():
        for p in s.mask_parameters():
            p.copy_(torch.rand(p.shape) * 2 - 0.5)
    expect = {n: (M.raw_weight(m) * s.mask_parameters()[i]).detach().clone()
              for i, (n, m) in enumerate(s.modules.items())}
    masks = s.finish()
    for n, m in s.modules.items():
        assert torch.equal(M.current_mask(m), masks[n])
        torch.testing.assert_close(m.weight, expect[n] * masks[n])
        assert [type(p).__name__ for p in m.parametrizations.weight] == ["WeightMask"]


def test_search_reaches_the_target_with_exact_count(tiny):
    net = mlp()
    res = search(net, tiny, 0.9, alpha=0.05, lr=0.05, max_epochs=40, batch_size=32, check_every="step")
    assert res.reached and res.epochs < 40
    kept = sum(int(v.sum()) for v in M.get_masks(net).values())
    assert kept == M.keep_count(16 * 12 + 12 * 4, 0.9)
    assert M.sparsity_report(net)["sparsity_prunable"] >= 0.9


def test_search_stops_by_epoch_when_asked(tiny):
    net = mlp()
    res = search(net, tiny, 0.5, alpha=1e-6, lr=0.01, max_epochs=2, batch_size=64, check_every="epoch")
    assert res.epochs == 2 and not res.reached  # tiny alpha: the cap ends the search
    assert sum(int(v.sum()) for v in M.get_masks(net).values()) == M.keep_count(240, 0.5)


def test_rounds_rise_and_keep_earlier_prunings(tiny):
    assert rising_targets(0.99, 2) == pytest.approx([0.9, 0.99])
    net = mlp()
    previous = None
    alphas = []
    for t, res, pruned in search_path(net, tiny, [0.5, 0.8, 0.9], alpha_for=lambda t: alphas.append(t) or 0.05,
                                      lr=0.05, max_epochs=10, batch_size=32, check_every="step"):
        masks = M.get_masks(pruned)
        assert sum(int(v.sum()) for v in masks.values()) == M.keep_count(240, t)
        assert all(torch.equal(masks[n], res.masks[n]) for n in masks)
        assert not any(isinstance(p, SoftMask) for mod in pruned.modules()
                       if hasattr(mod, "parametrizations") for p in mod.parametrizations.weight)
        previous = masks
    assert alphas[-3:] == [0.5, 0.8, 0.9]  # one alpha per target
    assert pruned is net and previous is not None  # the last target finishes the model itself
    with pytest.raises(ValueError, match="rise strictly"):
        list(search_path(net, tiny, [0.9, 0.5]))


def test_masked_weights_stay_zero_through_training_with_momentum_and_weight_decay(tiny):
    net = mlp()
    search(net, tiny, 0.9, alpha=0.05, lr=0.05, max_epochs=5, batch_size=32, check_every="step")
    masks = M.get_masks(net)
    hp = TrainHparams(epochs=3, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-3)
    train(net, tiny, hp, progress=False)
    for n, m in M.prunable_modules(net).items():
        assert (M.raw_weight(m)[~masks[n]] == 0).all()
        assert (m.weight[~masks[n]] == 0).all()
        assert (m.weight[masks[n]] != 0).any()


def test_search_on_a_copy_leaves_the_original_working():
    net = mlp()
    M.apply_masks(net, M.magnitude_masks(net, 0.5))
    twin = copy.deepcopy(net)
    s = ESPNSearch(twin, sparsity=0.7, alpha=1e-3)
    s.finish()
    x = torch.randn(3, 1, 4, 4)
    net(x)  # the original (sharing Parametrized* classes with the copy) must still run
    assert M.sparsity_report(net)["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of sparsity or keep_ratio"):
        ESPNSearch(mlp(), sparsity=0.9, keep_ratio=0.1)
    with pytest.raises(ValueError, match="keep_ratio"):
        ESPNSearch(mlp(), keep_ratio=0.0)
    with pytest.raises(ValueError, match="alpha"):
        ESPNSearch(mlp(), sparsity=0.9, alpha=-1.0)
    with pytest.raises(ValueError, match="no conv or linear"):
        ESPNSearch(nn.Sequential(nn.ReLU()), sparsity=0.5)


def test_a_diverging_search_fails_loudly(tiny):
    with pytest.raises(FloatingPointError, match="diverged"):
        search(mlp(), tiny, 0.9, alpha=1e-3, lr=1e6, max_epochs=3, batch_size=32)


def test_method_warns_when_the_cap_ends_the_search_and_not_when_it_reaches(tiny):
    import warnings

    from prunekit.methods import Context, get

    ctx = Context(data=tiny, finetune=TrainHparams(epochs=1, batch_size=32), pretrain=TrainHparams(epochs=1),
                  build_model=mlp, example_inputs=tiny.example_inputs(2), seed=0)
    with pytest.warns(RuntimeWarning, match="hit its 1-epoch cap"):
        get("espn", {"alpha": 1e-6, "max_search_epochs": 1}).prune(mlp(), 0.5, ctx)
    meth = get("espn", {"alpha": 0.05, "max_search_epochs": 40})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pruned = meth.prune(mlp(), 0.9, ctx)
    assert meth.last_search["rounds"][0]["reached"] and meth.last_search["epochs"] < 40
    assert sum(int(v.sum()) for v in M.get_masks(pruned).values()) == M.keep_count(240, 0.9)
