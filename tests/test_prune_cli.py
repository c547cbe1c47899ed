"""``prunekit prune``: a user's own model (import path or HF directory) in, a slim verified
model and a before/after report out; every user error is one line, exit 2, and leaves
nothing in --out."""
import json
import os
import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from typer.testing import CliRunner

import prunekit
from prunekit.cli import app

NET = '''
import torch.nn as nn
def build_net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))
def not_a_module():
    return 5
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernet", None)
    import usernet

    torch.manual_seed(0)
    net = usernet.build_net()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    return tmp_path, net


def _invoke(*args):
    return CliRunner().invoke(app, ["prune", *args])


def test_prune_own_model_writes_a_reloadable_slim_model_and_report(user_pkg):
    tmp, net = user_pkg
    out = tmp / "out"
    for ck in ("w.safetensors", "w.pt"):
        r = _invoke("--model", "usernet:build_net", "--checkpoint", str(tmp / ck), "--input-shape", "2,3,16,16",
                    "--ratio", "0.5", "--out", str(out), "--force")
        assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["params"]["slim"] < rep["params"]["dense"] and rep["flops"]["reduction"] > 1.5
    assert rep["exactness_max_abs_error"] < 1e-5
    assert {"torch", "onnxruntime"} <= set(rep["latency_ms"]) and rep["latency_ms"]["torch"]["speedup"] > 0
    import usernet

    again = prunekit.load_pruned(out, usernet.build_net()).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = prunekit.load_pruned(out, usernet.build_net()).eval()
    assert torch.equal(again(x), ref(x))
    # the slim model came from the checkpoint's weights: its kept filters are the checkpoint's
    plan = json.loads((out / "plan.json").read_text())
    keep = next(s for s in plan["slices"] if s["tensor"] == "0.weight" and s["dim"] == 0)["keep"]
    assert torch.equal(again[0].weight, net[0].weight[keep])
    assert "| FLOPs |" in (out / "report.md").read_text()


def test_prune_hf_directory_with_uniform_layers_gives_a_from_pretrained_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=99, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    out = tmp_path / "slim"
    r = _invoke("--hf", str(tmp_path / "bert"), "--ratio", "0.5", "--uniform-layers", "--out", str(out), "--onnx")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["hf_standard_config"] is True
    m = transformers.BertForSequenceClassification.from_pretrained(str(out))
    assert m.config.num_attention_heads < 4 and (out / "model.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuchpkg.models:build"], "cannot import module 'nosuchpkg.models'"),
    (["--model", "usernet:missing"], "has no attribute 'missing'"),
    (["--model", "usernet"], "must be an import path module:factory"),
    (["--model", "usernet:not_a_module"], "returned a int, not an nn.Module"),
    (["--model", "usernet:build_net", "--checkpoint", "{tmp}/bad.safetensors"], "does not match the model"),
    (["--model", "usernet:build_net", "--checkpoint", "{tmp}/nope.pt"], "no such file"),
    (["--model", "usernet:build_net", "--input-shape", "1,5,16,16"], "the model rejects the example inputs"),
    (["--model", "usernet:build_net", "--input-shape", "a,b"], "must be integers"),
    (["--model", "usernet:build_net", "--ratio", "1.5"], "must be in \\(0, 1\\)"),
    (["--model", "usernet:build_net", "--ratio", "0.5", "--flops-reduction", "0.5"], "exactly one of"),
    (["--model", "usernet:build_net", "--flops-reduction", "0.999"], "cannot prune to this target"),
    (["--model", "usernet:build_net", "--speedup", "0.5"], "--speedup must be greater than 1"),
    (["--model", "usernet:build_net", "--speedup", "60"], "speedup 60x is not reachable .* ask for at most"),
    (["--model", "usernet:build_net", "--criterion", "l7"], "--criterion 'l7' is unknown"),
])
def test_prune_errors_are_one_line_exit_2_and_write_nothing(user_pkg, args, message):
    tmp, _ = user_pkg
    save_file({"0.weight": torch.zeros(3, 3, 3, 3)}, str(tmp / "bad.safetensors"))
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    if "--input-shape" not in args:
        args += ["--input-shape", "1,3,16,16"]
    if not any(a in args for a in ("--ratio", "--flops-reduction", "--speedup")):
        args += ["--ratio", "0.5"]
    out = tmp / "out"
    r = _invoke(*args, "--out", str(out))
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in r.output
    import re

    assert re.search(message, errors[0]), errors[0]
    assert not out.exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out.")]


def test_prune_refuses_a_non_empty_out_without_force(user_pkg):
    tmp, _ = user_pkg
    (tmp / "out").mkdir()
    (tmp / "out" / "mine.txt").write_text("keep")
    r = _invoke("--model", "usernet:build_net", "--input-shape", "1,3,16,16", "--ratio", "0.5", "--out",
                str(tmp / "out"))
    assert r.exit_code == 2 and "already exists" in r.output and (tmp / "out" / "mine.txt").exists()


def test_prune_to_a_speedup_writes_the_latency_table_and_allocation(user_pkg):
    tmp, _ = user_pkg
    out = tmp / "fast"
    r = _invoke("--model", "usernet:build_net", "--input-shape", "1,3,16,16", "--speedup", "1.05", "--out", str(out))
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["latency_aware"]["requested"] == 1.05 and rep["latency_aware"]["allocation"]
    lat = json.loads((out / "latency.json").read_text())
    assert lat["table"] and lat["iterations"]
    assert "requested 1.05x, achieved" in (out / "report.md").read_text()
