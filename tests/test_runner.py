import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.runner import load_config, run_experiment
from prunekit.runner.config import ConfigError

TINY = {
    "name": "tiny",
    "dataset": "synthetic",
    "dataset_options": {"shape": [1, 8, 8], "n_train": 256, "n_test": 128, "val_fraction": 0.25},
    "model": "lenet-300-100",
    "pretrain": {"epochs": 3, "batch_size": 32, "lr": 0.05},
    "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.01},
    "methods": [{"name": "magnitude", "targets": [0.5, 0.9]}, {"name": "random", "targets": [0.5]}],
}


def _write(tmp_path, cfg):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


@pytest.mark.parametrize("patch, message", [
    ({"model": "resnet9000"}, "unknown model 'resnet9000'; valid: .*lenet5-caffe"),
    ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid: .*mnist5k"),
    ({"methods": [{"name": "magic", "targets": [0.5]}]}, "unknown method 'magic'; valid: .*magnitude"),
    ({"methods": [{"name": "magnitude", "targets": [1.0]}]}, "target 1.0 is outside \\[0, 1\\)"),
    ({"methods": [{"name": "magnitude", "targets": [-0.1]}]}, "outside"),
    ({"methods": [{"name": "magnitude", "targets": [0.5], "options": {"scop": "layer"}}]}, "unknown option.*scop"),
    ({"checkpoint": "/nonexistent/dense.safetensors"}, "checkpoint file not found"),
    ({"pretrain": {"epochz": 3}}, "unknown option.*epochz"),
    ({"learning_rate": 3}, "unknown option.*learning_rate"),
])
def test_bad_configs_fail_before_any_work(tmp_path, patch, message):
    cfg = {**TINY, **patch, "out_dir": str(tmp_path / "runs")}
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))
    assert not (tmp_path / "runs").exists()


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))


def test_cli_reports_config_error_with_exit_code_2(tmp_path):
    r = CliRunner().invoke(app, ["run", _write(tmp_path, {**TINY, "model": "nope"})])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output


def test_end_to_end_run_writes_summary_report_and_plot(tmp_path):
    cfg = load_config(_write(tmp_path, {**TINY, "out_dir": str(tmp_path / "runs")}))
    summary = run_experiment(cfg, progress=False, log=lambda *a: None)
    d = tmp_path / "runs" / "tiny"
    on_disk = json.loads((d / "summary.json").read_text())
    assert on_disk["results"] == summary["results"]
    assert {"dataset", "model", "dense", "results"} <= set(on_disk)
    assert {"test_accuracy", "params", "flops"} <= set(on_disk["dense"])
    rows = on_disk["results"]
    assert [(r["method"], r["target"]) for r in rows] == [("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5)]
    dense_params = on_disk["dense"]["params"]
    for r in rows:
        assert r["kind"] == "unstructured" and 0 <= r["test_accuracy"] <= 1
        assert {"params", "nonzero_params", "flops", "latency_ms"} <= set(r)
        assert r["params"] == dense_params
        # the prunable weights lost the target fraction (biases stay)
        assert r["nonzero_params"] <= dense_params * (1 - r["target"]) + 500
    assert rows[1]["flops"] < rows[0]["flops"] < on_disk["dense"]["flops"]
    assert "| magnitude | unstructured | 0.9 |" in (d / "report.md").read_text()
    assert (d / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    # `prunekit report` re-renders from the summary alone
    (d / "report.md").unlink()
    r = CliRunner().invoke(app, ["report", str(d)])
    assert r.exit_code == 0 and (d / "report.md").exists()
    # resume skips finished results and keeps them
    summary2 = run_experiment(cfg, progress=False, resume=True, log=lambda *a: None)
    assert summary2["results"] == rows


def test_cli_list_shows_registries_and_method_help():
    r = CliRunner().invoke(app, ["list"])
    assert r.exit_code == 0
    for word in ("lenet5-caffe", "mnist5k", "magnitude", "include_classifier", "Also prune the last"):
        assert word in r.output


def test_console_entry_point_installed():
    out = subprocess.run([sys.executable, "-m", "prunekit.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout and "report" in out.stdout


def test_runner_feeds_1d_data_to_an_mlp(tmp_path):
    cfg = {**TINY, "dataset_options": {"shape": [1, 12], "n_train": 64, "n_test": 32}, "out_dir": str(tmp_path),
           "pretrain": {"epochs": 1, "batch_size": 32}, "methods": [{"name": "magnitude", "targets": [0.5]}]}
    summary = run_experiment(load_config(_write(tmp_path, cfg)), progress=False, log=lambda *a: None)
    assert summary["dense"]["params"] == 12 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
