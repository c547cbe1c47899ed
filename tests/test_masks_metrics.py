import math

import pytest
import torch
import torch.nn as nn

from prunekit import models
from prunekit.metrics import count_nonzero, count_params, flops, latency_ms
from prunekit.sparse import (apply_masks, get_masks, load_masks, magnitude_masks, prunable_modules, random_masks,
                             remove_masks, save_masks, sparsity_report)
from prunekit.training import TrainHparams, train
from prunekit.data import TensorData


def _net():
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_global_magnitude_keeps_exactly_the_largest():
    m = _net()
    masks = magnitude_masks(m, 0.75)
    allw = torch.cat([m[0].weight.flatten(), m[2].weight.flatten()]).abs()
    k = math.floor(allw.numel() * 0.25)
    assert sum(int(v.sum()) for v in masks.values()) == k
    thr = allw.sort(descending=True).values[k - 1]
    for name, layer in (("0", m[0]), ("2", m[2])):
        assert torch.equal(masks[name], layer.weight.abs() >= thr)


def test_layerwise_and_classifier_exclusion():
    m = _net()
    masks = magnitude_masks(m, 0.5, scope="layer", include_classifier=False)
    assert list(masks) == ["0"] and int(masks["0"].sum()) == 300
    r = random_masks(m, 0.9, generator=torch.Generator().manual_seed(0))
    assert int(r["0"].sum()) == 60 and int(r["2"].sum()) == 15


def test_masked_weights_get_no_gradient_and_stay_zero_through_training():
    torch.manual_seed(0)
    m = _net()
    apply_masks(m, magnitude_masks(m, 0.8))
    masks = get_masks(m)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    m(x).sum().backward()
    raw = m[0].parametrizations.weight.original
    assert torch.all(raw.grad[~masks["0"]] == 0)
    train(m, TensorData(x, y), TrainHparams(epochs=3, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-3),
          progress=False)
    for name, layer in (("0", m[0]), ("2", m[2])):
        assert torch.all(layer.weight[~masks[name]] == 0)
        assert torch.all(layer.parametrizations.weight.original[~masks[name]] == 0)
    assert sparsity_report(m)["sparsity_prunable"] == pytest.approx(0.8, abs=1 / 750)


def test_iterative_magnitude_never_revives_pruned_weights():
    m = _net()
    apply_masks(m, magnitude_masks(m, 0.5))
    first = get_masks(m)
    with torch.no_grad():
        m[0].parametrizations.weight.original.add_(torch.randn(30, 20))  # pruned entries now nonzero raw
    apply_masks(m, magnitude_masks(m, 0.8))
    second = get_masks(m)
    for k in first:
        assert not torch.any(second[k] & ~first[k])


def test_sparsity_both_ways_and_counts():
    m = _net()
    apply_masks(m, magnitude_masks(m, 0.9))
    rep = sparsity_report(m)
    nz = 75  # floor(750 * 0.1)
    assert rep["prunable_params"] == 750 and rep["prunable_zeros"] == 750 - nz
    assert rep["total_params"] == 750 + 35 == count_params(m)
    assert count_nonzero(m) == nz + int((m[0].bias != 0).sum() + (m[2].bias != 0).sum())
    assert rep["sparsity_overall"] == pytest.approx((750 - nz) / 785)


def test_masks_save_load_and_remove(tmp_path):
    m = _net()
    apply_masks(m, magnitude_masks(m, 0.7))
    save_masks(tmp_path / "m.safetensors", get_masks(m))
    fresh = _net()
    fresh.load_state_dict({k.replace("parametrizations.weight.original", "weight"): v
                           for k, v in m.state_dict().items() if not k.endswith(".mask")})
    apply_masks(fresh, load_masks(tmp_path / "m.safetensors"))
    x = torch.randn(4, 20)
    assert torch.equal(fresh(x), m(x))
    y = m(x)
    remove_masks(m)
    assert not any("parametrizations" in k for k in m.state_dict())
    assert torch.equal(m(x), y)


def test_flops_dense_and_effective():
    m = _net()
    x = torch.randn(3, 20)
    f = flops(m, x)
    assert f["dense"] == 2 * 3 * (20 * 30 + 30 * 5)
    apply_masks(m, {"0": torch.rand(30, 20) < 0.25})
    d0 = float((m[0].weight != 0).sum()) / 600
    f2 = flops(m, x)
    assert f2["dense"] == f["dense"]
    assert f2["effective"] == round(2 * 3 * 600 * d0 + 2 * 3 * 150)


def test_flops_conv_and_latency():
    m = models.build("lenet5-caffe", 1, 28, 10)
    f = flops(m, torch.randn(1, 1, 28, 28))["dense"]
    expect = 2 * (20 * 1 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10)
    assert f == expect
    assert latency_ms(m, torch.randn(1, 1, 28, 28), min_run_time=0.05) > 0


def test_prunable_modules_order():
    m = models.build("lenet5-caffe", 1, 28, 10)
    assert list(prunable_modules(m)) == ["conv1", "conv2", "fc1", "fc2"]
    assert list(prunable_modules(m, include_classifier=False)) == ["conv1", "conv2", "fc1"]


def test_remove_masks_on_a_copy_leaves_the_original_working():
    import copy

    m = _net()
    apply_masks(m, magnitude_masks(m, 0.5))
    x = torch.randn(3, 20)
    y = m(x)
    c = copy.deepcopy(m)
    remove_masks(c)
    assert torch.equal(c(x), y) and isinstance(c[0].weight, nn.Parameter)
    assert torch.equal(m(x), y) and len(get_masks(m)) == 2  # original still masked
