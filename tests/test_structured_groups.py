"""Channel-group structure: coupling rules checked against hand-derived expectations."""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import models
from prunekit.structured import channel_groups, check_exact, slim, slim_with_plan
from prunekit.structured.trace.groups import analyse

torch.set_num_threads(1)


def by_producer(groups, name):
    return next(g for g in groups if name in [n for n, _ in g.out_layers])


def idx_of(pairs, name):
    return dict(pairs)[name]


def test_resnet20_option_a_groups_and_offsets():
    m = models.build("resnet20", 3, 32, 10)
    groups = channel_groups(m, torch.randn(2, 3, 32, 32))
    # the padded ends of the stage-2 (16 channels) and stage-3 (32) streams are groups of their own
    assert [g.size for g in groups if g.prunable] == [16, 16, 16, 16, 32, 16, 32, 32, 64, 32, 64, 64]
    assert [g.pads[0][0] for g in groups if g.pads] == ["layer2.0.shortcut", "layer3.0.shortcut"]
    res = groups[0]
    outs = dict(res.out_layers)
    assert {"conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.2.conv2"} <= set(outs)
    # option A pads 8 zero channels in front at stage 2 and 16 more at stage 3
    assert torch.equal(outs["conv1"], torch.arange(16))
    assert torch.equal(outs["layer2.1.conv2"], torch.arange(8, 24))
    assert torch.equal(outs["layer3.1.conv2"], torch.arange(24, 40))
    assert torch.equal(idx_of(res.in_layers, "fc"), torch.arange(24, 40))
    assert torch.equal(idx_of(res.norm_layers, "layer2.2.bn2"), torch.arange(8, 24))
    inner = by_producer(groups, "layer2.1.conv1")
    assert [n for n, _ in inner.out_layers] == ["layer2.1.conv1"]
    assert [n for n, _ in inner.norm_layers] == ["layer2.1.bn1"]
    assert [n for n, _ in inner.in_layers] == ["layer2.1.conv2"]
    assert not by_producer(groups, "fc").prunable  # logits reach the output


def test_resnet20_option_b_projection_starts_new_group():
    m = models.build("resnet20", 3, 32, 10, option="B")
    groups = channel_groups(m, torch.randn(2, 3, 32, 32))
    stage2 = by_producer(groups, "layer2.0.shortcut.0")
    assert stage2.size == 32 and "layer2.2.conv2" in dict(stage2.out_layers)
    assert "layer2.0.shortcut.0" in dict(groups[0].in_layers)  # consumes the stage-1 stream


def test_flatten_into_linear_expands_channels():
    m = models.build("lenet5-caffe", 1, 28, 10)
    groups = channel_groups(m, torch.randn(2, 1, 28, 28))
    g = by_producer(groups, "conv2")
    idx = idx_of(g.in_layers, "fc1")
    assert idx.shape == (50, 16)
    assert torch.equal(idx[3], torch.arange(3 * 16, 4 * 16))


class CatChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(12, 6, 1)
        self.d = nn.Conv2d(6, 10, 1)
        self.e1 = nn.Conv2d(5, 4, 1)
        self.e2 = nn.Conv2d(5, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.c(torch.cat([F.relu(self.a(x)), self.b(x)], dim=1))
        p, q = self.d(F.relu(y)).chunk(2, dim=1)
        z = torch.cat([self.e1(p), self.e2(q)], 1)
        return self.head(z.mean((2, 3)))


def test_concat_offsets_and_chunk_parts():
    m = CatChunk()
    x = torch.randn(2, 3, 8, 8)
    groups = channel_groups(m, x)
    ga, gb = by_producer(groups, "a"), by_producer(groups, "b")
    assert torch.equal(idx_of(ga.in_layers, "c"), torch.arange(8))
    assert torch.equal(idx_of(gb.in_layers, "c"), torch.arange(8, 12))
    gd = by_producer(groups, "d")
    assert gd.parts == 2
    e1 = idx_of(gd.in_layers, "e1")
    assert torch.equal(e1[:5], torch.arange(5)) and (e1[5:] == -1).all()
    s = slim_with_plan(m, x, {gd.id: torch.tensor([1, 7])}, groups=groups)
    assert s.e1.in_channels == 4 and s.e2.in_channels == 4
    assert check_exact(m, s, inputs=x) < 1e-5
    with pytest.raises(ValueError, match="equally many"):
        slim_with_plan(m, x, {gd.id: torch.tensor([1, 2])}, groups=groups)


def test_vit_heads_and_free_parameters():
    m = models.build("vit", 3, 16, 10, dim=48, depth=2, heads=3, patch=4)
    groups = channel_groups(m, torch.randn(2, 3, 16, 16))
    att = by_producer(groups, "blocks.0.attn.q")
    assert att.unit == 16 and att.heads == [("blocks.0.attn", 3, 16)]
    assert {n for n, _ in att.out_layers} == {"blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"}
    assert [n for n, _ in att.in_layers] == ["blocks.0.attn.proj"]
    stream = by_producer(groups, "patch_embed")
    assert ("cls_token", 2) in [(n, d) for n, d, _ in stream.params]
    assert ("pos_embed", 2) in [(n, d) for n, d, _ in stream.params]
    assert {"blocks.0.norm1", "norm"} <= {n for n, _ in stream.norm_layers}
    s = slim_with_plan(m, torch.randn(2, 3, 16, 16), {att.id: torch.arange(16, 32)}, groups=groups)
    assert s.blocks[0].attn.num_heads == 2 and s.blocks[0].attn.q.out_features == 32


def test_depthwise_conv_shares_its_input_group():
    m = models.build("mobilenetv2", 3, 16, 10, width=0.5)
    groups = channel_groups(m, torch.randn(2, 3, 16, 16))
    g = by_producer(groups, "features.4.conv.0")
    outs = [n for n, _ in g.out_layers]
    assert outs == ["features.4.conv.0", "features.4.conv.3"]  # expand conv, then depthwise
    assert [n for n, _ in g.in_layers] == ["features.4.conv.6"]


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(12)
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = F.relu(self.gn(self.conv(x)))
        return self.out(F.relu(self.bn(self.grouped(y))))


def test_groupnorm_and_grouped_conv_constraints():
    m = GroupedNet()
    x = torch.randn(2, 3, 8, 8)
    groups = channel_groups(m, x)
    # grouped conv inputs: weight column q is shared by the 4 conv groups, so channels
    # q, q+2, q+4, q+6 go together (2 channels of 4 positions each)
    gi = by_producer(groups, "conv")
    assert gi.prunable and gi.size == 2 and gi.out_layers[0][1].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    gg = by_producer(groups, "grouped")
    assert gg.prunable and gg.parts == 4
    s = slim(m, x, 0.5)
    assert s.grouped.out_channels == 8 and s.grouped.groups == 4
    assert check_exact(m, s, inputs=x) < 1e-5


def test_gn_group_count_kept_consistent():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 6, 6)
    groups = channel_groups(m, x)
    g = by_producer(groups, "0")
    assert g.parts == 2
    s = slim_with_plan(m, x, {g.id: torch.tensor([0, 5])}, groups=groups)
    assert s[1].num_groups == 2 and s[1].num_channels == 6
    assert check_exact(m, s, inputs=x) < 1e-5


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, input_ids=None, scale=None):
        h = self.ln(self.emb(input_ids))
        return {"logits": self.fc(h).mean(1), "hidden": None}


def test_embedding_with_keyword_inputs_and_dict_outputs():
    m = Embed()
    x = {"input_ids": torch.randint(0, 20, (2, 5))}
    groups = channel_groups(m, x)
    g = next(g for g in groups if g.prunable)
    assert g.params[0][:2] == ("emb.weight", 1) and [n for n, _ in g.norm_layers] == ["ln"]
    s = slim_with_plan(m, x, {g.id: torch.tensor([2, 4])}, groups=groups)
    assert s.emb.embedding_dim == 6 and s.ln.normalized_shape == (6,)
    assert check_exact(m, s, inputs=x) < 1e-5


class WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp1 = nn.Linear(16, 32)
        self.mlp2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.mha(h, h, h, need_weights=False)[0]
        h = h + self.mlp2(F.gelu(self.mlp1(h)))
        return self.out(h)


def test_multihead_attention_heads_and_width_slim_exactly(tmp_path):
    from prunekit.structured import load_pruned, save_pruned

    torch.manual_seed(0)
    m = WithMHA().eval()
    x = torch.randn(2, 5, 6)
    groups = channel_groups(m, x)
    heads = next(g for g in groups if g.heads)
    assert heads.heads == [("mha", 4, 4)] and heads.unit == 4 and heads.size == 16
    assert by_producer(groups, "inp").prunable  # the embedding width through the MHA too
    s = slim(m, x, 0.5)
    assert s.mha.num_heads == 2 and s.mha.in_proj_weight.shape == (24, 8) and s.mlp1.out_features == 16
    assert check_exact(m, s, inputs=x) < 1e-5
    save_pruned(s, tmp_path / "mha")
    loaded = load_pruned(tmp_path / "mha", WithMHA())
    assert type(loaded.mha).__name__ == "SlimMultiheadAttention" and torch.equal(loaded(x), s(x))


class SeqFirstMHA(nn.Module):
    def __init__(self, return_weights):
        super().__init__()
        self.inp, self.mha, self.out = nn.Linear(6, 16), nn.MultiheadAttention(16, 4), nn.Linear(16, 2)
        self.return_weights = return_weights

    def forward(self, x, pad):
        h = self.inp(x)
        causal = torch.triu(torch.ones(x.shape[0], x.shape[0], dtype=torch.bool), 1)
        a, w = self.mha(h, h, h, key_padding_mask=pad, attn_mask=causal)
        return (self.out(h + a), w) if self.return_weights else self.out(h + a)


@pytest.mark.parametrize("return_weights", [False, True])
def test_mha_masks_and_returned_weights(return_weights):
    torch.manual_seed(0)
    m = SeqFirstMHA(return_weights).eval()
    x, pad = torch.randn(5, 2, 6), torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    s = slim(m, (x, pad), 0.5)
    # averaged attention weights depend on every head: returning them keeps all heads
    assert s.mha.num_heads == (4 if return_weights else 2)
    assert check_exact(m, s, inputs=(x, pad)) < 1e-5


class Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 6, 1)
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.flip(self.a(x), [1])  # reorders channels: not understood -> kept
        return self.c(F.relu(self.b(y)))


def test_unknown_op_and_ignore_freeze_channels():
    m = Mystery()
    x = torch.randn(1, 3, 4, 4)
    cap = analyse(m, x)
    assert any(u.startswith("flip") for u in cap.unknown)
    assert not by_producer(cap.groups, "a").prunable
    assert by_producer(cap.groups, "b").prunable
    groups = channel_groups(m, x, ignore=["c"])
    assert not by_producer(groups, "b").prunable  # channels reaching an ignored module are kept
    groups = channel_groups(m, x, ignore=[nn.Conv2d])
    assert not any(g.prunable for g in groups)


def test_analysis_resnet56_groups():
    # (was a wall-time assertion; unit tests must not depend on machine load)
    m = models.build("resnet56", 3, 32, 10)
    x = torch.randn(1, 3, 32, 32)
    groups = channel_groups(m, x)
    conv1 = [g for g in groups if g.prunable and any(n.endswith(".conv1") for n, _ in g.out_layers)]
    assert len(conv1) == 27  # one group per residual block's first conv: 3 stages x 9 blocks
    assert sorted({g.size for g in conv1}) == [16, 32, 64]
    assert all(len(g.out_layers) == 1 for g in conv1)


def test_analysis_heads_bert_base():
    # no wall-time assertion here: unit tests must not depend on machine load
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = transformers.BertModel(transformers.BertConfig()).eval()  # BERT-base: 12 x 768, 110M params
    x = {"input_ids": torch.randint(0, 1000, (1, 16))}
    groups = channel_groups(m, x)
    heads = [g for g in groups if g.prunable and g.unit == 64]
    assert len(heads) == 12 and all(g.size == 768 for g in heads)
    mlps = [g for g in groups if g.prunable and g.size == 3072]
    assert len(mlps) == 12


class TinyRMSNorm(nn.Module):
    """A library's own RMSNorm (not nn.RMSNorm), as in HF Llama."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.rand(d) + 0.5), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class TinyLlama(nn.Module):
    """Rotary (slice + cat within heads), grouped-query SDPA, gated MLP, tied LM head."""

    def __init__(self, vocab=20, d=16, heads=4, kv_heads=2, hd=4, ff=24):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.emb = nn.Embedding(vocab, d)
        self.norm1, self.norm2, self.norm_f = TinyRMSNorm(d), TinyRMSNorm(d), TinyRMSNorm(d)
        self.q, self.k, self.v = nn.Linear(d, heads * hd), nn.Linear(d, kv_heads * hd), nn.Linear(d, kv_heads * hd)
        self.o = nn.Linear(heads * hd, d)
        self.gate, self.up, self.down = nn.Linear(d, ff), nn.Linear(d, ff), nn.Linear(ff, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.emb.weight  # tied
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))

    @staticmethod
    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, input_ids):
        b, n = input_ids.shape
        h = self.emb(input_ids)
        freqs = torch.arange(n).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.norm1(h)
        q = self.q(x).view(b, n, -1, self.hd).transpose(1, 2)
        k = self.k(x).view(b, n, -1, self.hd).transpose(1, 2)
        v = self.v(x).view(b, n, -1, self.hd).transpose(1, 2)
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        h = h + self.o(a.transpose(1, 2).reshape(b, n, -1))
        x = self.norm2(h)
        h = h + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.lm_head(self.norm_f(h))


def test_llama_style_block_rotary_gqa_tied_head():
    torch.manual_seed(0)
    m = TinyLlama().eval()
    x = torch.randint(0, 20, (2, 6))
    groups = channel_groups(m, x)
    att = next(g for g in groups if g.heads)
    # a kv head and its two query heads go together; rotary pairs (d, d + hd/2) share a channel
    assert att.prunable and att.unit == 2 and att.size == 4
    assert {h for _, h, _ in att.heads} == {4, 2}
    stream = next(g for g in groups if "emb.weight" in [n for n, _, _ in g.params])
    assert stream.prunable and "lm_head" in [n for n, _ in stream.in_layers]  # tied head follows the stream
    assert {"norm1", "norm2", "norm_f"} <= {n for n, _ in stream.norm_layers}
    assert not any("inv_freq" in n for g in groups for n, _, _ in g.params if g.prunable)
    s = slim_with_plan(m, x, {att.id: torch.arange(2)}, groups=groups)  # drop kv head 0 (query heads 0, 1)
    assert s.q.out_features == 8 and s.k.out_features == 4 and s.kv_heads == 1 and s.heads == 2
    assert check_exact(m, s, inputs=x) < 1e-5
    s = slim(m, x, 0.5)
    assert s.emb.embedding_dim == 8 and s.lm_head.in_features == 8 and s.gate.out_features == 12
    assert check_exact(m, s, inputs=x) < 1e-5


class RelBiasAttention(nn.Module):
    """T5/Swin style: a per-head bias looked up from a table is added to the scores."""

    def __init__(self, d=12, heads=3, hd=4, buckets=7):
        super().__init__()
        self.heads, self.hd = heads, hd
        self.qkv = nn.Linear(d, 3 * heads * hd)
        self.bias = nn.Embedding(buckets, heads)
        self.proj = nn.Linear(heads * hd, d)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        rel = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).clamp(-3, 3) + 3
        scores = q @ k.transpose(-2, -1) + self.bias(rel).permute(2, 0, 1)[None]
        return x + self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


def test_per_head_bias_table_follows_its_heads():
    torch.manual_seed(0)
    m = RelBiasAttention().eval()
    x = torch.randn(2, 5, 12)
    groups = channel_groups(m, x)
    att = next(g for g in groups if g.heads)
    assert att.prunable and att.unit == 4 and ("bias.weight", 1) in [(n, d) for n, d, _ in att.params]
    s = slim_with_plan(m, x, {att.id: torch.arange(4, 8)}, groups=groups)  # drop head 1
    assert s.heads == 2 and s.bias.embedding_dim == 2
    assert torch.equal(s.bias.weight, m.bias.weight[:, [0, 2]])
    assert check_exact(m, s, inputs=x) < 1e-5


class PackedSplit(nn.Module):
    """GPT-2 style: one projection split into q, k, v by a size held in an attribute."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = heads, d // heads, d
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = (t.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)
                   for t in self.c_attn(x).split(self.split_size, dim=2))
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.c_proj(a.transpose(1, 2).reshape(*x.shape[:-1], -1))


class HardSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        p, q = self.a(x).split(4, dim=1)  # a literal size nothing can update
        return self.b(torch.cat([p * 2, q], 1))


def test_split_by_attribute_prunes_heads_but_literal_split_is_kept():
    torch.manual_seed(0)
    m = PackedSplit().eval()
    x = torch.randn(2, 5, 8)
    groups = channel_groups(m, x)
    att = next(g for g in groups if g.heads)
    assert att.unit == 4 and [n for n, _ in att.out_layers] == ["c_attn"]
    assert att.out_layers[0][1].shape == (8, 3)  # each channel is a q, a k and a v row
    s = slim_with_plan(m, x, {att.id: torch.arange(4)}, groups=groups)
    assert s.split_size == 4 and s.num_heads == 1 and s.c_attn.out_features == 12
    assert check_exact(m, s, inputs=x) < 1e-5
    groups = channel_groups(HardSplit(), torch.randn(1, 3, 4, 4))
    assert not any(g.prunable for g in groups)


class ChannelsFirstLN(nn.LayerNorm):
    """ConvNeXt style: a LayerNorm subclass normalising dim 1 of (B, C, H, W)."""

    def __init__(self, c):
        super().__init__(c)
        self.data_format = "channels_first"

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_channels_first_layernorm_subclass_is_a_channel_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), ChannelsFirstLN(8), nn.GELU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 6, 6)
    g = by_producer(channel_groups(m, x), "0")
    assert g.prunable and [n for n, _ in g.norm_layers] == ["1"]
    s = slim(m, x, 0.5)
    assert s[1].normalized_shape == (4,) and s[1].weight.shape == (4,)
    assert check_exact(m, s, inputs=x) < 1e-5
