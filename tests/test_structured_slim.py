"""Slimming the reference zoo, exact indices, save/load, importance, planning, bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from prunekit import models
from prunekit.foundations.io import CheckpointError
from prunekit.structured import (TraceError, channel_groups, check_exact, get_plan, group_scores, load_pruned,
                                 plan_removal, register_criterion, save_pruned, slim, slim_with_plan)
from prunekit.structured.selection.importance import CRITERIA

torch.set_num_threads(1)

# (model, input channels, input size, options): small inputs / widths keep this fast
ZOO = {
    "resnet20": (3, 32, {}), "resnet32": (3, 16, {"option": "B"}), "resnet56": (3, 16, {}),
    "resnet110": (3, 8, {"width": 0.5}), "vgg11-bn": (3, 32, {"width": 0.25}),
    "vgg16-bn": (3, 32, {"width": 0.25}), "vgg19-bn": (3, 32, {"width": 0.25}),
    "mobilenetv2": (3, 16, {"width": 0.5}), "resnet18": (3, 64, {"width": 0.25}),
    "resnet50": (3, 64, {"width": 0.25}), "vit": (3, 16, {"dim": 48, "depth": 2, "heads": 3, "patch": 4}),
    "mlp7-linear": (1, 32, {}), "lenet-300-100": (1, 28, {}), "lenet5-caffe": (1, 28, {}),
}


def randomise_norms(model: nn.Module, seed: int = 0, calibrate_on: torch.Tensor | None = None) -> nn.Module:
    """Non-trivial norm affine parameters, so zeroing bugs cannot hide; BN statistics are
    then measured on ``calibrate_on`` so activations keep a realistic scale through deep
    nets (float32 rounding is judged in absolute terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if bns and calibrate_on is not None:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
            model.train()
            model(calibrate_on)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def build(name, seed=0):
    c, s, kw = ZOO[name]
    torch.manual_seed(seed)
    x = torch.randn(2, c, s, s, dtype=torch.float64)
    calib = torch.randn(16, c, s, s, generator=torch.Generator().manual_seed(seed))
    m = randomise_norms(models.build(name, c, s, 10, **kw), seed, calib).double().eval()
    return m, x


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_zoo_is_covered():
    assert set(ZOO) == set(models.names())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_slims_exactly(name):
    m, x = build(name)
    s = slim(m, x, 0.4, criterion="random", seed=1)
    assert n_params(s) < n_params(m)
    assert s(x).shape == m(x).shape
    assert check_exact(m, s, inputs=x) < 1e-9
    # and in float32, the precision the requirement is stated in
    mf, sf = m.float(), s.float()
    assert check_exact(mf, sf, inputs=x.float()) < 1e-5


def test_slim_with_plan_removes_exactly_the_given_indices():
    m, x = build("resnet20")
    groups = channel_groups(m, x)
    g = next(g for g in groups if [n for n, _ in g.out_layers] == ["layer1.0.conv1"])
    s = slim_with_plan(m, x, {g.id: torch.tensor([0, 3, 7])}, groups=groups)
    keep = [i for i in range(16) if i not in (0, 3, 7)]
    assert torch.equal(s.layer1[0].conv1.weight, m.layer1[0].conv1.weight[keep])
    assert torch.equal(s.layer1[0].conv2.weight, m.layer1[0].conv2.weight[:, keep])
    assert torch.equal(s.layer1[0].bn1.running_mean, m.layer1[0].bn1.running_mean[keep])
    assert s.layer1[0].conv1.out_channels == 13 and s.layer1[0].bn1.num_features == 13
    assert s.layer1[0].conv2.in_channels == 13
    assert m.layer1[0].conv1.weight.shape[0] == 16  # the original is untouched
    plan = get_plan(s)
    sl = {(e["tensor"], e["dim"]): e["keep"] for e in plan["slices"]}
    assert sl[("layer1.0.conv1.weight", 0)] == keep
    assert check_exact(m, s, inputs=x) < 1e-9


def test_residual_group_with_padding_shortcut_slims_with_offsets():
    m, x = build("resnet20")
    groups = channel_groups(m, x)
    res = groups[0]
    assert "conv1" in [n for n, _ in res.out_layers]
    s = slim_with_plan(m, x, {res.id: torch.tensor([2, 5])}, groups=groups)
    # stage-1 channels 2 and 5 sit at 8+2, 8+5 in stage 2 and at 24+2, 24+5 in stage 3
    assert s.layer2[1].conv2.out_channels == 30 and s.layer3[1].conv2.out_channels == 62
    keep3 = [i for i in range(64) if i not in (26, 29)]
    assert torch.equal(s.fc.weight, m.fc.weight[:, keep3])
    assert check_exact(m, s, inputs=x) < 1e-9


def test_repeated_slimming_composes_plans_and_round_trips(tmp_path):
    m, x = build("vit")
    s1 = slim(m, x, 0.3, criterion="l1")
    s2 = slim(s1, x, 0.3, criterion="l2")
    assert n_params(s2) < n_params(s1) < n_params(m)
    assert check_exact(m, s2, inputs=x) < 1e-9  # composed plan refers to the original
    save_pruned(s2, tmp_path / "vit")
    fresh = build("vit", seed=5)[0]  # different weights: everything must come from the files
    loaded = load_pruned(tmp_path / "vit", fresh)
    assert torch.equal(loaded(x), s2(x))
    assert loaded.blocks[0].attn.num_heads == s2.blocks[0].attn.num_heads


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "lenet5-caffe"])
def test_save_load_round_trip_is_exact(name, tmp_path):
    m, x = build(name)
    s = slim(m, x, 0.5)
    save_pruned(s, tmp_path / name)
    assert (tmp_path / name / "plan.json").exists() and (tmp_path / name / "model.safetensors").exists()
    loaded = load_pruned(tmp_path / name, build(name, seed=3)[0])
    assert torch.equal(loaded(x), s(x))
    assert n_params(loaded) == n_params(s)


def test_load_errors_are_clear(tmp_path):
    m, x = build("resnet20")
    s = slim(m, x, 0.5)
    save_pruned(s, tmp_path / "r")
    with pytest.raises(CheckpointError, match="missing"):
        load_pruned(tmp_path / "nothing", build("resnet20")[0])
    with pytest.raises(CheckpointError, match="CifarResNet"):
        load_pruned(tmp_path / "r", build("vgg11-bn")[0])
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pruned(tmp_path / "r", models.build("resnet20", 3, 32, 10, width=2.0))
    (tmp_path / "r" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_pruned(tmp_path / "r", build("resnet20")[0])


# ---- importance ---------------------------------------------------------------------


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_magnitude_criteria_match_direct_computation():
    torch.manual_seed(0)
    m = randomise_norms(TwoLayer())
    x = torch.randn(4, 6)
    groups = channel_groups(m, x)
    g = next(g for g in groups if g.prunable)
    w1, b1, w2 = m.fc1.weight.detach(), m.fc1.bias.detach(), m.fc2.weight.detach()
    l1 = group_scores(m, groups, "l1")[g.id]
    assert torch.allclose(l1, w1.abs().mean(1) + b1.abs() + w2.abs().mean(0))
    l2 = group_scores(m, groups, "l2")[g.id]
    assert torch.allclose(l2, (w1.pow(2).mean(1) + b1.pow(2) + w2.pow(2).mean(0)).sqrt())
    lf = group_scores(m, groups, "l1-filter")[g.id]
    assert torch.allclose(lf, w1.abs().sum(1) + b1.abs())
    bn = group_scores(m, groups, "bn_scale")[g.id]
    assert torch.allclose(bn, m.bn.weight.detach().abs())


def test_taylor_matches_autograd():
    torch.manual_seed(0)
    m = randomise_norms(TwoLayer()).eval()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    groups = channel_groups(m, x)
    g = next(g for g in groups if g.prunable)
    got = group_scores(m, groups, "taylor", data=(x, y))[g.id]
    loss = nn.functional.cross_entropy(m(x), y)
    params = [m.fc1.weight, m.fc1.bias, m.fc2.weight, m.bn.weight, m.bn.bias]
    grads = torch.autograd.grad(loss, params)
    gw1, gb1, gw2, gg, gb = grads
    ref = ((m.fc1.weight * gw1).sum(1) + m.fc1.bias * gb1 + (m.fc2.weight * gw2).sum(0)
           + m.bn.weight * gg + m.bn.bias * gb).detach().pow(2)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-10)
    with pytest.raises(ValueError, match="data"):
        group_scores(m, groups, "taylor")


def test_custom_criteria_callable_and_registered():
    m, x = build("mlp7-linear")
    s = slim(m, x, 0.5, criterion=lambda model, group: torch.arange(group.size, dtype=torch.float))
    kept = get_plan(s)["slices"][0]["keep"]
    assert kept == list(range(50, 100))  # the lowest scores (first indices) went

    if "test-reverse" not in CRITERIA:
        register_criterion("test-reverse", lambda model, group: -torch.arange(group.size, dtype=torch.float))
    s = slim(m, x, 0.5, criterion="test-reverse")
    assert get_plan(s)["slices"][0]["keep"] == list(range(50))


# ---- planning -------------------------------------------------------------------------


def _sizes(model, groups, pruned):
    return {g.id: g.size - len(pruned.get(g.id, [])) for g in groups if g.prunable}


def test_uniform_ratio_round_to_and_minimum():
    m, x = build("resnet20")
    groups = channel_groups(m, x)
    scores = group_scores(m, groups, "l1")
    kept = _sizes(m, groups, plan_removal(groups, scores, 0.5))
    assert all(kept[g.id] == g.size // 2 for g in groups if g.prunable)
    kept = _sizes(m, groups, plan_removal(groups, scores, 0.6, round_to=8))
    # 16 -> remove ceil(9.6)=10, keep 6 -> 8; 32 -> keep 12 -> 16; 64 -> keep 25 -> 32
    assert all(kept[g.id] == {16: 8, 32: 16, 64: 32}[g.size] for g in groups if g.prunable)
    kept = _sizes(m, groups, plan_removal(groups, scores, 0.999))
    assert all(v == 1 for v in kept.values())


def test_overrides_and_skip_by_pattern():
    m, x = build("resnet20")
    groups = channel_groups(m, x)
    scores = group_scores(m, groups, "l1")
    pruned = plan_removal(groups, scores, 0.5, overrides={"layer1.*.conv1": 0.25}, skip=["layer3"])
    for g in groups:
        if not g.prunable:
            continue
        first = g.out_layers[0][0]
        if first.startswith("layer1.") and first.endswith("conv1"):
            assert len(pruned[g.id]) == 4
        elif any(n.startswith("layer3") for n in g.producers):
            assert g.id not in pruned
        else:
            assert len(pruned[g.id]) == g.size // 2


def test_global_ranking_spends_the_budget():
    m, x = build("vgg11-bn")
    groups = channel_groups(m, x)
    scores = group_scores(m, groups, "l1")
    pruned = plan_removal(groups, scores, 0.4, mode="global")
    total = sum(g.size for g in groups if g.prunable)
    removed = sum(len(v) for v in pruned.values())
    assert removed == math.floor(0.4 * total)
    assert all(len(pruned.get(g.id, [])) < g.size for g in groups if g.prunable)
    # uneven: global ranking does not remove the same fraction everywhere
    fracs = {len(pruned.get(g.id, [])) / g.size for g in groups if g.prunable}
    assert len(fracs) > 1


def test_flops_target_is_reached():
    from prunekit.metrics import flops

    m, x = build("resnet20")
    m, x = m.float(), x.float()
    s = slim(m, x, None, flops_reduction=0.5)
    red = 1 - flops(s, x)["dense"] / flops(m, x)["dense"]
    assert 0.5 <= red < 0.6
    with pytest.raises(ValueError, match="cannot remove"):
        slim(m, x, None, flops_reduction=0.999)


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_out_of_range(ratio):
    m, x = build("mlp7-linear")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        slim(m, x, ratio)


def test_bad_arguments_are_named():
    m, x = build("mlp7-linear")
    with pytest.raises(TypeError, match="ratio"):
        slim(m, x, "half")
    with pytest.raises(KeyError, match="unknown importance criterion 'l7'.*l1"):
        slim(m, x, 0.5, criterion="l7")
    with pytest.raises(ValueError, match="round_to"):
        slim(m, x, 0.5, round_to=0)
    groups = channel_groups(m, x)
    g = next(g for g in groups if g.prunable)
    with pytest.raises(KeyError, match="no channel group with id 999"):
        slim_with_plan(m, x, {999: torch.tensor([0])}, groups=groups)
    with pytest.raises(ValueError, match="cannot remove all"):
        slim_with_plan(m, x, {g.id: torch.arange(g.size)}, groups=groups)
    with pytest.raises(ValueError, match="out of range"):
        slim_with_plan(m, x, {g.id: torch.tensor([g.size])}, groups=groups)
    frozen = next(g for g in groups if not g.prunable)
    with pytest.raises(ValueError, match="cannot be pruned"):
        slim_with_plan(m, x, {frozen.id: torch.tensor([0])}, groups=groups)


def test_partial_attention_head_is_rejected():
    m, x = build("vit")
    groups = channel_groups(m, x)
    g = next(g for g in groups if g.unit > 1)
    with pytest.raises(ValueError, match="whole units"):
        slim_with_plan(m, x, {g.id: torch.tensor([0])}, groups=groups)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.inner = Broken()

    def forward(self, x):
        return self.inner(self.conv(x))


class Broken(nn.Module):
    def forward(self, x):
        return x.view(7, -1, 5)  # wrong for the example input


def test_untraceable_model_names_module_and_op():
    with pytest.raises(TraceError, match=r"module 'inner' \(Broken\).*'view'.*ignore="):
        channel_groups(Untraceable(), torch.randn(2, 3, 8, 8))
    with pytest.raises(TraceError, match="no tensors"):
        channel_groups(nn.Sequential(nn.Flatten(), _NoTensor()), torch.randn(2, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        channel_groups(lambda x: x, torch.randn(2))


class _NoTensor(nn.Module):
    def forward(self, x):
        return "done"


def test_l1_runner_method():
    from prunekit.data.base import DataBundle, TensorData
    from prunekit.methods import Context, get
    from prunekit.training import TrainHparams

    torch.manual_seed(0)
    data = DataBundle("toy", TensorData(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))),
                      TensorData(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), 10)
    model = models.build("lenet5-caffe", 1, 28, 10)
    method = get("l1", {"round_to": 2})
    assert method.kind == "structured" and method.target_name == "ratio"
    ctx = Context(data=data, finetune=TrainHparams(epochs=0), pretrain=TrainHparams(epochs=0),
                  build_model=lambda: models.build("lenet5-caffe", 1, 28, 10),
                  example_inputs=data.example_inputs(2))
    pruned = method.prune(model, 0.5, ctx)
    assert pruned.conv1.out_channels == 10 and pruned.conv2.out_channels == 26 and pruned.fc1.out_features == 250
    assert model.conv1.out_channels == 20  # dense model untouched
    # Li et al.: the kept conv1 filters are the largest by L1 norm
    norms = model.conv1.weight.detach().abs().sum((1, 2, 3)) + model.conv1.bias.detach().abs()
    assert sorted(get_plan(pruned)["slices"][0]["keep"]) == sorted(norms.topk(10).indices.tolist())
