import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import data as datasets
from prunekit import models
from prunekit.methods import get
from prunekit.methods.base import Context
from prunekit.methods.orthp import orthogonalize_
from prunekit.methods.slimming import gamma_scores, global_plan
from prunekit.methods.taylor import taylor_scores
from prunekit.methods.tpp_schedule import l1_plan, slim_by_plan
from prunekit.metrics import jacobian_singular_values
from prunekit.structured import channel_groups
from prunekit.training import TrainHparams

# --- OrthP -----------------------------------------------------------------------------------


def test_orthp_gives_orthonormal_rows_or_columns():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 5), nn.Linear(5, 9), nn.Conv2d(3, 4, 3))
    orthogonalize_(net, gain=1.0)
    w0, w1, w2 = net[0].weight, net[1].weight, net[2].weight.reshape(4, -1)
    torch.testing.assert_close(w0 @ w0.t(), torch.eye(5), atol=1e-5, rtol=0)  # 5 x 12: orthonormal rows
    torch.testing.assert_close(w1.t() @ w1, torch.eye(5), atol=1e-5, rtol=0)  # 9 x 5: orthonormal columns
    torch.testing.assert_close(w2 @ w2.t(), torch.eye(4), atol=1e-5, rtol=0)


def test_orthp_is_the_positive_diagonal_qr_factor_and_uses_relu_gain():
    torch.manual_seed(1)
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.double))[0]
    lin = nn.Linear(6, 6).double()
    with torch.no_grad():
        lin.weight.copy_(q * torch.sign(torch.diagonal(torch.linalg.qr(q)[1])))
    expected = lin.weight.detach().clone()
    orthogonalize_(nn.Sequential(lin), gain=1.0)  # already orthogonal with positive-diagonal R: unchanged
    torch.testing.assert_close(lin.weight.detach(), expected)
    relu_net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    orthogonalize_(relu_net)
    w = relu_net[0].weight
    torch.testing.assert_close(w @ w.t(), 2 * torch.eye(4), atol=1e-5, rtol=0)


def test_orthp_on_pruned_linear_mlp_gives_mean_jsv_one():
    torch.manual_seed(0)
    mlp = models.build("mlp7-linear", 1, 8, 10, width=20)
    ctx = Context(data=None, finetune=TrainHparams(), pretrain=TrainHparams(), build_model=None,
                  example_inputs=torch.randn(2, 1, 8, 8))
    slim = get("l1-orthp").prune(mlp, 0.5, ctx)
    widths = [m.out_features for m in slim.modules() if isinstance(m, nn.Linear)]
    assert widths == [10] * 6 + [10]
    jsv = jacobian_singular_values(slim, torch.randn(4, 1, 8, 8))
    assert jsv["mean"] == pytest.approx(1.0, abs=1e-4) and jsv["min"] > 0.999 and jsv["max"] < 1.001
    # plain L1 pruning of the same net is far from isometry
    groups = channel_groups(mlp, ctx.example_inputs)
    plain = slim_by_plan(copy.deepcopy(mlp), ctx.example_inputs, l1_plan(mlp, groups, 0.5), groups)
    l1 = jacobian_singular_values(plain, torch.randn(4, 1, 8, 8))
    assert abs(l1["mean"] - 1) > 0.1


# --- selection pieces ------------------------------------------------------------------------


def test_global_plan_takes_smallest_overall_with_per_group_cap():
    groups = [SimpleNamespace(id=0, size=4), SimpleNamespace(id=1, size=4)]
    scores = {0: torch.tensor([0.1, 0.2, 0.3, 0.05]), 1: torch.tensor([5.0, 6.0, 0.4, 7.0])}
    plan = global_plan(groups, scores, {0: 0.5, 1: 0.5})  # 2 + 2 = 4 channels overall
    assert plan[0].tolist() == [0, 1, 3] and plan[1].tolist() == [2]  # group 0 capped at int(0.995*4) = 3


def test_slimming_needs_batchnorm():
    g = SimpleNamespace(id=3, size=4, out_layers=[("fc", torch.arange(4))], norm_layers=[])
    with pytest.raises(ValueError, match="needs a BatchNorm"):
        gamma_scores(nn.Module(), [g])


def test_taylor_score_is_squared_first_order_change_of_removing_the_channel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,))
    class D:
        def __len__(self):
            return 8

        def get_batch(self, idx):
            return x[idx], y[idx]

    groups = channel_groups(net, x[:2])
    g = next(g for g in groups if g.prunable)
    scores = taylor_scores(net, [g], D(), batches=1, batch_size=8, seed=0)[g.id]
    # independent: scale channel c's parameters by alpha; d loss / d alpha at 1 = sum(g * w)
    for c in range(3):
        alpha = torch.ones((), requires_grad=True)
        scale = torch.ones(3)
        scale = scale + (alpha - 1) * F.one_hot(torch.tensor(c), 3)
        params = dict(net.named_parameters())
        over = {"0.weight": params["0.weight"] * scale[:, None, None, None], "0.bias": params["0.bias"] * scale,
                "1.weight": params["1.weight"] * scale, "1.bias": params["1.bias"] * scale}
        net.train()
        out = torch.func.functional_call(net, over, (x,), strict=False)
        (d,) = torch.autograd.grad(F.cross_entropy(out, y), alpha)
        assert scores[c].item() == pytest.approx(d.item() ** 2, rel=1e-4, abs=1e-10)


# --- runner methods on the engine -----------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_ctx():
    torch.manual_seed(0)
    data = datasets.load("digits", resize=16, val_fraction=0.1)
    model = models.build("lenet5-caffe", data.in_channels, data.input_size, data.num_classes)

    def build():
        return models.build("lenet5-caffe", data.in_channels, data.input_size, data.num_classes)

    hp = TrainHparams(epochs=1, batch_size=64, lr=0.01)
    ctx = Context(data=data, finetune=hp, pretrain=hp, build_model=build, example_inputs=data.example_inputs(2))
    return model, ctx


def conv_widths(m):
    return [mod.weight.shape[0] for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", ["l1-orthp", "scratch", "greg1", "greg2", "taylor"])
def test_structured_baselines_slim_lenet(lenet_ctx, name):
    model, ctx = lenet_ctx
    before = copy.deepcopy(model.state_dict())
    opts = {"preset": "demo", "stabilise": 10} if name.startswith("greg") else {}
    slim = get(name, opts).prune(model, 0.5, ctx)
    assert conv_widths(slim) == [10, 25, 250, 10]
    for k, v in model.state_dict().items():  # dense model untouched
        assert torch.equal(v, before[k])
    assert slim(ctx.example_inputs).shape == (2, 10)
    # not just the widths: WHICH conv1 filters survived (conv1 sees the input, so its rows compare directly)
    groups = channel_groups(model, ctx.example_inputs)
    if name == "taylor":
        g = next(g for g in groups if g.out_layers[0][0] == "conv1")
        sc = taylor_scores(model, [g], ctx.data.train, 10, 64, ctx.seed)[g.id]
        kept = torch.sort(torch.argsort(sc, stable=True)[10:]).values
    else:
        pruned = l1_plan(model, groups, 0.5)[next(g.id for g in groups if g.out_layers[0][0] == "conv1")]
        kept = torch.tensor([i for i in range(20) if i not in pruned.tolist()])
    w, ref = slim.conv1.weight.detach(), model.conv1.weight.detach()[kept]
    if name == "taylor":
        torch.testing.assert_close(w, ref)
    elif name == "l1-orthp":  # w / gain is the positive-diagonal QR factor of the kept filters
        q, a = (w / math.sqrt(2)).reshape(10, -1).t().double(), ref.reshape(10, -1).t().double()
        r = q.t() @ a
        torch.testing.assert_close(torch.tril(r, -1), torch.zeros_like(r), atol=1e-5, rtol=0)
        assert (torch.diagonal(r) > 0).all()
    elif name == "scratch":  # fresh weights: the kept rows of a new init (seed + 1), not the dense ones
        torch.manual_seed(ctx.seed + 1)
        torch.testing.assert_close(w, ctx.build_model().conv1.weight.detach()[kept])
    else:  # GReg trained the kept filters a little: each slim row is nearest to its own dense row
        d = torch.cdist(w.flatten(1), model.conv1.weight.detach().flatten(1))
        assert d.argmin(1).tolist() == kept.tolist()


def test_scratch_keeps_l1_architecture_with_fresh_weights(lenet_ctx):
    model, ctx = lenet_ctx
    slim = get("scratch").prune(model, 0.5, ctx)
    plan = l1_plan(model, channel_groups(model, ctx.example_inputs), 0.5)
    kept = torch.ones(20, dtype=torch.bool)
    kept[plan[0]] = False
    assert not torch.allclose(slim.conv1.weight, model.conv1.weight[kept])
    # default budget: the dense model's training hyperparameters, not the fine-tuning ones
    short = Context(data=ctx.data, finetune=TrainHparams(epochs=0), pretrain=TrainHparams(epochs=1, batch_size=100),
                    build_model=ctx.build_model, example_inputs=ctx.example_inputs)
    assert get("scratch").finetune(slim, short).steps == math.ceil(len(ctx.data.train) / 100)
    assert get("scratch", {"budget": "finetune"}).finetune(slim, short).steps == 0


def test_greg1_removes_the_l1_chosen_filters(lenet_ctx):
    model, ctx = lenet_ctx
    plan = l1_plan(model, channel_groups(model, ctx.example_inputs), 0.5)
    kept = [i for i in range(20) if i not in plan[0].tolist()]
    slim = get("greg1", {"preset": "demo", "stabilise": 0}).prune(model, 0.5, ctx)
    # the kept filters were trained (they moved) but only a little (they stay close to their originals);
    # a bound alone would also pass with no training at all
    d_kept = (slim.conv1.weight - model.conv1.weight[kept]).norm()
    assert 0 < d_kept < 0.5 * model.conv1.weight[kept].norm()
    d = torch.cdist(slim.conv1.weight.detach().flatten(1), model.conv1.weight.detach().flatten(1))
    assert d.argmin(1).tolist() == kept  # and each slim filter is the L1-kept one it came from


def test_slimming_prunes_globally_by_gamma_on_a_bn_net(lenet_ctx):
    _, lenet = lenet_ctx
    with pytest.raises(ValueError, match="needs a BatchNorm"):  # LeNet-5 has no BN
        get("slimming", {"epochs": 0}).prune(lenet_ctx[0], 0.5, lenet)
    torch.manual_seed(0)
    data = datasets.load("synthetic", shape=(1, 8, 8), n_train=128, n_test=32)
    net = models.build("resnet20", 1, 8, 10)
    with torch.no_grad():  # make gamma magnitudes differ a lot between blocks
        for i, blk in enumerate([b for s in (net.layer1, net.layer2, net.layer3) for b in s]):
            blk.bn1.weight.copy_(torch.linspace(0.1, 1.0, len(blk.bn1.weight)) * (0.1 if i < 3 else 1.0))
    ctx = Context(data=data, finetune=TrainHparams(epochs=1, batch_size=64), pretrain=TrainHparams(),
                  build_model=None, example_inputs=data.example_inputs(2))
    slim = get("slimming", {"epochs": 0, "layers": ["layer*.conv1"]}).prune(net, 0.5, ctx)
    widths = [b.conv1.weight.shape[0] for s in (slim.layer1, slim.layer2, slim.layer3) for b in s]
    # 0.5 of 16*3 + 32*3 + 64*3 = 168 channels go; the stage-1 blocks (tiny gammas) lose all but their cap allows
    assert 16 * 3 + 32 * 3 + 64 * 3 - sum(widths) == 168
    assert widths[:3] == [1, 1, 1]
