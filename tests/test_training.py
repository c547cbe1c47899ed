import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from prunekit.data import TensorData, load
from prunekit.foundations.io import CheckpointError, load_tensors
from prunekit.training import Callback, TrainHparams, evaluate, train
from prunekit.training.trainer import lr_factor

SCRIPT = str(Path(__file__).parent / "scripts" / "train_tiny.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args, **kw):
    return subprocess.run([sys.executable, SCRIPT, *args], env=ENV, check=True, capture_output=True, timeout=300, **kw)


def test_training_learns_and_evaluate_reports_top1_top5():
    data = load("synthetic", shape=(1, 6, 6), num_classes=4, n_train=512, n_test=256)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    before = evaluate(model, data.test)
    r = train(model, data, TrainHparams(epochs=5, batch_size=32, lr=0.05), progress=False)
    after = evaluate(model, data.test)
    assert after["top1"] > 0.8 > before["top1"]
    assert after["top5"] == 1.0  # 4 classes: top-5 always contains the label
    assert r.final_test_acc == pytest.approx(after["top1"])
    assert len(r.history) == 5 and r.steps == 5 * 16


def test_callbacks_run_in_documented_order_and_extra_loss_counts():
    events = []

    class Spy(Callback):
        def extra_loss(self, trainer, out, y):
            events.append("loss")
            return 0.0 * out.sum()

        def after_backward(self, trainer):
            events.append("backward")
            assert all(p.grad is not None for p in trainer.model.parameters())

        def after_step(self, trainer):
            events.append("step")

        def on_epoch_end(self, trainer, metrics):
            events.append("epoch")
            assert "train_loss" in metrics

    data = TensorData(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    train(nn.Linear(3, 2), data, TrainHparams(epochs=1, batch_size=4), callbacks=[Spy()], progress=False)
    assert events == ["loss", "backward", "step"] * 2 + ["epoch"]


def test_schedules():
    hp = TrainHparams(epochs=10, schedule="multistep", milestones=[5, 8], gamma=0.1)
    assert [lr_factor(hp, s * 10, 10) for s in (0, 4, 5, 8, 9)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    hp = TrainHparams(epochs=10, schedule="cosine")
    assert lr_factor(hp, 0, 10) == 1.0 and lr_factor(hp, 50, 10) == pytest.approx(0.5)
    assert lr_factor(hp, 100, 10) == pytest.approx(0.0, abs=1e-12)
    hp = TrainHparams(epochs=10, schedule="constant", warmup_epochs=1)
    assert lr_factor(hp, 0, 10) == pytest.approx(0.1) and lr_factor(hp, 9, 10) == 1.0 and lr_factor(hp, 50, 10) == 1.0
    with pytest.raises(ValueError, match="optimizer"):
        TrainHparams(optimizer="lbfgs")


def test_adam_and_jsonl_log(tmp_path):
    data = TensorData(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    train(nn.Linear(3, 2), data, TrainHparams(epochs=2, batch_size=8, optimizer="adam", lr=1e-3),
          log_path=tmp_path / "m.jsonl", progress=False)
    recs = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1] and all("train_acc" in r for r in recs)


def test_resume_after_kill_mid_epoch_matches_uninterrupted(tmp_path):
    ref, out, ck = tmp_path / "ref.safetensors", tmp_path / "out.safetensors", tmp_path / "ck.safetensors"
    _run(str(ref))
    # 8 steps per epoch; checkpoint every 3 steps; kill once a mid-epoch checkpoint exists
    p = subprocess.Popen([sys.executable, SCRIPT, str(out), "--ckpt", str(ck), "--every", "3", "--sleep", "0.15"],
                         env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline:
        if ck.exists():
            _, meta = load_tensors(ck)
            st = meta["state"]["__dict__"]
            step = dict((k, v) for k, v in st)["step"]
            if step >= 11 and step % 8:  # in the second epoch, not on its boundary
                break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists(), "run finished before it could be killed"
    _run(str(out), "--ckpt", str(ck), "--every", "3", "--resume")
    a, _ = load_tensors(ref)
    b, _ = load_tensors(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    ck = tmp_path / "ck.safetensors"
    ck.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        train(nn.Linear(3, 2), TensorData(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
              TrainHparams(epochs=1), checkpoint_path=ck, resume=True, progress=False)
    assert ck.read_bytes().startswith(b"\x10")  # never overwritten by a failed resume


def test_ddp_two_processes_match_single_process(tmp_path):
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    _run(str(single), "--dropout", "0")
    import socket

    # the launch is torch's, not ours: a port taken between probing and binding, or a gloo
    # rendezvous that times out on a loaded machine, fails it once in a while (seen once in a
    # local full run, never reproduced), so it gets a second try on a fresh port; the numbers
    # compared below are what this test is about
    for attempt in range(2):
        with socket.socket() as sock:  # a free loopback port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port)]
        r = subprocess.run(torchrun + [SCRIPT, str(ddp), "--dropout", "0"], env=ENV, capture_output=True, text=True,
                           timeout=300)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    a, _ = load_tensors(single)
    b, _ = load_tensors(ddp)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())
