"""A run killed (SIGKILL) at any point and resumed reproduces the uninterrupted summary.json.

Kill points cover dense training before, at and after the rewind iteration (the last one
after an epoch-end checkpoint that already holds the rewind point), mid-search of ESPN and
ESPN-Rewind, mid-regularisation of TPP and mid-fine-tune. Rows carry a hash of their final
weights, so "identical" means bit-identical models, not just equal accuracies."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunekit.runner.run import TIMING_FIELDS

SCRIPT = str(Path(__file__).parent / "scripts" / "run_and_die.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

CFG = {
    "name": "matrix",
    "dataset": "digits",
    "dataset_options": {"resize": 16, "val_fraction": 0.25},
    "model": "lenet5-caffe",
    # 1,078 training digits / 64 = 17 steps per epoch; the rewind point is step 3
    "pretrain": {"epochs": 2, "batch_size": 64, "lr": 0.05},
    "finetune": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "rewind_iterations": 3,
    "methods": [
        {"name": "magnitude", "targets": [0.9]},
        {"name": "random", "targets": [0.9]},
        {"name": "snip", "targets": [0.9]},
        {"name": "espn", "targets": [0.9], "options": {"max_search_epochs": 2, "alpha": 0.05}},
        {"name": "l1", "targets": [0.5]},
        {"name": "tpp", "targets": [0.5], "options": {"preset": "demo", "stabilise": 10, "delta": 0.5}},
        {"name": "imp", "targets": [0.5], "options": {"level_epochs": 1}},
        {"name": "espn-rewind", "targets": [0.9], "options": {"max_search_epochs": 2, "alpha": 0.05,
                                                               "retrain_epochs": 1}},
    ],
}

# in run order: each resume is killed again at the next point
KILLS = [
    "dense@2",                     # before the rewind iteration, no checkpoint yet
    "dense@3",                     # at it: the step that records the rewind point
    "dense@20",                    # after it, past the epoch-1 checkpoint holding the rewind point
    "espn @ 0.9: search@3",        # mid-search
    "tpp @ 0.5: regularise@5",     # mid-regularisation
    "imp @ 0.5: fine-tune@4",      # mid-fine-tune of the last IMP level
    "espn-rewind @ 0.9: search@2",
]


def _run(cfg_path, *args):
    return subprocess.run([sys.executable, SCRIPT, str(cfg_path), *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def _strip(summary):
    out = {k: v for k, v in summary.items() if k not in ("seconds", "dense")}
    out["dense"] = {k: v for k, v in summary["dense"].items() if k != "latency_ms"}
    out["results"] = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in summary["results"]]
    out["config"] = {k: v for k, v in summary["config"].items() if k != "out_dir"}
    return out


def _write(tmp_path, name):
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({**CFG, "out_dir": str(tmp_path / name)}))
    return p


def test_killed_everywhere_and_resumed_reproduces_the_uninterrupted_summary(tmp_path):
    ref_cfg = _write(tmp_path, "ref")
    r = _run(ref_cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads((tmp_path / "ref" / "matrix" / "summary.json").read_text())
    assert len(ref["results"]) == 8

    cfg = _write(tmp_path, "killed")
    run_dir = tmp_path / "killed" / "matrix"
    r = _run(cfg, "--kill", KILLS[0])
    assert r.returncode == -9, f"not killed at {KILLS[0]}: {r.stderr[-2000:]}"
    for point in KILLS[1:]:
        r = _run(cfg, "--resume", "--kill", point)
        assert r.returncode == -9, f"not killed at {point}: rc {r.returncode} {r.stderr[-2000:]}"
    # the killed runs left work behind: the rewind point survived a kill after it was recorded
    assert (run_dir / "rewind.safetensors").exists()
    r = _run(cfg, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((run_dir / "summary.json").read_text())
    assert _strip(got) == _strip(ref)
    # the result rows really depend on their weights (a sanity check of the comparison itself)
    assert len({row["weights_blake2b"] for row in got["results"]}) == 8
    assert not list(run_dir.glob(".*.tmp"))
