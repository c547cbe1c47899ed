"""Group coverage: every output row of every conv/linear is in exactly one channel group,
and the channels that option-A shortcuts pad in are prunable groups of their own."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit import models
from prunekit.structured import channel_groups, check_exact, load_pruned, save_pruned, slim, slim_with_plan
from prunekit.structured.trace.groups import analyse

torch.set_num_threads(1)

# (input channels, input size, options): small inputs / widths keep this fast
ZOO = {
    "resnet20": (3, 16, {}), "resnet32": (3, 8, {"option": "B"}), "resnet56": (3, 8, {}),
    "resnet110": (3, 8, {"width": 0.5}), "vgg11-bn": (3, 32, {"width": 0.25}),
    "vgg16-bn": (3, 32, {"width": 0.25}), "vgg19-bn": (3, 32, {"width": 0.25}),
    "mobilenetv2": (3, 16, {"width": 0.5}), "resnet18": (3, 32, {"width": 0.25}),
    "resnet50": (3, 32, {"width": 0.25}), "vit": (3, 16, {"dim": 48, "depth": 2, "heads": 3, "patch": 4}),
    "mlp7-linear": (1, 32, {}), "lenet-300-100": (1, 28, {}), "lenet5-caffe": (1, 28, {}),
}


def run_layers(model, x):
    """Conv/linear modules that run on ``x`` (name -> out rows), and the one whose output
    is the model's output (found by identity, independently of the engine)."""
    seen, hooks = {}, []

    def hook(name):
        def record(mod, args, out):
            seen.setdefault(name, (mod.weight.shape[0], out))  # returns None: output untouched
        return record

    for n, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(n)))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    final = [n for n, (_, o) in seen.items() if o is out]
    return {n: rows for n, (rows, _) in seen.items()}, final


def coverage(groups, rows_of):
    """{layer: count of groups covering each out row}, and the (layer, row) pairs in frozen groups."""
    count = {n: torch.zeros(r, dtype=torch.long) for n, r in rows_of.items()}
    frozen = set()
    for g in groups:
        for n, idx in g.out_layers:
            pos = idx.flatten()
            pos = pos[pos >= 0]
            count[n].index_add_(0, pos, torch.ones_like(pos))
            if not g.prunable:
                frozen |= {(n, int(p)) for p in pos}
    return count, frozen


def test_zoo_table_is_complete():
    assert set(ZOO) == set(models.names())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_out_row_is_in_exactly_one_group(name):
    c, s, kw = ZOO[name]
    m = models.build(name, c, s, 10, **kw).eval()
    x = torch.randn(2, c, s, s)
    rows_of, final = run_layers(m, x)
    assert len(final) == 1, "each zoo model returns its classifier's output"
    count, frozen = coverage(channel_groups(m, x), rows_of)
    bad = {n: torch.nonzero(cnt != 1).flatten().tolist() for n, cnt in count.items() if (cnt != 1).any()}
    assert not bad, f"out rows covered by zero or several groups: {bad}"
    # in the zoo only the logits are kept: nothing else reaches an output or an unknown op
    assert frozen == {(final[0], r) for r in range(rows_of[final[0]])}


def _stream(groups, layer, rows):
    """The group holding ``rows`` of ``layer`` (all in one group), with that layer's index."""
    hits = [(g, dict(g.out_layers)[layer]) for g in groups if layer in dict(g.out_layers)]
    for g, idx in hits:
        if set(rows) <= set(idx.tolist()):
            return g
    raise AssertionError(f"rows {rows} of {layer} are not in one group")


def test_option_a_padded_channels_form_their_own_groups():
    m = models.build("resnet20", 3, 16, 10).eval()
    groups = channel_groups(m, torch.randn(2, 3, 16, 16))
    ends2 = list(range(8)) + list(range(24, 32))
    g2 = _stream(groups, "layer2.0.conv2", ends2)
    assert g2.prunable and g2.size == 16 and g2.parts == 1
    outs = dict(g2.out_layers)
    for b in range(3):  # every block of stage 2 adds into these channels, at the same positions
        assert torch.equal(outs[f"layer2.{b}.conv2"], torch.tensor(ends2))
        assert torch.equal(dict(g2.norm_layers)[f"layer2.{b}.bn2"], torch.tensor(ends2))
    # read by the later blocks' conv1 and by stage 3, where its shortcut pads 16 more in front
    ins = dict(g2.in_layers)
    assert {"layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1"} <= set(ins)
    assert torch.equal(ins["layer3.0.conv1"], torch.tensor(ends2))
    assert torch.equal(outs["layer3.2.conv2"], torch.tensor(ends2) + 16)
    assert torch.equal(ins["fc"], torch.tensor(ends2) + 16)
    [(module, attrs, n_before, idx)] = g2.pads
    assert (module, attrs, n_before) == ("layer2.0.shortcut", {"pad_before": "before", "pad_after": "after"}, 8)
    assert torch.equal(idx, torch.arange(16))
    g3 = _stream(groups, "layer3.1.conv2", list(range(16)) + list(range(48, 64)))
    assert g3.prunable and g3.size == 32 and [p[0] for p in g3.pads] == ["layer3.0.shortcut"]
    # the three streams are distinct groups; stage 1's keeps positions 8..23 / 24..39
    g1 = _stream(groups, "conv1", list(range(16)))
    assert len({g1.id, g2.id, g3.id}) == 3
    assert torch.equal(dict(g1.out_layers)["layer3.0.conv2"], torch.arange(24, 40))


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_option_a_slim_halves_every_stream(name, tmp_path):
    torch.manual_seed(0)
    m = models.build(name, 3, 8, 10).eval()
    x = torch.randn(2, 3, 8, 8)
    s = slim(m, x, 0.5)
    for i, w in ((1, 8), (2, 16), (3, 32)):
        assert s.get_submodule(f"layer{i}.0.conv2").out_channels == w
        assert s.get_submodule(f"layer{i}.0.conv1").out_channels == w
    for i, pad in ((2, 8), (3, 16)):  # half of each side's padding may go, chosen by importance
        sc = s.get_submodule(f"layer{i}.0.shortcut")
        assert sc.pad_before + sc.pad_after == pad and sc.pad_before >= 0 and sc.pad_after >= 0
    # uniform halving of every group is exactly the width-0.5 architecture
    half = models.build(name, 3, 8, 10, width=0.5)
    assert sum(p.numel() for p in s.parameters()) == sum(p.numel() for p in half.parameters())
    assert check_exact(m, s, inputs=x) < 1e-5
    loaded = load_pruned(save_pruned(s, tmp_path / "slim"), models.build(name, 3, 8, 10)).eval()
    assert (loaded.layer3[0].shortcut.pad_before, loaded.layer3[0].shortcut.pad_after) == \
        (s.layer3[0].shortcut.pad_before, s.layer3[0].shortcut.pad_after)
    assert torch.equal(loaded(x), s(x))
    # float64 leaves no rounding to hide behind
    assert check_exact(m.double(), s.double(), inputs=x.double()) < 1e-9


def test_removing_chosen_padded_channels_lowers_each_side():
    m = models.build("resnet20", 3, 8, 10).eval()
    x = torch.randn(2, 3, 8, 8)
    groups = channel_groups(m, x)
    g2 = _stream(groups, "layer2.0.conv2", list(range(8)) + list(range(24, 32)))
    # group channels 0..7 are the 8 padded in front, 8..15 the 8 behind
    s = slim_with_plan(m, x, {g2.id: torch.tensor([0, 3, 9])}, groups)
    assert (s.layer2[0].shortcut.pad_before, s.layer2[0].shortcut.pad_after) == (6, 7)
    assert (s.layer3[0].shortcut.pad_before, s.layer3[0].shortcut.pad_after) == (16, 16)
    assert s.layer2[1].conv2.out_channels == 29 and s.layer3[1].conv2.out_channels == 61
    keep = [i for i in range(32) if i not in (0, 3, 25)]
    assert torch.equal(s.layer2[1].conv2.weight, m.layer2[1].conv2.weight[keep])
    assert torch.equal(s.fc.weight, m.fc.weight[:, [i for i in range(64) if i not in (16, 19, 41)]])
    assert check_exact(m, s, inputs=x) < 1e-5


def test_stride_equal_to_pad_amount_is_not_taken_for_it():
    # width 0.25: stage 2 pads 2 channels each side, as large as the shortcut's stride
    m = models.build("resnet20", 3, 8, 10, width=0.25).eval()
    x = torch.randn(2, 3, 8, 8)
    g = _stream(channel_groups(m, x), "layer2.0.conv2", [0, 1, 6, 7])
    assert g.prunable and g.pads[0][1] == {"pad_before": "before", "pad_after": "after"}
    s = slim(m, x, 0.5)
    assert s.layer2[0].shortcut.stride == 2 and s.layer2[0].conv2.out_channels == 4
    assert check_exact(m, s, inputs=x) < 1e-5


class PadBlock(nn.Module):
    """stem -> residual add of a conv and the channel-padded stem; ``how`` says where the
    pad amounts live."""

    def __init__(self, how, c=4, before=2, after=3):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, c, 1)
        self.conv = nn.Conv2d(c, c + before + after, 3, padding=1)
        self.head = nn.Conv2d(c + before + after, 5, 1)
        if how == "attrs":
            self.front, self.back = before, after
        elif how == "one":
            self.pad = before
        elif how == "unused":
            self.groups_hint = before  # equal to the amount, but the amount is computed below
        self.amounts = (before, after)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.how == "attrs":
            amt = (self.front, self.back)
        elif self.how == "one":
            amt = (self.pad, self.pad)
        else:
            amt = tuple(int(v) for v in torch.tensor(self.amounts).tolist())  # computed: no attribute
        y = F.relu(self.conv(x)) + F.pad(x, (0, 0, 0, 0) + amt)
        return self.head(y).mean((2, 3))


def test_unequal_amounts_in_two_attributes():
    m = PadBlock("attrs", before=2, after=3).eval()
    x = torch.randn(2, 3, 5, 5)
    groups = channel_groups(m, x)
    g = _stream(groups, "conv", [0, 1, 6, 7, 8])
    assert g.prunable and g.parts == 1 and g.pads[0][:3] == ("", {"front": "before", "back": "after"}, 2)
    s = slim_with_plan(m, x, {g.id: torch.tensor([1, 2, 3])}, groups)  # 1 in front, 2 behind
    assert (s.front, s.back) == (1, 1) and s.conv.out_channels == 6
    assert check_exact(m, s, inputs=x) < 1e-5


def test_one_attribute_for_both_sides_removes_equally():
    m = PadBlock("one", before=3, after=3).eval()
    x = torch.randn(2, 3, 5, 5)
    groups = channel_groups(m, x)
    g = _stream(groups, "conv", [0, 1, 2, 7, 8, 9])
    assert g.prunable and g.parts == 2 and g.pads[0][1] == {"pad": "both"}
    with pytest.raises(ValueError, match="equally many"):
        slim_with_plan(m, x, {g.id: torch.tensor([0, 1, 3])}, groups)
    s = slim_with_plan(m, x, {g.id: torch.tensor([0, 1, 3, 5])}, groups)
    assert s.pad == 1 and s.conv.out_channels == 6
    assert check_exact(m, s, inputs=x) < 1e-5
    assert check_exact(m, slim(m, x, 0.5), inputs=x) < 1e-5


@pytest.mark.parametrize("how", ["unused", "literal"])
def test_amounts_not_held_in_attributes_keep_the_padded_channels(how):
    m = PadBlock(how, before=2, after=2).eval()
    x = torch.randn(2, 3, 5, 5)
    cap = analyse(m, x)
    rows = {"stem": 4, "conv": 8, "head": 5}
    count, frozen = coverage(cap.groups, rows)
    assert all((c == 1).all() for c in count.values())
    assert {r for n, r in frozen if n == "conv"} == {0, 1, 6, 7}  # padded ends kept, the rest prunable
    if how == "unused":
        assert m.groups_hint == 2  # the probe put the attribute back
    s = slim(m, x, 0.5)
    assert s.conv.out_channels == 6 and check_exact(m, s, inputs=x) < 1e-5


class TwoPads(nn.Module):
    """The same shortcut module applied twice: both calls share its amount attributes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.sc = models.resnet_cifar.PadShortcut(4, 8, 1)
        self.b = nn.Conv2d(4, 8, 1)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h) + self.sc(h)
        z = self.c(y) + self.sc(F.relu(h))
        return self.head(z.mean((2, 3)))


def test_a_pad_module_called_twice_is_one_set_of_channels():
    m = TwoPads().eval()
    x = torch.randn(2, 3, 4, 4)
    groups = channel_groups(m, x)
    g = _stream(groups, "b", [0, 1, 6, 7])
    assert g.prunable and [p[0] for p in g.pads] == ["sc"] and "c" in dict(g.out_layers)
    s = slim(m, x, 0.5)
    assert s.sc.pad_before + s.sc.pad_after == 2 and check_exact(m, s, inputs=x) < 1e-5
