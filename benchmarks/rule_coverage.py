"""Rule coverage: how much of five small architectures the structured engine can prune.

For each model, the fraction of conv/linear output channels that lie in prunable channel
groups, as ``channel_groups`` reports them: ``sum(g.size for prunable g) / sum(g.size)``
(the brief's measure), and a per-layer measure that does not depend on how groups are
listed: of all output channels of every Conv*/ConvTranspose*/Linear/LSTM/GRU module, the
share that some prunable group removes with that layer. Run it on two checkouts to compare
(``PYTHONPATH=<checkout> python benchmarks/rule_coverage.py``); it writes
``benchmarks/results/rule_coverage.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import prunekit
from prunekit.structured import channel_groups


class UNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        s = self.enc1(x)
        y = self.mid(self.enc2(s))
        return self.head(self.dec(torch.cat([self.up(y), s], 1)))


def channel_shuffle(x, g):
    b, c, h, w = x.shape
    return x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, residual."""

    def __init__(self, c, g):
        super().__init__()
        self.g = g
        self.gc1 = nn.Conv2d(c, c, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.gc2 = nn.Conv2d(c, c, 1, groups=g, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = channel_shuffle(F.relu(self.bn1(self.gc1(x))), self.g)
        y = self.bn3(self.gc2(self.bn2(self.dw(y))))
        return F.relu(x + y)


class SplitUnit(nn.Module):
    """ShuffleNet v2 unit: chunk in two, transform one half, concat, shuffle by 2."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.u1 = ShuffleUnit(24, 3)
        self.expand = nn.Sequential(nn.Conv2d(24, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.u2 = SplitUnit(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.u2(self.expand(self.u1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class StdConv2d(nn.Conv2d):
    """BiT weight standardisation: every filter is standardised over its own fan-in."""

    def forward(self, x):
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BiTish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = StdConv2d(3, 16, 3, padding=1)
        self.c1 = StdConv2d(16, 32, 1)
        self.n1 = nn.GroupNorm(4, 32)
        self.c2 = StdConv2d(32, 16, 3, padding=1)
        self.n2 = nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.n2(self.c2(F.relu(self.n1(self.c1(s)))))
        return self.fc(F.relu(s + y).mean((2, 3)))


class OLMoBlock(nn.Module):
    """Pre-norm transformer MLP block whose norms are functional calls on bare parameters."""

    def __init__(self, d, hidden):
        super().__init__()
        self.ln_w = nn.Parameter(torch.ones(d))
        self.ln_b = nn.Parameter(torch.zeros(d))
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        h = F.layer_norm(x, self.ln_w.shape, self.ln_w, self.ln_b, 1e-5)
        return x + self.down(F.gelu(self.up(h)))


class OLMoish(nn.Module):
    def __init__(self, d=32, hidden=64):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.blocks = nn.ModuleList([OLMoBlock(d, hidden) for _ in range(2)])
        self.ln_w = nn.Parameter(torch.ones(d))
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(F.layer_norm(x, self.ln_w.shape, self.ln_w, None, 1e-5))


class LSTMish(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.rnn = nn.LSTM(16, 24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        y, _ = self.rnn(F.relu(self.emb(x)))
        return self.head(y[:, -1])


MODELS = {
    "unet": (UNetish, lambda: torch.randn(2, 3, 16, 16)),
    "shufflenet": (ShuffleNetish, lambda: torch.randn(2, 3, 8, 8)),
    "bit_ws_conv": (BiTish, lambda: torch.randn(2, 3, 8, 8)),
    "olmo_functional_ln": (OLMoish, lambda: torch.randn(2, 5, 8)),
    "lstm": (LSTMish, lambda: torch.randn(2, 6, 8)),
}
LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase)


def _out_width(m: nn.Module) -> int:
    if isinstance(m, nn.RNNBase):
        return m.hidden_size * m.num_layers
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.out_channels


def coverage(name: str) -> dict:
    cls, make = MODELS[name]
    torch.manual_seed(0)
    model, x = cls().eval(), make()
    groups = channel_groups(model, x)
    total = sum(g.size for g in groups)
    free = sum(g.size for g in groups if g.prunable)
    widths = {n: _out_width(m) for n, m in model.named_modules() if isinstance(m, LAYERS)}
    prunable_rows: dict[str, set] = {n: set() for n in widths}
    for g in groups:
        if not g.prunable:
            continue
        for n, idx in g.out_layers:
            if n in prunable_rows:
                prunable_rows[n].update(idx[idx >= 0].tolist())
        for t, dim, idx in g.params:
            owner, _, attr = t.rpartition(".")
            # transposed convs keep output channels in weight dim 1
            mod = dict(model.named_modules()).get(owner)
            if isinstance(mod, nn.modules.conv._ConvTransposeNd) and attr == "weight" and dim == 1:
                prunable_rows[owner].update(idx[idx >= 0].flatten().tolist())
            elif isinstance(mod, nn.modules.conv._ConvNd) and not isinstance(mod, nn.modules.conv._ConvTransposeNd) \
                    and attr == "weight" and dim == 0:
                prunable_rows[owner].update(idx[idx >= 0].flatten().tolist())
            elif isinstance(mod, nn.RNNBase) and attr.startswith("weight_hh_l") and dim == 1:
                layer = int(attr[len("weight_hh_l"):].split("_")[0])
                prunable_rows[owner].update((layer * mod.hidden_size + i) for i in idx[idx >= 0].flatten().tolist())
    layer_total = sum(widths.values())
    layer_free = sum(min(len(prunable_rows[n]), w) for n, w in widths.items())
    return {"group_fraction": free / total if total else 0.0, "group_channels": total,
            "layer_fraction": layer_free / layer_total if layer_total else 0.0, "layer_channels": layer_total,
            "per_layer": {n: f"{min(len(prunable_rows[n]), w)}/{w}" for n, w in widths.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rule_coverage.json"))
    ap.add_argument("--label", default="after")
    ap.add_argument("--merge", action="store_true", help="add this run under --label to an existing JSON")
    args = ap.parse_args()
    res = {n: coverage(n) for n in MODELS}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(prunekit.__file__).parent).stdout.strip()
    print(f"{'model':22s} {'groups prunable':>16s} {'layer rows prunable':>20s}   ({args.label}, {rev})")
    for n, r in res.items():
        print(f"{n:22s} {r['group_fraction']:16.1%} {r['layer_fraction']:20.1%}")
    out = Path(args.out)
    data = json.loads(out.read_text()) if args.merge and out.exists() else {}
    data[args.label] = {"commit": rev, "models": res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
