"""cost="sensitivity": the allocation minimises the *measured* loss increase, not a proxy.

The reference loss here is computed independently (plain cross-entropy of a model slimmed by
``slim_with_plan``), and the allocation is checked against a brute force over every width
pair, through ``latency_slim`` with a fixed fake latency table."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit.structured import channel_groups, slim_with_plan
from prunekit.structured.selection import latency_aware as la
from prunekit.structured.selection.importance import group_scores
from prunekit.structured.selection.sensitivity import sensitivity_table

TABLE_A = {16: 1.0, 8: 0.7, 4: 0.55, 2: 0.5}
TABLE_B = {32: 1.0, 24: 0.85, 16: 0.7, 8: 0.55}


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)  # labels the dense net fits: narrowing can only lose
    groups = channel_groups(net, x[:1])
    scores = group_scores(net, groups, "l1")
    (ra, a), (rb, b) = sorted(la.roles_of(groups, scores).items(), key=lambda kv: kv[1][0].size)
    return net, x, y, groups, scores, (ra, a), (rb, b)


def _reference_loss(net, x, y, groups, scores, members, kp):
    plan = la._role_plan(members, scores, kp)
    m = slim_with_plan(net, x[:1], plan, groups=groups) if plan else net
    with torch.no_grad():
        return F.cross_entropy(m(x), y).item()


def test_the_table_is_each_roles_loss_increase_measured_alone():
    net, x, y, groups, scores, (ra, a), (rb, b) = _setup()
    roles = {ra: a, rb: b}
    widths = {ra: list(TABLE_A), rb: list(TABLE_B)}
    sens = sensitivity_table(net, x[:1], groups, widths, lambda n, kp: la._role_plan(roles[n], scores, kp), (x, y))
    dense = _reference_loss(net, x, y, groups, scores, a, 16)
    for name, members in roles.items():
        for kp in widths[name]:
            want = max(0.0, _reference_loss(net, x, y, groups, scores, members, kp) - dense)
            assert sens[name][kp] == pytest.approx(want, abs=1e-5)
    assert sens[ra][16] == 0.0 and sens[rb][32] == 0.0
    assert sens[ra][2] > sens[ra][8] > 0  # the narrowest width of a layer the net relies on hurts most


def test_latency_slim_allocates_the_least_measured_loss_that_meets_the_budget(tmp_path, monkeypatch):
    net, x, y, groups, scores, (ra, a), (rb, b) = _setup()
    table = {ra: TABLE_A, rb: TABLE_B}
    monkeypatch.setattr(la, "measure_table", lambda *args, **kw: {k: dict(v) for k, v in table.items()})
    monkeypatch.setattr(la, "floor_speedup", lambda *args, **kw: None)
    import prunekit.metrics.latency as lat

    # the 'machine' runs exactly as the table predicts, so the first allocation is the answer
    def fake(ms, inputs, **kw):
        out = {}
        for k, m in ms.items():
            w = {ra: m[0].out_channels, rb: m[2].out_channels}
            out[k] = la.predicted_ratio(table, w)
        return out

    monkeypatch.setattr(lat, "compare_latency", fake)
    dense = _reference_loss(net, x, y, groups, scores, a, 16)
    loss = {(name, kp): _reference_loss(net, x, y, groups, scores, members, kp) - dense
            for name, members in ((ra, a), (rb, b)) for kp in table[name]}
    for speedup in (1.6, 2.0):
        s = la.latency_slim(net, x[:1], speedup=speedup, cache_dir=tmp_path, cost="sensitivity", data=(x, y),
                            max_iters=1)
        rep = la.latency_report(s)
        feasible = [(ka, kb) for ka, kb in itertools.product(TABLE_A, TABLE_B)
                    if la.predicted_ratio(table, {ra: ka, rb: kb}) <= 1 / speedup + 1e-9]
        best = min(feasible, key=lambda p: max(0.0, loss[(ra, p[0])]) + max(0.0, loss[(rb, p[1])]))
        assert (s[0].out_channels, s[2].out_channels) == best
        assert rep["cost"] == "sensitivity" and set(rep["sensitivity"]) == {ra, rb}
        assert "sensitivity" in rep["phase_seconds"]


def test_sensitivity_without_labelled_data_is_refused_before_any_timing(tmp_path, monkeypatch):
    net, x, *_ = _setup()
    monkeypatch.setattr(la, "floor_speedup", lambda *a, **k: pytest.fail("timed before checking the data"))
    for data in (None, x):
        with pytest.raises(ValueError, match=r"cost 'sensitivity' needs data=\(inputs, targets\)"):
            la.latency_slim(net, x[:1], speedup=1.5, cache_dir=tmp_path, cost="sensitivity", data=data)
