import pytest
import torch
import torch.nn as nn

from prunekit import models


def _shape(name):
    if name in ("mlp7-linear",):
        return 1, 32
    if name in ("lenet-300-100", "lenet5-caffe"):
        return 1, 28
    if name in ("resnet18", "resnet50"):
        return 3, 64
    return 3, 32


@pytest.mark.parametrize("name", models.names())
def test_every_model_builds_and_runs(name):
    c, s = _shape(name)
    m = models.build(name, c, s, 7)
    assert m(torch.randn(2, c, s, s)).shape == (2, 7)


def test_mlp7_linear_is_seven_linears_without_bn_or_nonlinearity():
    m = models.build("mlp7-linear", 1, 32, 10)
    lin = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(1024, 100)] + [(100, 100)] * 5 + [(100, 10)]
    assert not any(isinstance(x, (nn.BatchNorm1d, nn.ReLU)) for x in m.modules())
    # identity activations: the network is exactly the product of its affine maps
    x = torch.randn(3, 1, 32, 32)
    y = x.flatten(1)
    for layer in lin:
        y = layer(y)
    assert torch.allclose(m(x), y, atol=1e-5)


def test_resnet32_espn_width_has_1_85m_weights_and_depths():
    r = models.build("resnet32", width=2)
    n = sum(m.weight.numel() for m in r.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert abs(n - 1.85e6) < 0.01e6
    for d in (20, 32, 56, 110):
        convs = [m for m in models.build(f"resnet{d}").modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == d - 1  # option A: no shortcut convs; + fc = depth layers


def test_resnet_option_b_has_projection_shortcuts():
    a = models.build("resnet20", option="A")
    b = models.build("resnet20", option="B")
    n_conv = lambda m: sum(isinstance(x, nn.Conv2d) for x in m.modules())  # noqa: E731
    assert n_conv(b) == n_conv(a) + 2
    with pytest.raises(ValueError, match="option"):
        models.build("resnet20", option="C")


def test_lenet5_caffe_layers():
    m = models.build("lenet5-caffe", 1, 28, 10)
    assert (m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features) == (20, 50, 500)
    assert m.fc1.in_features == 800


def test_vit_has_heads():
    m = models.build("vit", 3, 32, 10, dim=64, depth=2, heads=4)
    att = m.blocks[0].attn
    assert att.num_heads == 4 and att.head_dim == 16 and isinstance(att.q, nn.Linear)


def test_mlps_take_1d_signals_with_in_features():
    m = models.build("lenet-300-100", 1, 40, 10, in_features=40)
    assert m(torch.randn(2, 1, 40)).shape == (2, 10) and m.features[1].in_features == 40
