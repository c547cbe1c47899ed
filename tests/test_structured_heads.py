"""Attention heads stay prunable through per-head q/k norms, fused qkv projections and MQA.

Hand-written attentions compare the slim model with an output computed independently
from the dense weights over the kept heads only; tiny HF models (hidden 32, 2 layers,
4 heads, built from configs) are slimmed at 0.5 with no ``ignore=`` and must drop heads
(smaller projections, head-count attributes updated), match ``check_exact`` and survive a
``save_pruned``/``load_pruned`` round trip bit for bit.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import prunekit  # noqa: E402
from prunekit.structured import channel_groups, check_exact, slim  # noqa: E402
from prunekit.structured.surgery.plan import get_plan  # noqa: E402


def _kept_rows(s, tensor):
    return next(e["keep"] for e in get_plan(s)["slices"] if e["tensor"] == tensor and e["dim"] == 0)


def _attend(q, k, v):
    """(B, N, d) per head -> (B, N, d): plain softmax attention."""
    return (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1) @ v


# ---- per-head q/k norm ------------------------------------------------------------------

class HeadNormAttention(nn.Module):
    """q/k split into heads, then normalised over head_dim by one norm shared by all heads."""

    def __init__(self, dim=32, num_heads=4, norm="rms"):
        super().__init__()
        self.num_heads, self.head_dim, self.norm = num_heads, dim // num_heads, norm
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        if norm == "rms":
            self.q_norm, self.k_norm = nn.RMSNorm(self.head_dim), nn.RMSNorm(self.head_dim)
        elif norm == "ln":
            self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.LayerNorm(self.head_dim)
        else:  # functional, on the block's own parameters
            self.qw, self.qb = nn.Parameter(torch.randn(self.head_dim)), nn.Parameter(torch.randn(self.head_dim))
            self.q_norm = lambda t: F.layer_norm(t, t.shape[-1:], self.qw, self.qb)
            self.k_norm = lambda t: F.rms_norm(t, t.shape[-1:], self.qw)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() == 1:
                    p.copy_(torch.randn_like(p))  # non-trivial norm weights and biases

    def forward(self, x):
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q = self.q_norm(self.q(x).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k(x).view(shape)).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def _by_hand(m, x, heads):
    """HeadNormAttention's output computed head by head from the dense weights, kept heads only."""
    d = m.head_dim
    out = m.o.bias.expand(x.shape[0], x.shape[1], -1).clone()
    for h in heads:
        rows = slice(h * d, (h + 1) * d)
        q = m.q_norm(F.linear(x, m.q.weight[rows], m.q.bias[rows]))
        k = m.k_norm(F.linear(x, m.k.weight[rows], m.k.bias[rows]))
        v = F.linear(x, m.v.weight[rows], m.v.bias[rows])
        out = out + _attend(q, k, v) @ m.o.weight[:, rows].T
    return out


@pytest.mark.parametrize("norm", ["rms", "ln", "functional"])
def test_per_head_norm_keeps_heads_prunable(norm):
    torch.manual_seed(0)
    m = HeadNormAttention(norm=norm).eval()
    x = torch.randn(2, 5, 32)
    g = [g for g in channel_groups(m, x) if g.prunable and "q" in g.members]
    assert len(g) == 1 and g[0].unit == 8, g
    s = slim(m, x, 0.5)
    assert s.num_heads == 2 and s.q.out_features == s.k.out_features == s.o.in_features == 16
    kept = _kept_rows(s, "q.weight")
    heads = sorted({i // 8 for i in kept})
    assert kept == [i for h in heads for i in range(8 * h, 8 * h + 8)]
    if norm != "functional":
        assert torch.equal(s.q_norm.weight, m.q_norm.weight)  # shared by all heads: not sliced
    with torch.no_grad():
        want = _by_hand(m, x, heads)
        assert torch.allclose(s(x), want, atol=1e-5), (s(x) - want).abs().max()
        # the dense model is the same computation over all heads
        assert torch.allclose(m(x), _by_hand(m, x, range(4)), atol=1e-5)
    assert check_exact(m, s, inputs=x) < 1e-5


def test_norm_over_the_whole_width_still_freezes_heads():
    """A norm over heads x head_dim (not within a head) mixes heads: heads must not go."""

    class WideNorm(HeadNormAttention):
        def forward(self, x):
            b, n, _ = x.shape
            q = F.layer_norm(self.q(x), (32,)).view(b, n, 4, 8)  # hard-coded width: frozen
            k, v = (f(x).view(b, n, 4, 8) for f in (self.k, self.v))
            a = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
            return self.o(a.transpose(1, 2).reshape(b, n, 32))

    m = WideNorm().eval()
    x = torch.randn(2, 5, 32)
    assert not any(g.prunable for g in channel_groups(m, x) if "q" in g.members)


# ---- HF models ---------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
T = transformers
_GQA = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=64, vocab_size=99, max_position_embeddings=64)

HF = {
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**_GQA)),
    "gemma3-text": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**_GQA, query_pre_attn_scalar=8, sliding_window=8)),
}


def _attention_modules(model):
    return {n: m for n, m in model.named_modules() if n.endswith(("self_attn", "self_attention"))}


def _q_width(attn):
    for name in ("q_proj", "qkv_proj", "query_key_value"):
        if hasattr(attn, name):
            return getattr(attn, name).out_features
    raise AssertionError(f"no query projection on {type(attn).__name__}")


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_heads_are_pruned(name, tmp_path):
    torch.manual_seed(0)
    model = HF[name]().eval()
    inputs = {"input_ids": torch.randint(3, 99, (2, 8))}
    s = slim(model, inputs, 0.5).eval()
    assert prunekit.structured.slim_report(s) is None  # no automatic fallback needed
    ref = model(**inputs).logits
    err = check_exact(model, s, inputs=inputs)
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), err
    dense, small = _attention_modules(model), _attention_modules(s)
    assert any(_q_width(small[n]) < _q_width(dense[n]) for n in dense), "no attention head was removed"
    for n, a in small.items():
        assert _q_width(a) % a.head_dim == 0 and a.o_proj.in_features == _q_width(a)
    torch.manual_seed(1)
    loaded = prunekit.load_pruned(prunekit.save_pruned(s, tmp_path / name), HF[name]().eval()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, s(**inputs).logits)
