"""SNIP, GraSP and SynFlow scores against independent computations on tiny models."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit.sparse import masks as M
from prunekit.sparse.scores import grasp_scores, score_masks, scores, synflow_masks


def two_layer(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False)).to(dtype)


def batch(n=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def closed_form_grads(w1, w2, x, y, temperature=1.0):
    """Gradients of mean CE(W2 W1 x / T) for the 2-layer linear net, by hand."""
    h = x @ w1.T
    z = h @ w2.T / temperature
    d = (torch.softmax(z, 1) - F.one_hot(y, 3).to(z.dtype)) / (len(y) * temperature)  # dL/d(W2 h)
    return (w2.T @ d.T) @ x, d.T @ h


def test_snip_matches_closed_form():
    net = two_layer()
    x, y = batch()
    w1, w2 = net[0].weight.detach(), net[1].weight.detach()
    g1, g2 = closed_form_grads(w1, w2, x, y)
    raw = {"0.weight": (g1 * w1).abs(), "1.weight": (g2 * w2).abs()}
    total = sum(v.sum() for v in raw.values())
    s = scores(net, "snip", (x, y))
    assert set(s) == {"0.weight", "1.weight"}
    for k in raw:
        torch.testing.assert_close(s[k].double(), raw[k] / total)
    assert float(sum(v.sum() for v in s.values())) == pytest.approx(1.0)


def test_grasp_matches_finite_difference_hessian_vector_product():
    net = two_layer()
    x, y = batch()
    T = 3.0
    params = [net[0].weight, net[1].weight]

    def grads(ps):
        h = x @ ps[0].T
        return torch.autograd.grad(F.cross_entropy(h @ ps[1].T / T, y), ps)

    g = [t.detach() for t in grads(params)]
    eps = 1e-5
    plus = [(p + eps * gi).detach().requires_grad_() for p, gi in zip(params, g)]
    minus = [(p - eps * gi).detach().requires_grad_() for p, gi in zip(params, g)]
    hg = [(a - b) / (2 * eps) for a, b in zip(grads(plus), grads(minus))]
    s = grasp_scores(net, (x, y), temperature=T, reinit_classifier=False)
    torch.testing.assert_close(s["0"], -params[0].detach() * hg[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(s["1"], -params[1].detach() * hg[1], rtol=1e-5, atol=1e-9)


def test_grasp_removes_the_highest_scores():
    net = two_layer()
    x, y = batch()
    s = grasp_scores(net, (x, y), reinit_classifier=False)
    m = score_masks(net, "grasp", 0.5, (x, y), reinit_classifier=False)
    flat_s = torch.cat([s[k].flatten() for k in ("0", "1")])
    flat_m = torch.cat([m[k].flatten() for k in ("0", "1")])
    assert int(flat_m.sum()) == M.keep_count(flat_s.numel(), 0.5)
    assert flat_s[flat_m].max() <= flat_s[~flat_m].min()


def test_synflow_matches_closed_form_for_linear_net():
    net = two_layer()
    with torch.no_grad():
        net[0].weight.mul_(-1)  # signs must not matter: SynFlow uses |theta|
    a1, a2 = net[0].weight.detach().abs(), net[1].weight.detach().abs()
    # R = 1^T |W2| |W1| 1 -> dR/dW1[i, j] = sum_k |W2[k, i]|, dR/dW2[k, i] = sum_j |W1[i, j]|
    s = scores(net, "synflow", (torch.zeros(2, 5), None))
    torch.testing.assert_close(s["0.weight"].double(), a1 * a2.sum(0)[:, None], rtol=1e-6, atol=0)
    torch.testing.assert_close(s["1.weight"].double(), a2 * a1.sum(1)[None, :], rtol=1e-6, atol=0)


def test_synflow_uses_abs_batchnorm_statistics_and_eval_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([-5.0, 1.0]))
        net[1].running_var.copy_(torch.tensor([4.0, 0.25]))
        net[1].weight.copy_(torch.tensor([-2.0, 3.0]))
        net[1].bias.copy_(torch.tensor([0.5, -0.5]))
    s = scores(net, "synflow", (torch.zeros(1, 3), None))
    w1, w2 = net[0].weight.detach().abs(), net[2].weight.detach().abs()
    gamma = torch.tensor([2.0, 3.0]) / torch.sqrt(torch.tensor([4.0, 0.25]) + 1e-5)
    # dR/dW1[i, j] = |W2[0, i]| * gamma_i (the BN shift does not depend on W1)
    torch.testing.assert_close(s["0.weight"], w1 * (w2[0] * gamma)[:, None], rtol=1e-5, atol=0)


def test_scores_leave_the_model_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 4, (6,))
    before = copy.deepcopy(net.state_dict())
    net.train()
    for method in ("snip", "grasp", "synflow", "magnitude"):
        s = scores(net, method, (x, y))
        assert set(s) == {"0.weight", "4.weight"}
        assert s["0.weight"].shape == net[0].weight.shape
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())


def test_pruned_weights_stay_pruned_and_score_zero():
    net = two_layer(dtype=torch.float32)
    x, y = batch(dtype=torch.float32)
    M.apply_masks(net, M.magnitude_masks(net, 0.5))
    s = scores(net, "snip", (x, y))
    assert (s["0.weight"][~M.current_mask(net[0])] == 0).all()
    m = score_masks(net, "snip", 0.8, (x, y))
    for name, old in M.get_masks(net).items():
        assert not (m[name] & ~old).any()  # nothing pruned comes back


def test_iterative_synflow_exact_count_and_nested():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    m = synflow_masks(net, 0.95, rounds=10, input_shape=(20,))
    total = 20 * 30 + 30 * 10
    assert sum(int(v.sum()) for v in m.values()) == M.keep_count(total, 0.95)
    assert not any(hasattr(mod, "parametrizations") for mod in net.modules())  # worked on a copy


def test_bad_inputs_are_named():
    net = two_layer()
    with pytest.raises(ValueError, match="unknown score method 'snipp'"):
        scores(net, "snipp", batch())
    with pytest.raises(ValueError, match="snip needs batch"):
        scores(net, "snip", None)
    with pytest.raises(ValueError, match="synflow needs the input shape"):
        scores(net, "synflow")
