"""Op rules that make more channels prunable: transposed convs, functional convs/norms on
module parameters (weight standardisation, OLMo-style blocks), channel/pixel shuffles.

Every case slims a small model, checks it against the original with the removed channels
zeroed (``check_exact``), checks that the layer the rule is about really got narrower, and
round-trips ``save_pruned``/``load_pruned``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import prunekit.structured as S


def slim_checked(make, x, ratios=(0.5, 0.3), tmp_path=None):
    """Slim at each ratio; exact, shapes kept, and a save/load round trip reproduces it."""
    torch.manual_seed(0)
    model = make().eval()
    slims = []
    for r in ratios:
        sl = S.slim(model, x, r).eval()
        assert S.check_exact(model, sl, inputs=x) < 1e-5
        if tmp_path is not None:
            d = tmp_path / f"r{r}"
            S.save_pruned(sl, d)
            torch.manual_seed(0)
            back = S.load_pruned(d, make()).eval()
            with torch.no_grad():
                assert torch.equal(back(x), sl(x))
        slims.append(sl)
    return model, slims


def width(m, attr="weight", dim=0):
    return getattr(m, attr).shape[dim]


# ---- transposed convs -----------------------------------------------------------------
class Decoder(nn.Module):
    def __init__(self, nd, groups):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
        convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[nd]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
        self.enc = conv(2, 8, 3, padding=1)
        self.up = convt(8, 12, 2, stride=2, groups=groups)
        self.bn = bn(12)
        self.skip = conv(2, 12, 1)
        self.head = conv(12, 3, 1)

    def forward(self, x):
        y = self.bn(self.up(F.relu(self.enc(x))))
        s = F.interpolate(self.skip(x), scale_factor=2.0)
        return self.head(F.relu(y + s))  # residual: up's outputs couple with skip's


@settings(max_examples=4, deadline=None)
@given(nd=st.sampled_from([1, 2, 3]), groups=st.sampled_from([1, 2]))
def test_conv_transpose(nd, groups, tmp_path_factory):
    x = torch.randn(2, 2, *([4] * nd))
    model, (half, third) = slim_checked(lambda: Decoder(nd, groups), x, tmp_path=tmp_path_factory.mktemp("ct"))
    for sl, r in ((half, 0.5), (third, 0.3)):
        # weight (in, out/groups, k...): both dims shrink; attributes follow the weights
        assert width(sl.up, dim=0) < 8 and width(sl.up, dim=1) * groups < 12
        assert sl.up.in_channels == width(sl.up, dim=0) and sl.up.out_channels == width(sl.up, dim=1) * groups
        assert sl.up.bias.shape[0] == sl.up.out_channels == sl.bn.num_features == width(sl.skip)
    assert width(half.up, dim=0) < width(third.up, dim=0)


# ---- functional convs with a transformed weight (weight standardisation) ---------------
class StdConv2d(nn.Conv2d):
    def forward(self, x):
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(x, (self.weight - m) / torch.sqrt(v + 1e-10), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class ScaledConv(nn.Module):
    """A custom 1x1 conv: a functional call on its own (transformed) weight."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight * 2.0)


class WSNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = StdConv2d(3, 12, 3, padding=1)
        self.gn = nn.GroupNorm(3, 12)
        self.b = StdConv2d(12, 16, 3, padding=1)
        self.w = ScaledConv(16, 10)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        y = self.b(F.relu(self.gn(self.a(x))))
        y = self.w(F.relu(y))
        return self.fc(F.relu(y).mean((2, 3)))


def test_weight_standardised_conv(tmp_path):
    x = torch.randn(2, 3, 6, 6)
    model, (sl, _) = slim_checked(WSNet, x, tmp_path=tmp_path)
    # b standardises each filter over its fan-in: removing an input column would change the
    # other columns' statistics, so a's channels (b's inputs) must stay
    assert width(sl.a) == 12 and width(sl.b, dim=1) == 12
    assert width(sl.b) < 16 and sl.b.bias.shape[0] == width(sl.b) == width(sl.w, dim=1)
    assert width(sl.w) < 10 and width(sl.w) == width(sl.fc, dim=1)


# ---- functional norms ------------------------------------------------------------------
class FunctionalNorms(nn.Module):
    def __init__(self, literal=False):
        super().__init__()
        self.literal = literal
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.register_buffer("rm", torch.randn(12) * 0.1)
        self.register_buffer("rv", torch.rand(12) + 0.5)
        self.bw, self.bb = nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12))
        self.c2 = nn.Conv2d(12, 8, 1)
        self.iw = nn.Parameter(torch.randn(8))
        self.gw, self.gb = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
        self.c3 = nn.Conv2d(8, 10, 1)
        self.lw, self.lb = nn.Parameter(torch.randn(10)), nn.Parameter(torch.randn(10))
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        y = F.batch_norm(self.c1(x), self.rm, self.rv, self.bw, self.bb, False)
        y = F.instance_norm(self.c2(F.relu(y)), weight=self.iw)
        y = F.group_norm(F.relu(y), 2, self.gw, self.gb)
        y = self.c3(y).mean((2, 3))
        shape = (10,) if self.literal else self.lw.shape
        return self.fc(F.layer_norm(y, shape, self.lw, self.lb))


def test_functional_norms(tmp_path):
    x = torch.randn(3, 3, 5, 5)
    model, (sl, _) = slim_checked(FunctionalNorms, x, tmp_path=tmp_path)
    assert width(sl.c1) < 12 and sl.bw.shape == sl.rm.shape == (width(sl.c1),)
    assert width(sl.c2) < 8 and sl.gw.shape == (width(sl.c2),) and width(sl.c2) % 2 == 0  # groups kept
    assert width(sl.c3) < 10 and sl.lw.shape == (width(sl.c3),)
    # a hard-coded normalized_shape would go stale in the slim model: those channels stay
    literal = FunctionalNorms(literal=True).eval()
    groups = S.channel_groups(literal, x)
    assert not any(g.prunable and "c3" in [n for n, _ in g.out_layers] for g in groups)
    assert any(g.prunable and "c1" in [n for n, _ in g.out_layers] for g in groups)


def test_functional_layer_norm_reference_renormalises():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.w = nn.Parameter(torch.randn(8))
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(F.layer_norm(self.inp(x), self.w.shape, self.w, None, 1e-5))

    m = Block().eval()
    x = torch.randn(4, 6)
    sl = S.slim(m, x, 0.5)
    assert S.check_exact(m, sl, inputs=x) < 1e-5 and width(sl.inp) == 4
    keep = torch.tensor(S.get_plan(sl)["slices"][0]["keep"])
    with torch.no_grad():
        h = m.inp(x)[:, keep]
        manual = F.linear(F.layer_norm(h, (4,), m.w[keep]), m.out.weight[:, keep], m.out.bias)
    assert torch.allclose(sl(x), manual, atol=1e-6)


# ---- channel and pixel shuffles ----------------------------------------------------------
def shuffle_view(x, g):
    b, c, h, w = x.shape
    return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


def shuffle_permute(x, g):
    return x.unflatten(1, (g, -1)).permute(0, 2, 1, 3, 4).flatten(1, 2)


def shuffle_stack(x, g):
    return torch.stack(x.chunk(g, 1), 2).flatten(1, 2)


SHUFFLES = {"view": shuffle_view, "permute": shuffle_permute, "stack": shuffle_stack}


class Shuffled(nn.Module):
    def __init__(self, kind, g, c):
        super().__init__()
        self.kind, self.g = kind, g
        self.a = nn.Conv2d(3, c, 1)
        self.bn = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, 6, 3, padding=1)

    def forward(self, x):
        return self.b(SHUFFLES[self.kind](F.relu(self.bn(self.a(x))), self.g))


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(sorted(SHUFFLES)), g=st.sampled_from([2, 3, 4]), per=st.sampled_from([2, 4]))
def test_channel_shuffle(kind, g, per, tmp_path_factory):
    c = g * per
    x = torch.randn(2, 3, 4, 4)
    model, (sl,) = slim_checked(lambda: Shuffled(kind, g, c), x, ratios=(0.5,),
                                  tmp_path=tmp_path_factory.mktemp("sh"))
    k = width(sl.a)
    # the same positions go from every shuffle block, so the width stays a multiple of g
    assert k < c and k % g == 0 and width(sl.b, dim=1) == k


def test_shuffle_net_units(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from rule_coverage import ShuffleNetish

    x = torch.randn(2, 3, 8, 8)
    model, (sl, _) = slim_checked(ShuffleNetish, x, tmp_path=tmp_path)
    assert width(sl.stem[0]) < 24 and width(sl.stem[0]) % 3 == 0  # through grouped convs + shuffle
    assert width(sl.expand[0]) < 32 and width(sl.u2.branch[0]) < 16


def test_head_split_still_ties():
    """A split into heads that is not merged back by permutes keeps its whole-head units."""
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            b, n, _ = x.shape
            q = self.q(x).view(b, n, 2, 4).transpose(1, 2)
            att = (q @ q.transpose(-1, -2)).softmax(-1) @ q
            return self.o(att.transpose(1, 2).reshape(b, n, 8))

    g = [g for g in S.channel_groups(Heads().eval(), torch.randn(2, 3, 8)) if g.prunable]
    assert len(g) == 1 and g[0].unit == 4


class PixelShuffler(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.ps = nn.PixelShuffle(2)
        self.b = nn.Conv2d(4, 8, 1)
        self.pu = nn.PixelUnshuffle(2)
        self.c = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        return self.c(self.pu(F.relu(self.b(self.ps(F.relu(self.a(x)))))))


def test_pixel_shuffle(tmp_path):
    x = torch.randn(2, 3, 4, 4)
    model, (sl, _) = slim_checked(PixelShuffler, x, tmp_path=tmp_path)
    assert width(sl.a) < 16 and width(sl.a) % 4 == 0 and width(sl.b, dim=1) == width(sl.a) // 4
    assert width(sl.b) < 8 and width(sl.c, dim=1) == 4 * width(sl.b)
