"""Runs a user can trust: checksummed artifacts, validated plans, resume under the same
config only, orphan clean-up, validation before any work, and output a person can read."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from typer.testing import CliRunner

from prunekit import load_pruned, models, save_pruned, slim
from prunekit.cli import app
from prunekit.data import standard
from prunekit.data.base import TensorData
from prunekit.foundations.io import CheckpointError, clean_orphans, load_tensors, save_tensors
from prunekit.runner import load_config, run_experiment
from prunekit.runner.config import ConfigError
from prunekit.runner.report import collapse_floor, markdown_table
from prunekit.sparse import apply_masks, load_masks, load_sparse, magnitude_masks, save_masks, save_sparse
from prunekit.training import TrainHparams, train

TINY = {
    "name": "tiny",
    "dataset": "synthetic",
    "dataset_options": {"shape": [1, 8, 8], "n_train": 128, "n_test": 64, "val_fraction": 0.25},
    "model": "lenet-300-100",
    "pretrain": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.01},
    "methods": [{"name": "magnitude", "targets": [0.5]}],
}
QUIET = dict(progress=False, log=lambda *a: None)


def _write(tmp_path, cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _cfg(tmp_path, **patch):
    return load_config(_write(tmp_path, {**TINY, "out_dir": str(tmp_path / "runs"), **patch}))


# --- checksums ---------------------------------------------------------------------------

def _overwrite_payload(path: Path, tensor: str, n_bytes: int = 4000):
    """Overwrite bytes inside one tensor's payload, leaving the header intact (as a disk
    error or a stray write would)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + n])[tensor]["data_offsets"]
    base = 8 + n + start
    for i in range(min(n_bytes, end - start)):
        data[base + i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_overwritten_weights_in_a_checkpoint_are_caught_naming_file_and_tensor(tmp_path):
    ck = tmp_path / "ck.safetensors"
    data = TensorData(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    net = nn.Sequential(nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 3))
    train(net, data, TrainHparams(epochs=1, batch_size=16), checkpoint_path=ck, progress=False)
    load_tensors(ck)  # intact: loads
    _overwrite_payload(ck, "model.0.weight", 4000)  # 1,000 float32 weights
    with pytest.raises(CheckpointError, match=r"ck\.safetensors.*'model\.0\.weight' fails its checksum"):
        train(net, data, TrainHparams(epochs=2, batch_size=16), checkpoint_path=ck, resume=True, progress=False)


def test_files_without_checksums_are_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(p))
    with pytest.raises(CheckpointError, match="no tensor checksums"):
        load_tensors(p)


def test_flipped_bytes_in_a_saved_pruned_model_fail_to_load(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    net = models.build("resnet20")
    s = slim(net, x, ratio=0.5)
    d = save_pruned(s, tmp_path / "slim")
    again = load_pruned(d, models.build("resnet20"))
    assert torch.allclose(s.eval()(x), again.eval()(x))
    _overwrite_payload(d / "model.safetensors", "layer1.0.conv1.weight", 64)
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight' fails its checksum"):
        load_pruned(d, models.build("resnet20"))


def test_a_plan_changed_after_saving_is_caught(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    d = save_pruned(slim(models.build("resnet20"), x, ratio=0.5), tmp_path / "slim")
    plan = json.loads((d / "plan.json").read_text())
    s0 = plan["slices"][0]
    # a valid-looking plan (same sizes, different channels) would load a different model
    s0["keep"] = [i for i in range(s0["size"]) if i not in s0["keep"]][: len(s0["keep"])]
    (d / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match="plan.json was changed after saving"):
        load_pruned(d, models.build("resnet20"))


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["slices"][0]["keep"].append(10_000), r"slices\[0\]\.keep has index 10000 outside"),
    (lambda p: p["slices"][0]["keep"].append(p["slices"][0]["keep"][0]), r"slices\[0\]\.keep repeats index"),
    (lambda p: p["slices"][0].update(dim="zero"), r"slices\[0\]\.dim must be a non-negative integer"),
    (lambda p: p["slices"][1].pop("keep"), r"slices\[1\]\.keep is missing"),
    (lambda p: p.pop("slices"), r"'slices' is missing"),
    (lambda p: p["slices"][0].update(keep="0,1"), r"slices\[0\]\.keep must be a list of integers"),
    (lambda p: p.update(format="other"), r"'format' must be 'prunekit-plan'"),
])
def test_hand_edited_plans_give_a_validation_error_naming_the_field(tmp_path, edit, message):
    x = torch.randn(2, 3, 32, 32)
    d = save_pruned(slim(models.build("resnet20"), x, ratio=0.5), tmp_path / "slim")
    plan = json.loads((d / "plan.json").read_text())
    edit(plan)
    (d / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match=message):
        load_pruned(d, models.build("resnet20"))


def test_masks_and_sparse_exports_verify_checksums(tmp_path):
    torch.manual_seed(0)
    net = models.build("lenet-300-100", 1, 8, 10)
    apply_masks(net, magnitude_masks(net, 0.9))
    save_masks(tmp_path / "m.safetensors", {k: v for k, v in magnitude_masks(net, 0.9).items()})
    assert load_masks(tmp_path / "m.safetensors")
    save_sparse(tmp_path / "s.safetensors", net)
    assert load_sparse(tmp_path / "s.safetensors")
    for f in ("m.safetensors", "s.safetensors"):
        p = tmp_path / f
        tensors, _ = load_tensors(p)
        # the largest payload: a layer pruned to nothing stores a 0-byte index tensor, and
        # safetensors returns tensors in no fixed order, so "the first" may have no bytes
        biggest = max(sorted(tensors), key=lambda k: tensors[k].numel() * tensors[k].element_size())
        _overwrite_payload(p, biggest, 2)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_masks(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_sparse(tmp_path / "s.safetensors")


# --- resume under a changed config, --force -----------------------------------------------

def test_resume_refuses_a_changed_config_naming_the_fields_and_force_starts_over(tmp_path):
    first = run_experiment(_cfg(tmp_path), **QUIET)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--force"):
        run_experiment(_cfg(tmp_path), **QUIET)
    with pytest.raises(ConfigError, match=r"pretrain\.epochs, pretrain\.lr"):
        run_experiment(_cfg(tmp_path, pretrain={"epochs": 3, "batch_size": 32, "lr": 0.1}), resume=True, **QUIET)
    with pytest.raises(ConfigError, match=r"finetune\.lr"):
        run_experiment(_cfg(tmp_path, finetune={"epochs": 1, "batch_size": 32, "lr": 0.02}), resume=True, **QUIET)
    with pytest.raises(ConfigError, match=r"methods\[0\]\.options \(magnitude @ 0.5\)"):
        run_experiment(_cfg(tmp_path, methods=[{"name": "magnitude", "targets": [0.5],
                                                "options": {"scope": "layer"}}]), resume=True, **QUIET)
    with pytest.raises(ConfigError, match="no longer listed"):
        run_experiment(_cfg(tmp_path, methods=[{"name": "random", "targets": [0.5]}]), resume=True, **QUIET)
    # the refusals changed nothing on disk
    on_disk = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert on_disk["results"] == first["results"]
    # an explicit default is the same config; a new target extends the run
    same = run_experiment(_cfg(tmp_path, finetune={"epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.9},
                               methods=[{"name": "magnitude", "targets": [0.5, 0.9]}]), resume=True, **QUIET)
    assert [r["target"] for r in same["results"]] == [0.5, 0.9]
    assert same["results"][0] == first["results"][0]
    # --force: a different config starts over from scratch
    forced = run_experiment(_cfg(tmp_path, pretrain={"epochs": 1, "batch_size": 32, "lr": 0.05}), force=True,
                            **QUIET)
    assert len(forced["results"]) == 1 and forced["dense"]["weights_blake2b"] != first["dense"]["weights_blake2b"]


def test_cli_resume_with_changed_config_is_one_line_exit_2(tmp_path):
    cfg = {**TINY, "out_dir": str(tmp_path / "runs")}
    r = CliRunner().invoke(app, ["run", _write(tmp_path, cfg), "--threads", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["run", _write(tmp_path, {**cfg, "seed": 1}), "--resume", "--threads", "1"])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "seed" in errors[0] and "Traceback" not in r.output


# --- orphan temp files -------------------------------------------------------------------

def test_orphan_temp_files_are_removed_on_the_next_start(tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    orphan = run_dir / ".dense.ckpt.safetensors.k3j4.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = run_dir / "notes.txt"
    keep.write_text("mine")
    run_experiment(_cfg(tmp_path), **QUIET)
    assert not orphan.exists() and keep.read_text() == "mine"


def test_failed_downloads_leave_no_temp_file_and_stale_ones_are_cleaned(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "data" / "file.gz"
    with pytest.raises(IOError, match="checksum mismatch"):
        standard.fetch(src.as_uri(), dest, "0" * 32)
    with pytest.raises(OSError):
        standard.fetch((tmp_path / "missing.bin").as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []
    stale = dest.parent / ".file.gz.abcd.part"
    stale.write_bytes(b"")
    fresh = dest.parent / ".other.gz.efgh.part"  # maybe another live download: spared
    fresh.write_bytes(b"")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    standard.fetch(src.as_uri(), dest, standard.md5(src))
    assert dest.read_bytes() == b"payload" and not stale.exists() and fresh.exists()


def test_clean_orphans_touches_only_its_own_pattern(tmp_path):
    for n in (".a.x1.tmp", ".b.y2.part", "a.tmp", "report.md", ".hidden"):
        (tmp_path / n).write_text("x")
    removed = {p.name for p in clean_orphans(tmp_path)}
    assert removed == {".a.x1.tmp", ".b.y2.part"}
    assert {p.name for p in tmp_path.iterdir()} == {"a.tmp", "report.md", ".hidden"}


# --- validation before any work ------------------------------------------------------------

BAD = [
    ({"methods": [{"name": "magnitude", "targets": [0.5], "options": {"scope": "glob"}}]},
     "scope must be one of global, layer; got 'glob'"),
    ({"model_options": {"widht": 2}}, "model_options of 'lenet-300-100': unknown option.*widht.*valid: in_features"),
    ({"model": "resnet20", "model_options": {"width": "wide"}}, "model_options of 'resnet20': width must be a number"),
    ({"dataset_options": {"n_trian": 10}}, "dataset_options of 'synthetic': unknown option.*n_trian.*n_train"),
    ({"dataset_options": [1, 2]}, "dataset_options must be a mapping"),
    ({"name": 5}, "config: name must be a string, got 5"),
    ({"pretrain": 5}, "config: pretrain must be a mapping, got 5"),
    ({"methods": "magnitude"}, "config: methods must be a list"),
    ({"pretrain": {"epochs": 2.5}}, "pretrain: epochs must be an integer, got 2.5"),
    ({"finetune": {"lr": "fast"}}, "finetune: lr must be a number, got 'fast'"),
    ({"finetune": {"schedule": "cosin"}}, "finetune: schedule must be one of multistep, cosine, constant"),
    ({"methods": [{"name": "magnitude", "targets": ["abc"]}]}, "target 'abc' must be a number"),
    ({"seed": "x"}, "config: seed must be an integer"),
]


@pytest.mark.parametrize("patch, message", BAD)
def test_bad_values_fail_before_any_work_with_one_line_and_exit_2(tmp_path, patch, message):
    cfg = {**TINY, "out_dir": str(tmp_path / "runs"), **patch}
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, cfg))
    r = CliRunner().invoke(app, ["run", _write(tmp_path, cfg)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip() and not line.startswith("using ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert not (tmp_path / "runs").exists()


def test_directory_binary_and_unwritable_targets(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    b = tmp_path / "cfg.bin"
    b.write_bytes(b"\x00\x01\x02\xff" * 10)
    with pytest.raises(ConfigError, match="binary file"):
        load_config(str(b))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cfg = _cfg(tmp_path, out_dir=str(blocker / "runs"))
    with pytest.raises(ConfigError, match="out_dir .* is a file, not a directory"):
        run_experiment(cfg, **QUIET)
    if os.geteuid() != 0:  # root writes anywhere; permission bits only bind other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ConfigError, match="not writable"):
            run_experiment(_cfg(tmp_path, out_dir=str(ro / "runs")), **QUIET)


def test_model_that_cannot_be_built_for_the_data_is_a_config_error(tmp_path):
    r = CliRunner().invoke(app, ["run", _write(tmp_path, {**TINY, "model": "lenet5-caffe",
                                                          "out_dir": str(tmp_path / "runs")})])
    assert r.exit_code == 2 and "error: model 'lenet5-caffe' cannot be built" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "runs" / "tiny" / "summary.json").exists()


def test_offline_dataset_is_one_clear_line(tmp_path):
    cfg = {**TINY, "dataset": "mnist", "dataset_options": {"root": str(tmp_path / "data"), "download": False},
           "out_dir": str(tmp_path / "runs")}
    r = CliRunner().invoke(app, ["run", _write(tmp_path, cfg)])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mnist: expected files" in errors[0] and "Traceback" not in r.output


def test_method_error_at_run_time_is_one_line_unless_debug(tmp_path, monkeypatch):
    from prunekit.methods.magnitude import Magnitude

    def boom(self, model, target, ctx):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(Magnitude, "prune", boom)
    path = _write(tmp_path, {**TINY, "out_dir": str(tmp_path / "runs")})
    r = CliRunner().invoke(app, ["run", path, "--threads", "1"])
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: magnitude @ 0.5 failed during prune: RuntimeError: kaboom "
                      "(run with --debug for the traceback)"]
    r = CliRunner().invoke(app, ["run", path, "--threads", "1", "--force", "--debug"])
    assert r.exit_code != 0 and isinstance(r.exception, RuntimeError)


# --- output a person can read ---------------------------------------------------------------

def test_outside_a_terminal_progress_is_one_line_per_epoch_with_phase(tmp_path):
    cfg = {**TINY, "out_dir": str(tmp_path / "runs"),
           "methods": [{"name": "tpp", "targets": [0.5], "options": {"preset": "demo", "stabilise": 4,
                                                                      "delta": 0.5}}]}
    out = subprocess.run([sys.executable, "-m", "prunekit.cli", "run", _write(tmp_path, cfg)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr and "\r" not in out.stdout
    lines = out.stderr.splitlines()
    assert "dense: epoch 1/2" in out.stderr and "dense: epoch 2/2" in out.stderr
    assert any(line.startswith("tpp @ 0.5: regularise: epoch 1/") for line in lines)
    assert any(line.startswith("tpp @ 0.5: fine-tune: epoch 1/1") and "val " in line for line in lines)
    assert lines[0].startswith("using ") and "thread" in lines[0]


def test_report_has_the_dense_row_selection_labels_and_latency_conditions(tmp_path):
    s = run_experiment(_cfg(tmp_path), **QUIET)
    md = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    dense_row = next(line for line in md.splitlines() if line.startswith("| dense |"))
    assert f"{s['dense']['test_accuracy']:.4f}" in dense_row and f"{s['dense']['params']:,}" in dense_row
    assert "best epoch on the test set" in md and "chosen on the validation split" in md
    assert f"batch {s['latency']['batch_size']}, {s['latency']['threads']} thread(s)" in md
    assert md == markdown_table(s)
    r = s["results"][0]
    assert r["speedup"] == pytest.approx(r["dense_latency_ms"] / r["latency_ms"])


def test_collapsed_results_do_not_set_the_axis():
    s = {"dense": {"test_accuracy": 0.98}, "num_classes": 10}
    assert collapse_floor(s) == pytest.approx(0.1 + 0.5 * 0.88)


def test_list_shows_model_and_dataset_options_and_espn_once():
    r = CliRunner().invoke(app, ["list"])
    assert r.exit_code == 0
    assert "width [default 1.0]: Channel-width multiplier" in r.output
    assert "n_train [default 512]: Training samples." in r.output
    assert "val_fraction [default 0.0]: Fraction of the training set" in r.output
    assert r.output.count("  espn-finetune (") == 1 and "also called espn" in r.output
    assert "\n  espn (" not in r.output
