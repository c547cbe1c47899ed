"""What the trainer shows while it runs, and under which phase label.

The runner (or a method) names the phase with ``phase("tpp @ 0.5: regularise")``; every
``train()`` inside shows that label. In a terminal the trainer draws a tqdm bar; outside
one (CI, a log file) it prints one plain line per epoch instead, so logs never fill with
carriage-return frames.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys

_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("prunekit_phase", default="train")


def current_phase() -> str:
    return _PHASE.get()


@contextlib.contextmanager
def phase(label: str):
    """Label every training run inside this block (nested labels replace the outer one)."""
    token = _PHASE.set(label)
    try:
        yield label
    finally:
        _PHASE.reset(token)


@contextlib.contextmanager
def subphase(stage: str):
    """Refine the current ``"<method> @ <target>: ..."`` label with a stage name (search,
    regularise, fine-tune); outside the runner the stage alone is the label."""
    outer = _PHASE.get()
    head = outer.split(": ", 1)[0] if ": " in outer else None
    with phase(f"{head}: {stage}" if head else stage):
        yield


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def epoch_line(label: str, rec: dict, epochs: int) -> str:
    parts = [f"{label}: epoch {rec['epoch'] + 1}/{epochs}", f"loss {rec['train_loss']:.4f}",
             f"acc {rec['train_acc']:.4f}"]
    if "val_acc" in rec:
        parts.append(f"val {rec['val_acc']:.4f}")
    if "test_acc" in rec:
        parts.append(f"test {rec['test_acc']:.4f}")
    return "  ".join(parts)


def clean_label(label: str) -> str:
    return label.replace("\r", " ").replace("\n", " ")
