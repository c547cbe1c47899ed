import pytest
import torch
import torch.nn as nn

from prunekit import models
from prunekit.metrics import jacobian_singular_values


def test_linear_mlp_jsv_equals_singular_values_of_weight_product():
    torch.manual_seed(0)
    net = models.build("mlp7-linear", 1, 8, 10, width=12)
    x = torch.randn(3, 1, 8, 8)
    out = jacobian_singular_values(net, x)
    lin = [m for m in net.modules() if isinstance(m, nn.Linear)]
    prod = lin[0].weight
    for m in lin[1:]:
        prod = m.weight @ prod
    expected = torch.linalg.svdvals(prod.detach().double())
    assert out["values"].shape == (3 * 10,)
    # a linear net has the same Jacobian for every sample
    for row in out["values"].view(3, 10):
        torch.testing.assert_close(row.double(), expected, rtol=1e-4, atol=1e-6)
    assert out["mean"] == pytest.approx(expected.mean().item(), rel=1e-4)
    assert out["max"] == pytest.approx(expected.max().item(), rel=1e-4)
    assert out["min"] == pytest.approx(expected.min().item(), rel=1e-3)


def test_conv_bn_net_matches_autograd_jacobian_in_eval_mode():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net.train()
    x = torch.randn(2, 2, 5, 5)
    out = jacobian_singular_values(net, x)
    assert net.training  # mode restored
    net.eval()
    for i in range(2):
        j = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0)).squeeze(0), x[i]).reshape(3, -1)
        torch.testing.assert_close(out["values"].view(2, 3)[i], torch.linalg.svdvals(j), rtol=1e-4, atol=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="non-empty batch"):
        jacobian_singular_values(nn.Linear(3, 2), torch.zeros(0, 3))
