"""NetAdapt: one role narrowed per iteration, the proposal that scores best after its short
fine-tune kept (with those weights), until the measured speed-up is reached.

The 'machine' here runs exactly as a fixed latency table predicts (as in the sensitivity tests),
so every choice has a known answer; the score is a function of the widths we control."""
import pytest
import torch
import torch.nn as nn

from prunekit.methods import get
from prunekit.methods.netadapt import proposal_trainer
from prunekit.structured.selection import latency_aware as la
from prunekit.structured.selection import netadapt as na
from test_mechanics_common import make_ctx, tiny_data

TABLE_A = {16: 1.0, 8: 0.8, 4: 0.7, 2: 0.65}
TABLE_B = {32: 1.0, 24: 0.9, 16: 0.8, 8: 0.7}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def _fake_machine(monkeypatch, floor=None, gain=1.0):
    net, x = _net(), torch.randn(1, 3, 8, 8)
    groups = la.channel_groups(net, x)
    names = sorted(la.roles_of(groups, la.group_scores(net, groups, "l1")), key=lambda r: int(r.split("|")[1]))
    ra, rb = names
    table = {ra: TABLE_A, rb: TABLE_B}
    monkeypatch.setattr(la, "measure_table", lambda *a, **k: {r: dict(v) for r, v in table.items()})
    monkeypatch.setattr(la, "floor_speedup", lambda *a, **k: floor)
    import prunekit.metrics.latency as lat

    def fake(ms, inputs, **kw):
        # the machine saves ``gain`` times what the table predicts (1.0: exactly the table)
        return {k: 1 - gain * (1 - la.predicted_ratio(table, {ra: m[0].out_channels, rb: m[2].out_channels}))
                for k, m in ms.items()}

    monkeypatch.setattr(lat, "compare_latency", fake)
    return net, x, ra, rb


def test_proposal_width_known_answers():
    row, allowed = TABLE_B, [32, 24, 16, 8]
    assert na.proposal_width(row, allowed, 32, 0.05) == 24   # the widest that removes enough
    assert na.proposal_width(row, allowed, 32, 0.15) == 16
    assert na.proposal_width(row, allowed, 24, 0.5) == 8     # not enough anywhere: the most it can give
    assert na.proposal_width(row, allowed, 8, 0.01) is None  # at its narrowest


def test_each_iteration_keeps_the_best_scored_fine_tuned_proposal(tmp_path, monkeypatch):
    net, x, ra, rb = _fake_machine(monkeypatch)
    calls = []

    def short_finetune(model, it):
        calls.append((it, model[0].out_channels, model[2].out_channels, model.training))
        with torch.no_grad():
            model[6].bias += 1.0  # a mark: the kept model must carry every kept proposal's training
        return 3

    # narrowing role A costs more than B until B is at 16: the known path is B 24, B 16, then A
    def score(model):
        a, b = model[0].out_channels, model[2].out_channels
        return -(16 - a) * 1.0 - {32: 0, 24: 0.1, 16: 0.2, 8: 50.0}[b]

    s = na.netadapt_slim(net, x, 1.6, short_finetune, score, cache_dir=tmp_path, first_step=0.1, decay=1.0)
    rep = la.latency_report(s)
    chosen = [(h["chosen"], h["kept"]) for h in rep["iterations"]]
    assert chosen[:2] == [(rb, 24), (rb, 16)]
    assert (s[0].out_channels, s[2].out_channels) == (8, 16)  # 1 - 0.2 (A at 8) - 0.2 (B at 16) = 0.6 <= 1/1.6
    assert rep["achieved"] == pytest.approx(1 / 0.6)
    # one short fine-tune per proposal, in train mode; the first iteration proposes both roles
    assert [c[0] for c in calls].count(0) == 2 and all(c[3] for c in calls)
    assert rep["short_term_steps"] == {"kept": 3 * len(chosen), "total": 3 * len(calls)}
    assert torch.allclose(s[6].bias, net[6].bias + len(chosen))  # the weights of every kept proposal
    assert rep["allocation"]["0"]["kept"] == 8 and rep["allocation"]["2"]["kept"] == 16
    assert all(c[1:3] != (16, 32) for c in calls)  # never 'proposes' the unchanged model


def test_the_schedule_caps_each_step_at_what_is_left(tmp_path, monkeypatch):
    net, x, ra, rb = _fake_machine(monkeypatch)
    s = na.netadapt_slim(net, x, 1.25, lambda m, it: 0, lambda m: -m[0].out_channels * 0 - (32 - m[2].out_channels),
                         cache_dir=tmp_path, first_step=0.5, decay=0.5)
    deltas = [h["delta"] for h in la.latency_report(s)["iterations"]]
    assert deltas[0] == pytest.approx(0.2)  # 1 - 1/1.25 left, less than first_step
    assert la.latency_report(s)["achieved"] >= 1.25 * 0.95


def test_measured_savings_larger_than_the_table_stop_it_early_not_overshoot(tmp_path, monkeypatch):
    # the machine saves twice what the table says: after B 32 -> 24 (table 0.1, measured 0.2) a 1.6x
    # request (0.375 to remove) has 0.175 left, 0.0875 in table units, so B -> 16 ends it at 1.67x;
    # following the table alone would also narrow A, and land at 5x
    net, x, ra, rb = _fake_machine(monkeypatch, gain=2.0)
    s = na.netadapt_slim(net, x, 1.6, lambda m, it: 0, lambda m: (m[0].out_channels, m[2].out_channels),
                         cache_dir=tmp_path, first_step=0.1, decay=1.0)
    rep = la.latency_report(s)
    assert (s[0].out_channels, s[2].out_channels) == (16, 16)
    assert [h["delta"] for h in rep["iterations"]] == pytest.approx([0.1, 0.0875])
    assert rep["achieved"] == pytest.approx(1 / 0.6)


def test_unreachable_request_is_refused_before_any_training(tmp_path, monkeypatch):
    net, x, *_ = _fake_machine(monkeypatch, floor=1.3)
    with pytest.raises(la.UnreachableSpeedupError, match=r"ask for at most 1\.30x"):
        na.netadapt_slim(net, x, 3.0, lambda m, it: pytest.fail("trained"), lambda m: 0, cache_dir=tmp_path)
    for bad in ({"first_step": 0.0}, {"first_step": 1.0}, {"decay": 0.0}, {"decay": 1.5}):
        with pytest.raises(ValueError, match="first_step|decay"):
            na.netadapt_slim(net, x, 2.0, lambda m, it: 0, lambda m: 0, cache_dir=tmp_path, **bad)


def test_proposals_train_and_are_scored_on_disjoint_training_samples(monkeypatch):
    from prunekit.data.base import TensorData
    from prunekit.training import TrainHparams
    import prunekit.methods.netadapt as mod

    n = 40
    ts = TensorData(torch.arange(n, dtype=torch.float32).view(n, 1), torch.zeros(n))
    seen = {"train": [], "held": None}

    class R:
        steps = 2

    monkeypatch.setattr(mod, "train", lambda m, d, hp, **k: seen["train"].append((d.x.flatten().tolist(), hp)) or R)
    monkeypatch.setattr(mod, "evaluate", lambda m, d: seen.__setitem__("held", d.x.flatten().tolist())
                        or {"top1": 0.5, "loss": 1.0})
    recipe = TrainHparams(epochs=3, batch_size=4, lr=0.07, momentum=0.5, weight_decay=1e-3)
    fit, score = proposal_trainer(ts, recipe, short_steps=2, holdout=10, seed=3)
    assert fit(None, 0) == 2 and fit(None, 0) == 2 and fit(None, 1) == 2
    assert score(None) == (0.5, -1.0)
    held = set(seen["held"])
    assert len(held) == 10
    (x0, hp0), (x0b, _), (x1, _) = seen["train"]
    assert len(x0) == 8 and x0 == x0b and x1 != x0  # the same batches within an iteration, new ones after
    assert not held & set(x0 + x1)
    assert (hp0.lr, hp0.momentum, hp0.weight_decay, hp0.schedule, hp0.batch_size) == (0.07, 0.5, 1e-3, "constant", 4)
    with pytest.raises(ValueError, match="holdout must be between 1 and 39"):
        proposal_trainer(ts, recipe, 2, 40, 0)


def test_the_method_plans_on_the_runner_data_and_rejects_bad_input(monkeypatch):
    import prunekit.methods.netadapt as mod

    data = tiny_data(n_train=32)
    ctx = make_ctx(data, _net)
    calls = []
    monkeypatch.setattr(mod, "netadapt_slim", lambda model, x, sp, fit, score, **kw: calls.append((x, sp, kw)) or "s")
    assert get("netadapt", {"batch_size": 3, "first_step": 0.1, "decay": 0.9, "holdout": 8}).prune(_net(), 0.5, ctx) == "s"
    x, sp, kw = calls[0]
    assert torch.equal(x, data.train.x[:3]) and sp == pytest.approx(2.0)
    assert (kw["first_step"], kw["decay"], kw["criterion"]) == (0.1, 0.9, "l1")
    with pytest.raises(ValueError, match="fraction of latency removed"):
        get("netadapt").prune(_net(), 1.0, ctx)
    with pytest.raises(ValueError, match="first_step"):
        get("netadapt", {"first_step": 2.0}).prune(_net(), 0.5, ctx)
    with pytest.raises(ValueError, match="holdout must be between"):
        get("netadapt", {"holdout": 32}).prune(_net(), 0.5, ctx)
    assert len(calls) == 1
