"""explain(): every group with its members, and for frozen groups the specific reason."""
import torch
import torch.nn as nn

from prunekit.structured import channel_groups, explain


class Spectral(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pre = nn.Conv2d(c, 6, 1)
        self.post = nn.Conv2d(6, c, 1)

    def forward(self, x):
        z = self.pre(x)
        z = torch.fft.rfft(z, dim=-1).abs()  # no channel rule: pre's rows are kept
        return x + self.post(torch.nn.functional.pad(z, (0, x.shape[-1] - z.shape[-1])))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.spec = Spectral(8)
        self.pick = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.spec(self.b(torch.relu(self.a(x))))
        p = self.pick(y)[:, [0, 2, 4]]  # hard-coded positions of pick's rows
        return self.head(y), p.mean()


def test_frozen_groups_name_their_specific_reason_and_prunable_match_channel_groups():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    e = explain(model, x)
    by_producer = {g.layers[0].split(":")[0]: g for g in e.groups if g.layers[0].endswith(":out")}
    assert not by_producer["spec.pre"].prunable
    assert "op fft_rfft has no channel rule (in spec)" in by_producer["spec.pre"].reason
    assert not by_producer["head"].prunable and by_producer["head"].reason == "channels reach a model output"
    assert not by_producer["pick"].prunable and "hard-coded indices" in by_producer["pick"].reason
    assert by_producer["a"].prunable and by_producer["a"].reason == ""
    ref = channel_groups(model, x)
    assert [(g.id, g.size, g.members, g.prunable) for g in ref] == \
           [(g.id, g.size, g.members, g.prunable) for g in e.groups]
    assert any("fft_rfft in spec" in u for u in e.unknown_ops)
    table = str(e)
    assert "fft_rfft" in table and "prunable" in table.splitlines()[0]
    md = e.to_markdown()
    assert md.startswith("| group |") and md.count("\n| ") == len(e.groups)


def test_ignored_module_is_named():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    e = explain(model, x, ignore=["spec"])
    g = next(g for g in e.groups if g.layers[0] == "b:out")
    assert not g.prunable and "ignored module spec" in g.reason


def test_prune_cli_explain_prints_the_table_and_writes_nothing(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from prunekit.cli import app

    (tmp_path / "explnet.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("explnet", None)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["prune", "--model", "explnet:build", "--input-shape", "1,3,8,8", "--explain"])
    assert r.exit_code == 0, r.output
    assert "| group |" in r.output and "channels reach a model output" in r.output
    assert "| 0 | 8 | yes | 0, 2 |" in r.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["explnet.py"]
    r = CliRunner().invoke(app, ["prune", "--model", "explnet:build", "--input-shape", "1,3,8,8", "--ratio", "0.5"])
    assert r.exit_code == 2 and "--out is required" in r.output


def test_a_freeze_inside_a_leaf_rule_is_blamed_on_the_leaf_not_on_its_shape_queries():
    """A LayerNorm over (channels, length) cannot lose channels; the reason must name that
    leaf. The leaf rule's own ``x.dim()`` calls used to be recorded as model ops, so the
    report blamed 'op dim'."""
    import torch
    import torch.nn as nn

    from prunekit.structured import explain

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Conv1d(3, 8, 1), nn.LayerNorm([8, 5]), nn.Conv1d(8, 4, 1)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    text = str(explain(M(), torch.randn(2, 3, 5)))
    row = next(line for line in text.splitlines() if line.split()[:1] == ["0"])
    assert "ln (LayerNorm)" in row and "op dim" not in row, text
