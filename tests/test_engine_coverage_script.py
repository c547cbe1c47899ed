"""benchmarks/engine_coverage.py runs on a few models and writes the fields a comparison reads."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine_coverage  # noqa: E402

pytest.importorskip("transformers")


def test_coverage_rows_on_two_models(tmp_path, capsys):
    out = tmp_path / "cov.json"
    result = engine_coverage.main(["--only", "lenet-300-100", "hf/distilbert", "--label", "before",
                                   "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["label"] == "before" and saved["ratio"] == 0.5
    rows = {r["name"]: r for r in saved["rows"]}
    assert list(rows) == ["hf/distilbert", "prunekit/lenet-300-100"]  # zoo order
    lenet, bert = rows["prunekit/lenet-300-100"], rows["hf/distilbert"]
    # 784-300-100-10 MLP: the 300 and 100 hidden units are prunable, the 10 logits reach the output
    assert (lenet["channels"], lenet["prunable_channels"]) == (410, 400)
    assert lenet["prunable_fraction"] == round(400 / 410, 4)
    assert lenet["heads_prunable"] is None and lenet["unknown_ops"] == 0 and lenet["unknown_op_names"] == []
    assert lenet["slim_ok"] and lenet["exact"] and lenet["max_abs_err"] <= lenet["tol"]
    assert 0 < lenet["param_reduction"] < 1 and lenet["params_slim"] < lenet["params_dense"]
    assert bert["heads_prunable"] is True and bert["slim_ok"] and bert["exact"] and bert["error"] is None
    assert saved["summary"]["models"] == 2 and saved["summary"]["slim_ok"] == 2
    table = capsys.readouterr().out
    assert "| prunekit/lenet-300-100 | yes | yes | 98% | - | 0 |" in table


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        raise ValueError("no forward today")


def test_a_failing_model_is_a_row_not_a_crash():
    row = engine_coverage.measure("x/broken", _Broken, lambda: torch.randn(2, 4))
    assert row["analysis_ok"] is False and "no forward today" in row["analysis_error"]
    assert row["slim_ok"] is False and row["exact"] is False and "no forward today" in row["error"]
    assert "\n" not in row["error"]
    assert "| x/broken | no: " in engine_coverage.table([row])


def test_compare_shows_the_earlier_run(tmp_path, capsys):
    before = tmp_path / "before.json"
    engine_coverage.main(["--only", "mlp7-linear", "--out", str(before), "--label", "before"])
    capsys.readouterr()
    engine_coverage.main(["--only", "mlp7-linear", "--out", str(tmp_path / "after.json"), "--compare", str(before)])
    table = capsys.readouterr().out
    assert "prunable ch. before" in table and "| prunekit/mlp7-linear | yes | yes | 98% |" in table


def test_unknown_model_name_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown model"):
        engine_coverage.main(["--only", "no-such-model", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_attention_is_recognised_by_class_name():
    class TinyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)

    assert engine_coverage._attention_modules(nn.Sequential(TinyAttention(), nn.MultiheadAttention(4, 2))) == 2
    assert engine_coverage._attention_modules(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == 0


def test_fallback_fields_when_slim_had_to_freeze_groups(tmp_path):
    # SegFormer's classifier reshapes with a config constant: slim only works because its
    # fallback freezes the last stage, and the row must say how many channels that took
    if engine_coverage._fallback_frozen(nn.Linear(1, 1)) is None:
        pytest.skip("engine without an automatic fallback")
    result = engine_coverage.main(["--only", "hf/segformer", "--out", str(tmp_path / "c.json")])
    (row,) = result["rows"]
    assert row["slim_ok"] and row["exact"]
    assert 0 < row["fallback_frozen_channels"] <= row["prunable_channels"]
    want = round((row["prunable_channels"] - row["fallback_frozen_channels"]) / row["channels"], 4)
    assert row["effective_prunable_fraction"] == want < row["prunable_fraction"]
    assert result["summary"]["needed_fallback"] == 1
