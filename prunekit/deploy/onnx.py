"""ONNX export of slim (structured) and masked (unstructured) models, checked in ONNX Runtime.

``to_onnx(model, example_inputs, path)`` exports a deployable copy (masks baked into plain
weights, BatchNorm folded into the conv/linear before it where that is exact), with
torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, onnxscript), then
runs the file in ONNX Runtime on the example inputs and raises ``ExportMismatchError`` if
any output differs from PyTorch's by more than ``rtol`` of the output's scale. A file that
does not reproduce the model is deleted, never left behind.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``prunekit[deploy]``.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..foundations.inputs import call_model


class ExportMismatchError(RuntimeError):
    """The exported ONNX model does not reproduce the PyTorch model's outputs."""


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the deploy extra: pip install 'prunekit[deploy]' ({e.name} is missing)") from e


def flat_outputs(out) -> list[torch.Tensor]:
    """Tensors of a model output in order (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # HF ModelOutput is a dict too
        out = tuple(out.values())
    if not isinstance(out, (tuple, list)):
        return []  # caches and other non-tensor state are not outputs to compare
    return [t for o in out for t in flat_outputs(o)]


def _as_args(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def deployable_copy(model: nn.Module, example_inputs=None, fold: bool = True) -> nn.Module:
    """An eval-mode copy as it ships: parametrizations (masks) removed, BN folded if asked."""
    from ..sparse.masks import remove_masks
    from ..structured.surgery.deploy import fold_bn

    m = remove_masks(copy.deepcopy(model)).eval()
    if fold:
        m = fold_bn(m, example_inputs, inplace=True)
    return m


def onnx_session(path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_feed(session, example_inputs) -> dict:
    args, kwargs = _as_args(example_inputs)
    names = [i.name for i in session.get_inputs()]
    values = list(args) + [kwargs[k] for k in kwargs]
    if len(values) != len(names):  # keyword inputs: the exporter keeps their names
        values = [kwargs.get(n, None) for n in names]
    return {n: v.detach().cpu().numpy() for n, v in zip(names, values) if v is not None}


def compare_onnx(model: nn.Module, path, example_inputs, rtol: float = 1e-4) -> float:
    """Largest |ORT - torch| over all outputs, divided by the output's scale (max |torch|, at
    least 1). Raises ExportMismatchError above ``rtol``."""
    sess = onnx_session(path)
    got = sess.run(None, onnx_feed(sess, example_inputs))
    with torch.no_grad():
        want = flat_outputs(call_model(model, example_inputs))
    if len(got) != len(want):
        raise ExportMismatchError(f"{path}: ONNX model has {len(got)} outputs, PyTorch {len(want)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(w.shape):
            raise ExportMismatchError(f"{path}: output {i} has shape {tuple(g.shape)} in ONNX Runtime, "
                                      f"{tuple(w.shape)} in PyTorch")
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        err = (g.to(w.dtype) - w).abs().max().item() / scale if w.numel() else 0.0
        worst = max(worst, err)
    if worst > rtol:
        raise ExportMismatchError(f"{path}: ONNX Runtime outputs differ from PyTorch's by {worst:.2e} "
                                  f"(relative to output scale; allowed {rtol:.0e})")
    return worst


def to_onnx(model: nn.Module, example_inputs, path, fold: bool = True, rtol: float = 1e-4,
            dynamic_batch: bool = True, opset: int | None = None) -> dict:
    """Export ``model`` (slim or masked) to ``path`` and verify it in ONNX Runtime.

    Returns {"path", "max_rel_error", "folded_bn"}. The file appears atomically and only
    once verified."""
    _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = deployable_copy(model, example_inputs, fold=fold)
    args, kwargs = _as_args(example_inputs)
    dyn = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dyn = tuple({0: batch} for _ in args) if args else {k: {0: batch} for k in kwargs}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        # the exporter logs a line per missing torchvision op; prunekit never needs them
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(m, args, kwargs=kwargs or None, dynamic_shapes=dyn, dynamo=True,
                                     opset_version=opset, verbose=False, external_data=False)
            prog.save(tmp)
        err = compare_onnx(m, tmp, example_inputs, rtol)
        os.replace(tmp, path)
    finally:
        quiet.setLevel(level)
        Path(tmp).unlink(missing_ok=True)
    from ..structured.surgery.deploy import count_batchnorms

    return {"path": str(path), "max_rel_error": err,
            "folded_bn": count_batchnorms(model) - count_batchnorms(m) if fold else 0}
