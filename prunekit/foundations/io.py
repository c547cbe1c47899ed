"""Atomic, pickle-free persistence.

Everything is written to a temporary file in the destination directory and then
``os.replace``d, so a crash never leaves a half-written checkpoint or result behind.
Tensors go to safetensors; everything else to JSON. Every tensor's payload is hashed
(BLAKE2b) into the file's metadata and checked on every load, so a flipped byte or an
overwritten weight raises ``CheckpointError`` naming the file and the tensor instead of
silently changing a result. Nested state (optimiser, scheduler,
RNG) is split by ``split_state`` into a JSON skeleton with tensor references plus a flat
tensor dict, and rebuilt by ``join_state``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_TREF = "__tensor__"


class CheckpointError(RuntimeError):
    """A checkpoint or saved model is missing, corrupted or incompatible."""


TMP_SUFFIX = ".tmp"


def clean_orphans(directory, older_than_s: float = 0.0) -> list[Path]:
    """Delete temp files that an earlier, killed writer left behind in ``directory``.

    Only our own pattern is touched (``.<name>.<random>.tmp`` from ``atomic_write_bytes``
    and ``.<name>.<random>.part`` from downloads). ``older_than_s`` spares files another
    live process may be writing right now."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed, now = [], time.time()
    for p in directory.iterdir():
        if p.name.startswith(".") and p.name.endswith((TMP_SUFFIX, ".part")) and p.is_file():
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:  # another process finished or cleaned it meanwhile
                pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
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


CHECKSUM_KEY = "prunekit.blake2b"


def tensor_digest(t: torch.Tensor) -> str:
    """BLAKE2b of a tensor's raw bytes (dtype and shape are checked by safetensors' header)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    raw = t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return hashlib.blake2b(raw.numpy(), digest_size=16).hexdigest()


def save_tensors(path, tensors: dict[str, torch.Tensor], meta: dict | None = None,
                 raw_metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (and a JSON metadata dict) to one safetensors file,
    with a checksum of every tensor in the metadata. ``raw_metadata`` adds plain string
    entries other readers look for (HuggingFace wants ``{"format": "pt"}``)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**(raw_metadata or {}), "prunekit": json.dumps(meta or {}, default=_json_default),
                CHECKSUM_KEY: json.dumps({k: tensor_digest(v) for k, v in clean.items()})}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by save_tensors and verify every tensor's checksum; raise
    CheckpointError naming the file (and the tensor) if it is unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        # safetensors.torch.load drops metadata; read the header ourselves (8-byte length + JSON).
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        raw_meta = header.get("__metadata__") or {}
        meta = json.loads(raw_meta.get("prunekit", "{}"))
        sums = json.loads(raw_meta[CHECKSUM_KEY]) if CHECKSUM_KEY in raw_meta else None
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted or not a prunekit safetensors file ({e})") from e
    if sums is None:
        raise CheckpointError(f"{path} has no tensor checksums (not written by prunekit's save_tensors, "
                              f"or its metadata was altered); it cannot be verified")
    if set(sums) != set(tensors):
        diff = sorted(set(sums) ^ set(tensors))
        raise CheckpointError(f"{path} is corrupted: tensors {diff[:5]} do not match its checksum list")
    for k, t in tensors.items():
        if tensor_digest(t) != sums[k]:
            raise CheckpointError(f"{path} is corrupted: tensor {k!r} fails its checksum")
    return tensors, meta
