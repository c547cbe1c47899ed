"""prunekit.structured.surgery.deploy: exact BN folding, channels-last layout, SIMD-friendly widths."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import models
from prunekit.sparse.masks import apply_masks, remove_masks
from prunekit.structured.surgery.deploy import (conv_bn_pairs, count_batchnorms, deploy, fold_bn, simd_lanes,
                                        simd_round_to, to_channels_last)


def _randomise_bn(model):
    # Fresh BNs are identity maps (mean 0, var 1, gamma 1, beta 0): folding them would
    # pass even if the fold formula were wrong. Give every BN non-trivial statistics.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) * 1.0 + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _reference_fold(conv, bn):
    """Independent reference: run conv, then apply BN's eval formula by hand."""
    def f(x):
        y = conv(x)
        shape = (1, -1) + (1,) * (y.dim() - 2)
        mu, var = bn.running_mean.reshape(shape), bn.running_var.reshape(shape)
        g = bn.weight.reshape(shape) if bn.affine else 1.0
        b = bn.bias.reshape(shape) if bn.affine else 0.0
        return (y - mu) / torch.sqrt(var + bn.eps) * g + b
    return f


@pytest.mark.parametrize("name", ["resnet20", "vgg11-bn", "mobilenetv2"])
@pytest.mark.parametrize("with_inputs", [True, False])
def test_fold_bn_removes_every_bn_and_matches_eval_model(name, with_inputs):
    m = _randomise_bn(models.build(name, 3, 32, 10)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    n_bn = count_batchnorms(m)
    folded = fold_bn(m, x if with_inputs else None)
    assert n_bn > 0 and count_batchnorms(folded) == 0
    with torch.no_grad():
        # float64 end to end: any formula error shows up far above rounding
        assert _rel_err(folded(x), m(x)) < 1e-10
    # the dense model is untouched
    assert count_batchnorms(m) == n_bn


def test_fold_bn_float32_resnet_within_1e_5():
    m = _randomise_bn(models.build("resnet20", 3, 32, 10))
    x = torch.randn(4, 3, 32, 32)
    folded = fold_bn(m, x)
    with torch.no_grad():
        assert _rel_err(folded(x), m(x)) < 1e-5


@pytest.mark.parametrize("conv, bn, shape", [
    (nn.Conv1d(3, 6, 3, bias=True), nn.BatchNorm1d(6), (2, 3, 9)),
    (nn.Conv2d(4, 4, 3, groups=4, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4, affine=False), (2, 4, 7, 7)),
    (nn.Conv3d(2, 5, 2, stride=2), nn.BatchNorm3d(5, eps=1e-3), (1, 2, 4, 4, 4)),
    (nn.Linear(5, 7), nn.BatchNorm1d(7), (3, 5)),
])
def test_fold_pair_matches_hand_written_bn_formula(conv, bn, shape):
    model = _randomise_bn(nn.Sequential(conv, bn)).double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference_fold(model[0], model[1])(x)
    folded = fold_bn(model, x)
    assert isinstance(folded[1], nn.Identity)
    assert folded[0].bias is not None
    with torch.no_grad():
        assert _rel_err(folded(x), ref) < 1e-12


class _Branch(nn.Module):
    """conv output read by BN *and* by a skip path: folding would corrupt the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Shared(nn.Module):
    """one conv called twice, each call followed by its own BN: no single fold is right."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


class _AfterRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(F.relu(self.conv(x)))


class _ReturnsBoth(nn.Module):
    """the pre-BN activation is part of the output (like HF hidden states)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y), y


class _Tolist(nn.Module):
    """reads the conv output's values through a non-tensor-returning call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        scale = float(y.sum().item() > -1e30) + len(y.flatten().tolist()) * 0.0
        return self.bn(y) * scale


@pytest.mark.parametrize("cls, by_fx", [(_Branch, True), (_Shared, True), (_AfterRelu, True),
                                         (_ReturnsBoth, True), (_Tolist, False)])
def test_unsafe_pairs_are_left_alone_and_output_is_unchanged(cls, by_fx):
    m = _randomise_bn(cls())
    x = torch.randn(2, 3, 8, 8)
    paths = [x, None] if by_fx else [x]
    for inputs in paths:
        assert conv_bn_pairs(m, inputs) == []
        folded = fold_bn(m, inputs)
        assert count_batchnorms(folded) == count_batchnorms(m)
        with torch.no_grad():
            a, b = folded(x), m(x)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(u, v)


def test_bn_without_running_stats_is_not_folded():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    x = torch.randn(2, 3, 6, 6)
    assert conv_bn_pairs(m, x) == [] and conv_bn_pairs(m) == []
    assert isinstance(fold_bn(m, x)[1], nn.BatchNorm2d)


def test_metadata_reads_do_not_block_a_fold():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            assert y.shape[1] == 4 and y.dim() == 4 and y.dtype == torch.float32
            return self.bn(y)

    m = _randomise_bn(M())
    x = torch.randn(2, 3, 6, 6)
    assert conv_bn_pairs(m, x) == [("conv", "bn")]
    with torch.no_grad():
        assert _rel_err(fold_bn(m, x)(x), m(x)) < 1e-5


def test_fx_path_and_running_path_agree_on_resnet():
    m = models.build("resnet20", 3, 32, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    by_run, by_fx = sorted(conv_bn_pairs(m, x)), sorted(conv_bn_pairs(m))
    assert by_run == by_fx and len(by_run) == count_batchnorms(m) == 19
    assert ("layer1.0.conv1", "layer1.0.bn1") in by_run


def test_fold_bn_errors_are_clear():
    with pytest.raises(TypeError, match="nn.Module"):
        fold_bn("resnet20")

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow defeats fx
                return self.bn(self.conv(x))
            return self.bn(self.conv(-x))

    with pytest.raises(ValueError, match="example_inputs"):
        fold_bn(Untraceable())
    m = models.build("resnet20", 3, 32, 10)
    apply_masks(m, {"conv1": torch.ones_like(m.conv1.weight, dtype=torch.bool)})
    with pytest.raises(ValueError, match="parametrized weight"):
        fold_bn(m)
    remove_masks(m)
    assert count_batchnorms(fold_bn(m)) == 0


def test_to_channels_last_layout_and_output():
    m = _randomise_bn(models.build("resnet20", 3, 32, 10))
    x = torch.randn(2, 3, 32, 32)
    cl = to_channels_last(m)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not m.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # copy, not in place
    seen = {}
    cl.conv1.register_forward_pre_hook(lambda mod, a: seen.setdefault("in", a[0]))
    with torch.no_grad():
        assert _rel_err(cl(x), m(x)) < 1e-5
    # the NCHW input was converted on entry, so the first conv saw channels-last data
    assert seen["in"].is_contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous()
    # applying twice does not stack a second input hook
    assert len(to_channels_last(cl, inplace=True)._forward_pre_hooks) == 1


def test_deploy_recipe_on_vit_keeps_output():
    m = models.build("vit", 3, 32, 10, dim=48, depth=2, heads=3).eval()
    x = torch.randn(2, 3, 32, 32)
    d = deploy(m, x)
    with torch.no_grad():
        assert _rel_err(d(x), m(x)) < 1e-5
    assert not d.training


@pytest.mark.parametrize("cap, dtype, lanes", [("AVX512", torch.float32, 16), ("AVX2", torch.float32, 8),
                                               ("AVX512", torch.bfloat16, 32), ("DEFAULT", torch.float32, 4),
                                               ("avx2", torch.float64, 4), ("SOMETHING_NEW", torch.float32, 4)])
def test_simd_lanes(cap, dtype, lanes):
    assert simd_lanes(dtype, cap) == lanes


def test_simd_lanes_of_this_machine_matches_torch_capability():
    cap = torch.backends.cpu.get_cpu_capability()
    assert simd_lanes() == simd_lanes(torch.float32, cap)


def test_simd_round_to_mirrors_round_up_planning():
    # ResNet-56 internal widths 16/32/64. At ratio 0.5 the kept counts 8/16/32 are
    # multiples of 8 (exact) but rounding 8 up to 16 would leave the first stage
    # unslimmed (+14% channels), so 8 is chosen over AVX-512's 16 lanes.
    assert simd_round_to([16, 32, 64], 0.5, capability="AVX512") == 8
    # ratio 0.3 keeps 11/22/44 (77): multiples of 8 give 16/24/48 (+14%), of 4 give 12/24/44 (+4%)
    assert simd_round_to([16, 32, 64], 0.3, capability="AVX512") == 4
    assert simd_round_to([16, 32, 64], 0.3, capability="AVX512", max_extra=0.15) == 8
    assert simd_round_to([64, 128, 256, 512], 0.5, capability="AVX512") == 16
    assert simd_round_to([64, 128, 256, 512], 0.5, capability="AVX2") == 8
    assert simd_round_to([64, 128, 256, 512], 0.7, capability="AVX512") == 8
    assert simd_round_to([16, 32, 64], 0.0, capability="AVX512") == 16  # nothing removed, nothing to round
    assert simd_round_to(capability="AVX512") == 16
    with pytest.raises(ValueError, match="ratio"):
        simd_round_to([16], 1.0)
    with pytest.raises(ValueError, match="positive"):
        simd_round_to([0, 16], 0.5)
    with pytest.raises(ValueError, match="max_extra"):
        simd_round_to([16], 0.5, max_extra=-1)
    with pytest.raises(ValueError, match="floating"):
        simd_lanes(torch.int8)


def test_simd_round_to_agrees_with_slim_channel_counts():
    # The helper's model of rounding must match what slim actually keeps.
    from prunekit.structured import slim
    from prunekit.structured.surgery.deploy import _kept_after_rounding
    m = models.build("resnet20", 3, 32, 10, option="A").eval()
    x = torch.randn(1, 3, 32, 32)
    for ratio, rt in ((0.3, 4), (0.3, 8), (0.5, 8)):
        s = slim(m, x, ratio, ignore=("fc",), round_to=rt)
        widths = sorted({s.get_submodule(f"layer{i}.0.conv1").out_channels for i in (1, 2, 3)})
        assert widths == sorted({_kept_after_rounding(w, ratio, rt) for w in (16, 32, 64)})


def test_deploy_slim_resnet_matches_slim_model():
    # The benchmark's path: slim, then fold BN and go channels-last; outputs must not move.
    from prunekit.structured import slim
    m = _randomise_bn(models.build("resnet20", 3, 32, 10, option="B"))
    x = torch.randn(3, 3, 32, 32)
    s = slim(m, x[:1], 0.5, round_to=8).eval()
    d = deploy(s, x[:1])
    assert count_batchnorms(s) == 21 and count_batchnorms(d) == 0  # 19 block/stem BNs + 2 shortcut BNs
    with torch.no_grad():
        assert _rel_err(d(x), s(x)) < 1e-5
