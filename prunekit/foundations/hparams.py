"""Hyperparameter dataclasses whose fields carry their own help text (OpenLTH style).

Use ``hp(default, "help text")`` for each field; ``describe(cls)`` lists fields with help
for the CLI, and ``from_dict(cls, d)`` builds an instance, rejecting unknown keys with a
message naming them and the valid ones.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any


def hp(default: Any, help: str, **kw):
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def describe(cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field of a hyperparameter dataclass."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tname = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append((f.name, tname, default, f.metadata.get("help", "")))
    return out


def from_dict(cls, d: dict | None, where: str = ""):
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {where or cls.__name__}; valid: {sorted(names)}"
        )
    hints = typing.get_type_hints(cls)
    for k, v in list(d.items()):
        t = hints.get(k)
        # YAML reads 1e-3 as a string; coerce simple scalars so configs stay forgiving.
        if t is float and isinstance(v, (int, str)) and not isinstance(v, bool):
            try:
                d[k] = float(v)
            except ValueError:
                raise ValueError(f"option {k!r} of {where or cls.__name__} must be a number, got {v!r}")
        elif t is int and isinstance(v, str):
            try:
                d[k] = int(v)
            except ValueError:
                raise ValueError(f"option {k!r} of {where or cls.__name__} must be an integer, got {v!r}")
    return cls(**d)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
