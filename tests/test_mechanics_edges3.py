"""Last edges from mutation testing: defaults observed through behaviour, option pass-through
of the score front-ends, masked models under GraSP, exact error messages."""
import importlib

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import prunekit.sparse.espn as espn_sparse
from prunekit.sparse import masks as M
from prunekit.sparse.espn import ESPNSearch, default_alpha, run_search, search, search_path
from test_mechanics_common import tiny_data

S = importlib.import_module("prunekit.sparse.scores")


def three(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


def batch(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


def same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_score_defaults_by_behaviour():
    net, b = three(), batch()
    assert list(S.snip_scores(net, b)) == ["1", "3", "5"] and list(S.magnitude_scores(net)) == ["1", "3", "5"]
    assert same(S.grasp_scores(net, b), S.grasp_scores(net, b, temperature=200.0, reinit_classifier=True, seed=0))
    assert not same(S.grasp_scores(net, b), S.grasp_scores(net, b, temperature=201.0))
    assert not same(S.grasp_scores(net, b), S.grasp_scores(net, b, seed=1))


def test_score_front_ends_pass_options_through():
    net, b = three(), batch()
    want = S.grasp_scores(net, b, temperature=3.0, reinit_classifier=False)
    got = S.scores(net, "grasp", b, temperature=3.0, reinit_classifier=False)
    assert all(torch.equal(got[f"{k}.weight"], want[k]) for k in want)
    syn = S.scores(net, "synflow", None, input_shape=(1, 4, 4))
    assert all(torch.equal(syn[f"{k}.weight"], v) for k, v in S.synflow_scores(net, (1, 4, 4)).items())
    flat = nn.Sequential(nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
    ex = torch.randn(2, 16)  # a plain tensor example: its shape without the batch dimension
    assert all(torch.equal(a, c) for a, c in zip(S.synflow_scores(flat, None, example=ex).values(),
                                                 S.synflow_scores(flat, (16,)).values()))


def test_grasp_masks_keep_earlier_prunings_pruned():
    net, b = three(), batch()
    M.apply_masks(net, M.magnitude_masks(net, 0.6))
    old = M.get_masks(net)
    new = S.score_masks(net, "grasp", 0.7, b, temperature=2.0)
    assert all(not (new[n] & ~old[n]).any() for n in new)
    assert sum(int(v.sum()) for v in new.values()) == M.keep_count(200, 0.7)


def test_remove_masks_bakes_the_masked_value_with_other_parametrizations():
    class Twice(nn.Module):
        def forward(self, t):
            return 2 * t

    lin = nn.Linear(5, 3)
    mask = torch.rand(3, 5) > 0.5
    M.apply_masks(nn.Sequential(lin), {"0": mask})
    parametrize.register_parametrization(lin, "bias", Twice())
    with torch.no_grad():
        M.raw_weight(lin).fill_(1.0)  # raw entries behind the mask are no longer zero
    M.remove_masks(nn.Sequential(lin))
    assert torch.equal(lin.weight.detach(), mask.float())


def test_search_default_alpha_and_family_reach_the_search(monkeypatch):
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    seen = []
    real = espn_sparse.ESPNSearch

    class Spy(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append((self.alpha, self.threshold))

    monkeypatch.setattr(espn_sparse, "ESPNSearch", Spy)
    search(three(), data, 0.95, max_epochs=1, batch_size=16)
    search(three(), data, 0.95, alpha_family="cifar", threshold=0.3, max_epochs=1, batch_size=16)
    assert seen == [(pytest.approx(default_alpha(0.95, "mnist")), 1e-2),
                    (pytest.approx(default_alpha(0.95, "cifar")), 0.3)]


def test_search_path_defaults_reach_each_round(monkeypatch):
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    seen = []
    real = espn_sparse.run_search

    def spy(s, data, **kw):
        seen.append((s.alpha, s.threshold, len(s.modules)))
        return real(s, data, **kw)

    monkeypatch.setattr(espn_sparse, "run_search", spy)
    list(search_path(three(), data, [0.9], snapshots=False, lr=0.05, max_epochs=1, batch_size=16))
    assert seen == [(pytest.approx(default_alpha(0.9, "mnist")), 1e-2, 3)]


def test_exact_error_messages():
    with pytest.raises(ValueError, match=r"^give exactly one of sparsity or keep_ratio$"):
        ESPNSearch(three())
    with pytest.raises(ValueError, match=r"^model has no conv or linear layer to mask$"):
        ESPNSearch(nn.Sequential(nn.ReLU()), sparsity=0.5)
    with pytest.raises(ValueError, match=r"^check_every must be 'epoch' or 'step', got 'often'$"):
        run_search(ESPNSearch(three(), sparsity=0.5, alpha=0.1), tiny_data(), check_every="often")
    with pytest.raises(ValueError, match=r"^synflow needs the input shape: pass batch=\(inputs, targets\), inputs, "
                                         r"or input_shape=$"):
        S.synflow_scores(three())
    from prunekit.methods.imp import imp_path

    net = three()
    M.apply_masks(net, M.magnitude_masks(net, 0.5))
    with pytest.raises(ValueError, match=r"^imp_path needs the unmasked trained dense model \(level 0\)$"):
        next(imp_path(net, {}, [0.6]))


def _done_after_any_step():
    s = ESPNSearch(three(), sparsity=0.5, alpha=1e-6, threshold=2.0)  # every m (about 1) is below 2
    return s


def test_run_search_and_search_defaults_by_behaviour():
    """With defaults (lr 0.05, batch 128, seed 0, per-epoch check) the search equals the explicit call."""
    data = tiny_data(n_train=129, classes=4, shape=(1, 4, 4))  # 129 samples: 2 steps at batch 128
    a, b = _done_after_any_step(), _done_after_any_step()
    _, reached, hist = run_search(a, data)
    run_search(b, data, lr=0.05, max_epochs=300, batch_size=128, seed=0, check_every="epoch")
    assert reached and hist[-1]["step"] == 2
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    na, nb = three(), three()
    ra = search(na, data, 0.5, alpha=1e-6, threshold=2.0)
    search(nb, data, 0.5, alpha=1e-6, threshold=2.0, lr=0.05, max_epochs=300, batch_size=128, seed=0)
    assert ra.reached and ra.history[-1]["step"] == 2
    assert all(torch.equal(x, y) for x, y in zip(na.state_dict().values(), nb.state_dict().values()))
    assert list(search(three(), data, 0.5, alpha=1e-6, threshold=2.0, include_classifier=False,
                       max_epochs=1).masks) == ["1", "3"]


def test_epoch_check_stops_when_the_count_lands_exactly_on_the_target():
    data = tiny_data(n_train=32, classes=4, shape=(1, 4, 4))
    s = ESPNSearch(three(), keep_ratio=0.5, alpha=0.0)
    with torch.no_grad():
        k, o = s.keep_count(), 0
        for p in s.mask_parameters():
            p.copy_((torch.arange(o, o + p.numel()) < k).float().view_as(p))
            o += p.numel()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpha 0: the too-small-alpha warning is expected
        epochs, reached, _ = run_search(s, data, lr=1e-6, max_epochs=3, batch_size=16, check_every="epoch")
    assert s.count() == k and reached and epochs == 1


def test_soft_masks_follow_the_weights_device():
    assert SoftMask_device("meta") == "meta"
    net = three().to("meta")
    s = ESPNSearch(net, sparsity=0.5, alpha=0.1)
    assert all(p.device.type == "meta" for p in s.mask_parameters())


def SoftMask_device(dev):
    from prunekit.sparse.espn import SoftMask

    return SoftMask((2, 3), device=dev).m.device.type
