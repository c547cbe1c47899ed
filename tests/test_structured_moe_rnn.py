"""Rules for mixture-of-experts layers (3-D expert weights, token routing) and recurrent
layers (nn.LSTM / nn.GRU / nn.RNN).

Every case slims at 0.5 and 0.3 and checks: the slim model matches the original with the
removed channels zeroed (``check_exact``), the expert intermediate / RNN hidden width really
shrank and the size attributes follow, the slim weights are exactly the kept slices of the
dense ones (an independent computation from the stored plan), and ``save_pruned`` /
``load_pruned`` on a differently seeded fresh model reproduces the slim model bitwise.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import prunekit.structured as S
from prunekit.structured.surgery.plan import get_plan


def kept(slim_model, tensor, dim, size):
    """Kept original indices of ``tensor`` along ``dim`` (all of them when not sliced)."""
    for s in get_plan(slim_model)["slices"]:
        if s["tensor"] == tensor and s["dim"] == dim:
            return torch.tensor(s["keep"])
    return torch.arange(size)


def round_trip(make, slim_model, x, tmp_path, tag):
    d = S.save_pruned(slim_model, tmp_path / tag)
    torch.manual_seed(123)  # other weights: loading must overwrite every one
    back = S.load_pruned(d, make()).eval()
    with torch.no_grad():
        assert torch.equal(back(x), slim_model(x))
    return back


# ---------------------------------------------------------------- mixture of experts
class Experts(nn.Module):
    """Experts as two 3-D parameters, run one of three ways (all seen in transformers 5.x)."""

    def __init__(self, e, h, i, impl):
        super().__init__()
        self.num_experts, self.hidden_dim, self.intermediate_dim, self.impl = e, h, i, impl
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h) / h ** 0.5)
        self.down_proj = nn.Parameter(torch.randn(e, h, i) / i ** 0.5)

    def forward(self, x, idx, w):  # x (T, H); idx, w (T, k)
        if self.impl == "loop":  # per-expert w[e] + F.linear, index_add_ back to the tokens
            out = torch.zeros_like(x)
            for e in range(self.num_experts):
                tok, pos = torch.where(idx == e)
                if tok.numel() == 0:
                    continue
                gate, up = F.linear(x[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(F.silu(gate) * up, self.down_proj[e]) * w[tok, pos, None]
                out.index_add_(0, tok, y)
            return out
        k = idx.shape[1]
        flat = idx.reshape(-1)
        if self.impl == "bmm":  # gathered weights w[ids] + bmm
            xs = x.repeat_interleave(k, dim=0)
            h = torch.bmm(self.gate_up_proj[flat], xs.unsqueeze(-1)).squeeze(-1)
            gate, up = h.chunk(2, dim=-1)
            y = torch.bmm(self.down_proj[flat], (F.silu(gate) * up).unsqueeze(-1)).squeeze(-1)
        else:  # torch._grouped_mm over tokens sorted by expert
            ids, perm = torch.sort(flat)
            xs = x[perm // k]
            offs = torch.cumsum(torch.bincount(ids, minlength=self.num_experts), 0).to(torch.int32)
            gate, up = torch._grouped_mm(xs, self.gate_up_proj.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
            y_sorted = torch._grouped_mm(F.silu(gate) * up, self.down_proj.transpose(-2, -1), offs=offs)
            y = torch.empty_like(y_sorted).index_copy_(0, perm, y_sorted)
        y = y * w.reshape(-1, 1)
        return y.view(-1, k, x.shape[-1]).sum(1)


class MoENet(nn.Module):
    def __init__(self, e=4, h=16, i=24, k=2, impl="loop", n_in=6, n_out=3):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(n_in, h)
        self.router = nn.Linear(h, e, bias=False)
        self.experts = Experts(e, h, i, impl)
        self.head = nn.Linear(h, n_out)

    def forward(self, x):  # x (B, L, n_in)
        hid = self.inp(x)
        flat = hid.reshape(-1, hid.shape[-1])
        w, idx = torch.topk(self.router(flat).softmax(-1), self.k, dim=-1)
        flat = flat + self.experts(flat, idx, w / w.sum(-1, keepdim=True))
        return self.head(flat.view(hid.shape))


def check_moe(make, x, tmp_path, ratios=(0.5, 0.3)):
    torch.manual_seed(0)
    model = make().eval()
    ex = model.experts
    e, i2, h = ex.gate_up_proj.shape
    for r in ratios:
        s = S.slim(model, x, r).eval()
        assert S.check_exact(model, s, inputs=x) < 1e-5
        se = s.experts
        ki = kept(s, "experts.down_proj", 2, i2 // 2)
        kh = kept(s, "experts.down_proj", 1, h)
        assert len(ki) < i2 // 2 and len(kh) < h, "expert FFN and hidden widths both shrink"
        assert se.gate_up_proj.shape == (e, 2 * len(ki), len(kh)) and se.down_proj.shape == (e, len(kh), len(ki))
        # a width attribute follows its dim unless another dim of that old size was cut differently
        dims = [(i2, 2 * len(ki)), (h, len(kh)), (i2 // 2, len(ki)), (e, e)]  # (old, new) of every dim
        for attr in ("intermediate_dim", "hidden_dim"):
            old = getattr(ex, attr)
            new = {n for o, n in dims if o == old}
            assert getattr(se, attr) == (new.pop() if len(new) == 1 else old)
        # the same intermediate channels go in every expert, in both the gate and the up half
        rows = torch.cat([ki, ki + i2 // 2])
        assert torch.equal(se.gate_up_proj, ex.gate_up_proj[:, rows][:, :, kh])
        assert torch.equal(se.down_proj, ex.down_proj[:, kh][:, :, ki])
        assert torch.equal(s.router.weight, model.router.weight[:, kh]), "experts are never removed"
        if ex.impl == "grouped":
            assert len(ki) % 4 == 0 and len(kh) % 4 == 0, "grouped_mm needs 16-byte aligned widths"
        round_trip(make, s, x, tmp_path, f"r{r}")


@pytest.mark.parametrize("impl", ["loop", "bmm", "grouped"])
def test_moe_experts_slim(impl, tmp_path):
    check_moe(lambda: MoENet(impl=impl), torch.randn(2, 5, 6), tmp_path)


@settings(max_examples=6, deadline=None)
@given(e=st.integers(2, 5), h=st.integers(3, 6), i=st.integers(3, 7),
       impl=st.sampled_from(["loop", "bmm", "grouped"]), ratio=st.sampled_from([0.3, 0.5]))
def test_moe_random_sizes(e, h, i, impl, ratio, tmp_path_factory):
    # top-2 (with top-1, view(T, 1, H) reads as a split into one head of size H: see ops_shape.view)
    h, i = 4 * h, 4 * i  # grouped_mm's CPU kernel needs aligned sizes to run at all
    check_moe(lambda: MoENet(e=e, h=h, i=i, k=2, impl=impl), torch.randn(2, 4, 6),
              tmp_path_factory.mktemp("moe"), ratios=(ratio,))


class Routed(nn.Module):
    """Rows moved along ``dim`` by one index op: over tokens (dim 0) the channels pass; along
    the channel dim (dim 1) the moved positions are hard-coded, so the channels must stay."""

    def __init__(self, op, dim):
        super().__init__()
        self.op, self.dim = op, dim
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):  # x (T, 6)
        y = torch.relu(self.a(x))
        perm = torch.arange(y.shape[self.dim] - 1, -1, -1)
        full = perm.expand_as(y) if self.dim else perm[:, None].expand_as(y)
        if self.op == "index_add":
            z = torch.zeros_like(y).index_add_(self.dim, perm, y)
        elif self.op == "index_copy":
            z = torch.zeros_like(y).index_copy_(self.dim, perm, y)
        elif self.op == "index_select":
            z = y.index_select(self.dim, perm)
        elif self.op == "gather":
            z = torch.gather(y, self.dim, full)
        else:
            z = torch.zeros_like(y).scatter_add_(self.dim, full, y)
        return self.b(z)


@pytest.mark.parametrize("op", ["index_add", "index_copy", "index_select", "gather", "scatter_add"])
@pytest.mark.parametrize("dim", [0, 1])
def test_routing_ops_pass_channels_only_off_their_dim(op, dim):
    torch.manual_seed(0)
    m = Routed(op, dim).eval()
    x = torch.randn(10, 6)  # 10 tokens
    assert not S.explain(m, x).unknown_ops
    s = S.slim(m, x, 0.5).eval()
    assert S.check_exact(m, s, inputs=x) < 1e-5
    assert (s.a.out_features < 16) == (dim == 0)


# ---------------------------------------------------------------- recurrent layers
class RNNNet(nn.Module):
    def __init__(self, cls, layers, batch_first, bidirectional, with_h0=False):
        super().__init__()
        self.with_h0 = with_h0
        self.inp = nn.Linear(6, 10)
        self.rnn = cls(10, 12, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)
        d = 2 if bidirectional else 1
        self.h0 = nn.Linear(6, 12)  # an initial state computed from the input carries the units
        self.head = nn.Linear(12 * d, 3)

    def forward(self, x):
        z = torch.relu(self.inp(x))
        if self.with_h0:
            r = self.rnn
            h0 = torch.tanh(self.h0(x.mean(1 if r.batch_first else 0)))
            h0 = h0.expand(r.num_layers * (2 if r.bidirectional else 1), *h0.shape).contiguous()
            y, _ = r(z, (h0, torch.zeros_like(h0)) if isinstance(r, nn.LSTM) else h0)
        else:
            y, _ = self.rnn(z)
        return self.head(y)


def check_rnn_weights(dense, slim_model):
    r, sr = dense.rnn, slim_model.rnn
    g = {"LSTM": 4, "GRU": 3}.get(r.mode, 1)
    H = r.hidden_size
    kh = kept(slim_model, "rnn.weight_hh_l0", 1, H)
    ki = kept(slim_model, "rnn.weight_ih_l0", 1, r.input_size)
    assert sr.hidden_size == len(kh) < H and sr.input_size == len(ki) < r.input_size
    rows = torch.cat([kh + k * H for k in range(g)])  # unit j owns row j of every gate block
    d = 2 if r.bidirectional else 1
    for layer in range(r.num_layers):
        cols = ki if layer == 0 else torch.cat([kh + k * H for k in range(d)])
        for sfx in ("", "_reverse")[:d]:
            n = f"_l{layer}{sfx}"
            assert torch.equal(getattr(sr, "weight_ih" + n), getattr(r, "weight_ih" + n)[rows][:, cols])
            assert torch.equal(getattr(sr, "weight_hh" + n), getattr(r, "weight_hh" + n)[rows][:, kh])
            assert torch.equal(getattr(sr, "bias_ih" + n), getattr(r, "bias_ih" + n)[rows])
    assert torch.equal(slim_model.head.weight, dense.head.weight[:, torch.cat([kh + k * H for k in range(d)])])


RNN_CASES = [(c, n, bf, bi) for c in (nn.LSTM, nn.GRU) for n in (1, 2) for bf in (True, False) for bi in (False, True)]


@pytest.mark.parametrize("cls,layers,batch_first,bidirectional", RNN_CASES[::2] + [(nn.RNN, 2, True, True)],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_rnn_slim(cls, layers, batch_first, bidirectional, tmp_path):
    make = lambda: RNNNet(cls, layers, batch_first, bidirectional)  # noqa: E731
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    assert not S.explain(model, x).unknown_ops
    for r in (0.5, 0.3):
        s = S.slim(model, x, r).eval()
        assert S.check_exact(model, s, inputs=x) < 1e-5
        check_rnn_weights(model, s)
        round_trip(make, s, x, tmp_path, f"r{r}")


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnn_initial_state(cls, tmp_path):
    """A computed initial state joins its producer to the hidden units; both shrink together."""
    make = lambda: RNNNet(cls, 2, True, False, with_h0=True)  # noqa: E731
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 5, 6)
    s = S.slim(model, x, 0.5).eval()
    assert S.check_exact(model, s, inputs=x) < 1e-5
    check_rnn_weights(model, s)
    assert s.h0.out_features == s.rnn.hidden_size
    round_trip(make, s, x, tmp_path, "h0")


def test_rnn_constant_initial_state_keeps_hidden_units():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(6, 12, batch_first=True), nn.Linear(12, 3)

        def forward(self, x):
            return self.head(self.rnn(x, torch.zeros(1, x.shape[0], 12))[0])

    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(2, 5, 6)
    s = S.slim(m, x, 0.5)
    assert s.rnn.hidden_size == 12 and S.check_exact(m, s, inputs=x) < 1e-5


@settings(max_examples=5, deadline=None)
@given(cls=st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]), layers=st.integers(1, 3), hidden=st.integers(3, 9),
       batch_first=st.booleans(), bidirectional=st.booleans(), ratio=st.floats(0.2, 0.7))
def test_rnn_random_sizes(cls, layers, hidden, batch_first, bidirectional, ratio):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 7), cls(7, hidden, num_layers=layers, batch_first=batch_first,
                                           bidirectional=bidirectional))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn = m[0], m[1]
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), 2)

        def forward(self, x):
            return self.head(self.rnn(self.inp(x))[0])

    net = Net().eval()
    x = torch.randn(3, 4, 4)
    s = S.slim(net, x, ratio).eval()
    assert S.check_exact(net, s, inputs=x) < 1e-5
    check_rnn_weights(net, s)


# ---------------------------------------------------------------- HuggingFace MoE decoders
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
           vocab_size=99, max_position_embeddings=64, num_experts_per_tok=2)
HF_MOE = {
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(**_HF, num_local_experts=4)),
    "olmoe": lambda: transformers.OlmoeForCausalLM(transformers.OlmoeConfig(**_HF, num_experts=4, pad_token_id=0)),
}


@pytest.mark.parametrize("name", sorted(HF_MOE))
def test_hf_moe_experts_slim(name, tmp_path):
    torch.manual_seed(0)
    model = HF_MOE[name]().eval()
    ids = torch.randint(3, 99, (2, 12))
    inputs = {"input_ids": ids}
    for r in (0.5, 0.3):
        s = S.slim(model, inputs, r).eval()
        assert S.check_exact(model, s, inputs=inputs) < 1e-5
        for layer, sl in zip(model.model.layers, s.model.layers):
            de, se = layer.mlp.experts, sl.mlp.experts
            e, i2, h = se.gate_up_proj.shape
            assert e == de.num_experts and i2 < 2 * de.intermediate_dim and h < de.hidden_dim
            assert se.intermediate_dim == i2 // 2 == se.down_proj.shape[2] and i2 // 2 % 4 == 0
            assert sl.mlp.gate.weight.shape == (e, h) and sl.mlp.gate.hidden_dim == h
        d = S.save_pruned(s, tmp_path / f"r{r}")
        torch.manual_seed(1)
        back = S.load_pruned(d, HF_MOE[name]()).eval()
        with torch.no_grad():
            assert torch.equal(back(**inputs).logits, s(**inputs).logits)
