"""Query heads over one shared kv head (multi-query attention).

The kv head reaches attention broadcast to every query head (HF ``repeat_kv``: expand of
a size-1 dim, or SDPA's ``enable_gqa``). That broadcast dim holds no channels, so the
query heads stay prunable on their own; the module's ``num_key_value_groups`` (query
heads per kv head) must follow. Checked on HF Mistral with one kv head (SDPA without a
mask, and eager attention with a padding mask: the repeat_kv path) and on a hand-written
MQA block whose heads-pruned output is computed here independently.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import prunekit  # noqa: E402
from prunekit.structured import channel_groups, check_exact, slim_report, slim_with_plan  # noqa: E402

T = pytest.importorskip("transformers")


class MQA(nn.Module):
    """Four query heads, one key/value head repeated for all of them (as HF repeat_kv)."""

    def __init__(self, d=32, h=4, hd=8):
        super().__init__()
        self.hd, self.num_key_value_groups = hd, h
        self.q, self.k, self.v = nn.Linear(d, h * hd), nn.Linear(d, hd), nn.Linear(d, hd)
        self.o = nn.Linear(h * hd, d)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, self.hd).transpose(1, 2)
        k, v = (p(x).view(b, n, 1, self.hd).transpose(1, 2) for p in (self.k, self.v))
        k, v = (t[:, :, None].expand(b, 1, self.num_key_value_groups, n, self.hd).reshape(b, -1, n, self.hd)
                for t in (k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd), -1) @ v
        return self.o(att.transpose(1, 2).reshape(b, n, -1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MQA()
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(x + self.attn(x))


def _manual(net, x, keep):
    """The block with only query heads ``keep`` (k and v untouched), computed by hand."""
    a, hd = net.attn, net.attn.hd
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep])
    b, n, _ = x.shape
    q = (x @ a.q.weight[rows].T + a.q.bias[rows]).view(b, n, len(keep), hd).transpose(1, 2)
    k = (x @ a.k.weight.T + a.k.bias)[:, None]  # (b, 1, n, hd): one head, broadcast by matmul
    v = (x @ a.v.weight.T + a.v.bias)[:, None]
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
    y = att.transpose(1, 2).reshape(b, n, -1) @ a.o.weight[:, rows].T + a.o.bias
    return net.head(x + y)


def test_hand_written_mqa_drops_query_heads():
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 6, 32)
    groups = channel_groups(net, x)
    g = next(g for g in groups if g.prunable and "attn.q" in g.members)
    assert g.unit == 8 and "attn.o" in g.members and "attn.k" not in g.members
    qrows = dict(g.out_layers)["attn.q"]
    drop = torch.nonzero((qrows // 8 == 1) | (qrows // 8 == 2)).flatten()  # query heads 1 and 2
    s = slim_with_plan(net, x, {g.id: drop}, groups).eval()
    assert s.attn.q.out_features == 16 and s.attn.o.in_features == 16 and s.attn.k.out_features == 8
    assert s.attn.num_key_value_groups == 2
    with torch.no_grad():
        torch.testing.assert_close(s(x), _manual(net, x, [0, 3]), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(s(x), net(x), atol=1e-3)  # the heads really went


def _mistral(attn):
    torch.manual_seed(0)
    cfg = T.MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                          head_dim=8, intermediate_size=64, vocab_size=99, max_position_embeddings=64)
    cfg._attn_implementation = attn
    return T.MistralForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mistral_mqa_prunes_query_heads(attn, tmp_path):
    model = _mistral(attn)
    ids = torch.randint(3, 99, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    if attn == "eager":
        mask[1, :3] = 0  # a padding mask: HF repeats k/v (repeat_kv) instead of SDPA's enable_gqa
    x = {"input_ids": ids, "attention_mask": mask}
    s = prunekit.structured.slim(model, x, 0.5).eval()
    assert slim_report(s) is None
    with torch.no_grad():
        ref = model(**x).logits
        y = s(**x).logits
    assert check_exact(model, s, inputs=x) <= 1e-4 * max(1.0, ref.abs().max().item())
    heads = []
    for layer in s.model.layers:
        a = layer.self_attn
        assert a.k_proj.out_features == a.v_proj.out_features == 8  # the one kv head stays
        assert a.q_proj.out_features % 8 == 0 and a.q_proj.out_features == a.o_proj.in_features
        assert a.num_key_value_groups == a.q_proj.out_features // 8
        heads.append(a.num_key_value_groups)
    assert min(heads) < 4, f"no query head removed: {heads}"
    d = prunekit.save_pruned(s, tmp_path / "s")
    torch.manual_seed(1)
    fresh = _mistral(attn)
    loaded = prunekit.load_pruned(d, fresh).eval()
    assert [lay.self_attn.num_key_value_groups for lay in loaded.model.layers] == heads
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, y)


def test_phi3_fused_qkv_says_why_its_heads_stay():
    # Phi-3 splits qkv_proj's output at config.num_attention_heads * head_dim: Python numbers
    # fixed before the slice, shared by all layers; explain must name that slice
    torch.manual_seed(0)
    cfg = T.Phi3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=99, max_position_embeddings=64, pad_token_id=0)
    e = prunekit.structured.explain(T.Phi3ForCausalLM(cfg).eval(), {"input_ids": torch.randint(3, 99, (1, 6))})
    g = next(g for g in e.groups if "model.layers.0.self_attn.qkv_proj:out" in g.layers)
    assert not g.prunable
    assert "slice [None:32] of a 64-channel dim" in g.reason and "qkv_proj" in g.reason, g.reason
