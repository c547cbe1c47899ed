"""slim's automatic fallback: a slim model that fails validation gets the groups involved
frozen and is re-planned, instead of an error asking for ``ignore=`` by hand."""
import os

import pytest
import torch
import torch.nn as nn

from prunekit.structured import channel_groups, check_exact, load_pruned, save_pruned, slim, slim_report


class FixedMix(nn.Module):
    """Mixes channels in blocks of a width read from its own attribute (invisible to the analysis)."""

    def __init__(self, c):
        super().__init__()
        self.proj = nn.Conv2d(c, c, 1)
        self.block = 4  # not a known size attribute: slim cannot update it

    def forward(self, x):
        y = self.proj(x)
        b, c, h, w = y.shape
        y = y.view(b, self.block, c // self.block * h * w).softmax(-1).view(b, c, h, w)
        return x + y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
        self.mix = FixedMix(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.body(h)
        return self.head(self.mix(h))


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_strict_raises_and_default_freezes_only_the_groups_involved(tmp_path):
    # FixedMix still runs once slim (c // block adapts) but softmaxes over other channel
    # blocks: only the exactness check sees it
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="differs from the reference"):
        slim(model, x, 0.5, strict=True)
    s = slim(model, x, 0.5)
    assert check_exact(model, s, inputs=x) < 1e-5
    assert _params(s) < _params(model)
    assert s.body[0].out_channels == 8  # the body's inner width is not involved: still pruned
    report = slim_report(s)
    by_id = {g.id: g for g in channel_groups(model, x)}
    frozen = {f["group"] for f in report["frozen"]}
    # the residual stream (stem, body[2], mix, head) is what FixedMix views in blocks of 4
    assert any("mix.proj" in by_id[g].members or "mix" in by_id[g].members for g in frozen), report
    assert [r["kind"] for r in report["rounds"]] == ["inexact"]
    assert all(by_id[g].prunable for g in frozen)
    assert s.stem.out_channels == 8 and s.mix.proj.out_channels == 8
    save_pruned(s, tmp_path / "m")
    back = load_pruned(tmp_path / "m", Net())
    assert slim_report(back) == report  # the report travels in plan.json


class RootAttention(nn.Module):
    """A custom attention as the whole model, reading its head count from ``nh``."""

    def __init__(self, c=32, nh=4):
        super().__init__()
        self.nh = nh
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, 64), nn.Linear(64, c)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.nh, c // self.nh).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_root_failure_names_the_op_and_attribute_not_the_whole_model():
    torch.manual_seed(0)
    model, x = RootAttention().eval(), torch.randn(2, 5, 32)
    with pytest.raises(RuntimeError) as e:
        slim(model, x, 0.5, strict=True)
    msg = str(e.value)
    assert "'view'" in msg and "nh=4" in msg and "ignore=['qkv']" in msg, msg
    assert "ignore=['<model>']" not in msg and "perhaps '<model>'" not in msg
    s = slim(model, x, 0.5)
    assert check_exact(model, s, inputs=x) < 1e-5
    assert s.fc1.out_features < 64  # the MLP still prunes
    assert s.qkv.out_features == 96  # the heads the model hard-codes are kept
    rounds = slim_report(s)["rounds"]
    assert rounds[0]["module"] == "<model>" and rounds[0]["op"] == "view"


class Unfixable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.shape[-1] != 16:  # the only prunable group breaks the model
            raise ValueError("width 16 expected")
        return self.b(h)


def test_nothing_prunable_left_is_a_clear_error():
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="nothing prunable is left") as e:
        slim(Unfixable().eval(), torch.randn(2, 8), 0.5)
    assert "width 16 expected" in str(e.value)


transformers = pytest.importorskip("transformers")


def test_pvt_v2_single_head_stage_slims_without_ignore():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    T = transformers
    torch.manual_seed(0)
    model = T.PvtV2ForImageClassification(T.PvtV2Config(
        image_size=32, num_channels=3, num_labels=5, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2])).eval()
    x = {"pixel_values": torch.randn(2, 3, 32, 32)}
    with pytest.raises(RuntimeError, match="no longer runs"):
        slim(model, x, 0.5, strict=True)
    s = slim(model, x, 0.5)
    ref = model(**x).logits
    assert check_exact(model, s, inputs=x) <= 1e-4 * max(1.0, ref.abs().max().item())
    assert _params(s) < _params(model)
    mods = {f["module"] for f in slim_report(s)["frozen"]}
    assert "pvt_v2.encoder.layers.0.blocks.0.attention" in mods, mods
