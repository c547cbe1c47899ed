"""Hypothesis-generated architectures (residual, concat, chunk, grouped/depthwise conv,
GroupNorm, squeeze-excite gating, channel padding, attention) slim exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.structured import channel_groups, check_exact, group_scores, plan_removal, slim_with_plan

torch.set_num_threads(1)
ACTS = {"relu": F.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu}  # sigmoid(0) != 0 on purpose


class ConvBlock(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), act
        self.out = w

    def forward(self, x):
        return ACTS[self.act](self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b, self.bn_b = nn.Conv2d(w, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act, self.out = act, c

    def forward(self, x):
        return ACTS[self.act](x + self.bn_b(self.b(ACTS[self.act](self.bn_a(self.a(x))))))


class Concat(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, w, 1), nn.Conv2d(c, w + 2, 3, padding=1)
        self.act, self.out = act, 2 * w + 2

    def forward(self, x):
        return torch.cat([ACTS[self.act](self.a(x)), self.b(x)], dim=1)


class Chunk(nn.Module):
    """Gated linear unit: conv to 2w channels, chunk, value * sigmoid(gate)."""

    def __init__(self, c, w, act):
        super().__init__()
        self.conv, self.out = nn.Conv2d(c, 2 * w, 1), w

    def forward(self, x):
        v, g = self.conv(x).chunk(2, dim=1)
        return v * torch.sigmoid(g)


class Grouped(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.pre = nn.Conv2d(c, 4 * w, 1)
        self.conv = nn.Conv2d(4 * w, 2 * w, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w)
        self.gn = nn.GroupNorm(2, 2 * w)
        self.act, self.out = act, 2 * w

    def forward(self, x):
        return ACTS[self.act](self.gn(self.dw(self.conv(self.pre(x)))))


class SqueezeExcite(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(c, w), nn.Linear(w, c), c

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class PadChannels(nn.Module):
    """CIFAR option-A style: zero channels around the input."""

    def __init__(self, c, w, act):
        super().__init__()
        self.before, self.after, self.out = w // 2, w - w // 2, c + w

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class Attention(nn.Module):
    def __init__(self, c, w, act, heads=2):
        super().__init__()
        self.heads, self.hd = heads, w
        self.norm = nn.LayerNorm(c)
        self.q, self.k, self.v = (nn.Linear(c, heads * w) for _ in range(3))
        self.proj = nn.Linear(heads * w, c)
        self.sdpa = act == "gelu"  # both attention spellings get exercised
        self.out = c

    def forward(self, x):
        b, c, hgt, wid = x.shape
        t = x.flatten(2).transpose(1, 2)
        h = self.norm(t)
        q, k, v = (m(h).reshape(b, -1, self.heads, self.hd).transpose(1, 2) for m in (self.q, self.k, self.v))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.softmax(q @ k.transpose(-2, -1) / self.hd ** 0.5, dim=-1) @ v
        t = t + self.proj(o.transpose(1, 2).reshape(b, -1, self.heads * self.hd))
        return t.transpose(1, 2).reshape(b, c, hgt, wid)


class TorchMHA(nn.Module):
    def __init__(self, c, w, act):
        super().__init__()
        self.mha = nn.MultiheadAttention(c, 2 if c % 2 == 0 else 1, batch_first=True)
        self.out = c

    def forward(self, x):
        b, c, hgt, wid = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mha(t, t, t)[0]
        return t.transpose(1, 2).reshape(b, c, hgt, wid)


BLOCKS = {"mha": TorchMHA, "conv": ConvBlock, "res": Residual, "cat": Concat, "chunk": Chunk, "grouped": Grouped,
          "se": SqueezeExcite, "pad": PadChannels, "attn": Attention}


class RandomNet(nn.Module):
    def __init__(self, spec, width0):
        super().__init__()
        self.stem = nn.Conv2d(3, width0, 3, padding=1)
        c = width0
        blocks = []
        for kind, w, act in spec:
            blk = BLOCKS[kind](c, w, act)
            blocks.append(blk)
            c = blk.out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


specs = st.lists(st.tuples(st.sampled_from(sorted(BLOCKS)), st.sampled_from([2, 3, 4]), st.sampled_from(sorted(ACTS))),
                 min_size=1, max_size=5)


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, width0=st.sampled_from([4, 6, 8]), ratio=st.floats(0.1, 0.8), seed=st.integers(0, 10_000))
def test_random_architectures_slim_exactly(spec, width0, ratio, seed):
    torch.manual_seed(seed)
    model = _randomise(RandomNet(spec, width0), seed).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    groups = channel_groups(model, x)
    scores = group_scores(model, groups, "random", seed=seed)
    pruned = plan_removal(groups, scores, ratio)
    slim_model = slim_with_plan(model, x, pruned, groups=groups)
    assert check_exact(model, slim_model, inputs=x) < 1e-9
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in slim_model.parameters())
    assert (after < before) == any(len(v) for v in pruned.values())
    # the stem always feeds prunable channels unless its stream reaches a frozen op
    if spec[0][0] in ("conv", "chunk"):
        assert any(g.prunable and "stem" in [n for n, _ in g.out_layers] for g in groups)


def test_attention_heads_in_random_net_are_whole_units():
    model = RandomNet([("attn", 4, "relu"), ("attn", 3, "gelu")], 6).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    groups = channel_groups(model, x)
    att = [g for g in groups if g.unit > 1]
    assert sorted(g.unit for g in att) == [3, 4] and all(g.size == 2 * g.unit for g in att)
    pruned = {g.id: torch.arange(g.unit) for g in att}  # drop head 0 of both blocks
    s = slim_with_plan(model, x, pruned, groups=groups)
    assert s.blocks[0].heads == 1 and s.blocks[1].heads == 1
    assert check_exact(model, s, inputs=x) < 1e-9


def test_producer_never_loses_all_rows():
    # the concat's narrow input (2 of 6 channels) is added back into one stream by the
    # attention residual; a high ratio must still leave it one channel
    torch.manual_seed(0)
    model = RandomNet([("cat", 2, "gelu"), ("attn", 2, "gelu")], 4).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    groups = channel_groups(model, x)
    for seed in range(5):
        pruned = plan_removal(groups, group_scores(model, groups, "random", seed=seed), 0.75)
        s = slim_with_plan(model, x, pruned, groups=groups)
        assert s.blocks[0].a.out_channels >= 1 and check_exact(model, s, inputs=x) < 1e-9
    stream = next(g for g in groups if "blocks.0.a" in dict(g.out_layers))
    with pytest.raises(ValueError, match="no output channels"):
        slim_with_plan(model, x, {stream.id: torch.tensor([0, 1])}, groups=groups)
