"""Hyperparameter dataclasses whose fields carry their own help text (OpenLTH style).

Use ``hp(default, "help text")`` for each field; ``describe(cls)`` lists fields with help
for the CLI, and ``from_dict(cls, d)`` builds an instance, rejecting unknown keys with a
message naming them and the valid ones.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def hp(default: Any, help: str, choices=None, **kw):
    """A field with help text; ``choices`` (a tuple, or a callable returning names for
    registries that grow at run time) restricts its values and is checked by from_dict."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def choices_of(f: dataclasses.Field):
    c = f.metadata.get("choices")
    return tuple(c()) if callable(c) else c


def _describe_type(t) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
            list: "a list"}.get(t, getattr(t, "__name__", str(t)))


def coerce(value: Any, t, name: str):
    """Check ``value`` against the annotation ``t`` (int, float, bool, str, dict, list,
    Optional/unions of these); return it, coerced where YAML is loose (``1e-3`` is read as a
    string, ``3`` where a float is meant). Raise ValueError with a message that names ``name``."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(value, a, name)
            except ValueError as e:
                errors.append(e)
        raise errors[0] if errors else ValueError(f"{name} has an unsupported type")
    base = origin or t
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if base is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if base in (bool, str, dict):
        if not isinstance(value, base):
            raise ValueError(f"{name} must be {_describe_type(base)}, got {value!r}")
        return value
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        if args and args[0] is not Ellipsis:
            return [coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
        return list(value)
    return value  # other annotations: the dataclass's own __post_init__ checks them


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in list(d.items()):
        label = f"{where or cls.__name__}: {k}"
        if k in hints:
            d[k] = coerce(v, hints[k], label)
        choices = choices_of(fields[k])
        if choices and d[k] not in choices:
            raise ValueError(f"{label} must be one of {', '.join(map(str, choices))}; got {d[k]!r}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:  # a __post_init__ check: say where it came from
        raise ValueError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
