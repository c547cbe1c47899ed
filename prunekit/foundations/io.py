"""Atomic, pickle-free persistence.

Everything is written to a temporary file in the destination directory and then
``os.replace``d, so a crash never leaves a half-written checkpoint or result behind.
Tensors go to safetensors; everything else to JSON. Nested state (optimiser, scheduler,
RNG) is split by ``split_state`` into a JSON skeleton with tensor references plus a flat
tensor dict, and rebuilt by ``join_state``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_TREF = "__tensor__"


class CheckpointError(RuntimeError):
    """A checkpoint or saved model is missing, corrupted or incompatible."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results should be readable like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def split_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "s"):
    """Return (json-able skeleton, tensors) for nested dict/list state with tensors inside."""
    if tensors is None:
        tensors = {}
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TREF: key}, tensors
    if isinstance(obj, dict):
        # JSON keys must be strings; remember int keys (optimiser state is keyed by int).
        out = {"__dict__": [[k, split_state(v, tensors, f"{prefix}.{k}")[0]] for k, v in obj.items()]}
        return out, tensors
    if isinstance(obj, (list, tuple)):
        items = [split_state(v, tensors, f"{prefix}.{i}")[0] for i, v in enumerate(obj)]
        return ({"__tuple__": items} if isinstance(obj, tuple) else items), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def join_state(skel: Any, tensors: dict[str, torch.Tensor]):
    if isinstance(skel, dict):
        if _TREF in skel:
            return tensors[skel[_TREF]]
        if "__dict__" in skel:
            return {k: join_state(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(join_state(v, tensors) for v in skel["__tuple__"])
    if isinstance(skel, list):
        return [join_state(v, tensors) for v in skel]
    return skel


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomically write tensors (and a JSON metadata dict) to one safetensors file."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"prunekit": json.dumps(meta or {}, default=_json_default)}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by save_tensors; raise CheckpointError naming the file if unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        # safetensors.torch.load drops metadata; read the header ourselves (8-byte length + JSON).
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header.get("__metadata__", {}).get("prunekit", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted or not a prunekit safetensors file ({e})") from e
    return tensors, meta
