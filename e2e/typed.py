"""Typed values for frozen dataclasses: the one parser of configs (JSON) and options (text).

`build(cls, dict)` makes a dataclass from JSON-like values, rejecting unknown keys and mistyped
values; `from_text(tp, text)` turns a command-line string into a value of the declared type
(`1e6` stays a float only where a float is declared; `[1,2]` is a tuple). Both raise
`ConfigError` with a message naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field and what is allowed."""


def require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: must be {allowed}")


def build(cls: type, d: Any, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a dict, rejecting unknown keys and mistyped values."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {names}")
    kwargs = {k: coerce(hints[k], v, prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def _optional(tp: Any) -> tuple[bool, Any]:
    """(is a `X | None`, X)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        (inner,) = [a for a in args if a is not type(None)]
        return True, inner
    return False, tp


def coerce(tp: Any, value: Any, name: str) -> Any:
    """A JSON-like value checked against (and converted to) the declared type `tp`."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, name + ".")
    optional, inner = _optional(tp)
    if optional:
        return None if value is None else coerce(inner, value, name)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        require(value in choices, name, f"one of {list(choices)}", value)
        return value
    if origin is tuple:
        require(isinstance(value, (list, tuple)) and len(value) > 0, name,
                "a non-empty list like [1,2]", value)
        return tuple(coerce(typing.get_args(tp)[0], v, name) for v in value)
    if origin is dict:
        require(isinstance(value, dict), name, "a mapping", value)
        return dict(value)
    if tp is float:
        require(isinstance(value, (int, float)) and not isinstance(value, bool), name,
                "a number", value)
        return float(value)
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), name, "an integer",
                value)
        return value
    if tp is bool:
        require(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is str:
        require(isinstance(value, str), name, "a string", value)
        return value
    raise TypeError(f"unsupported config type {tp} for {name}")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def from_text(tp: Any, text: str, key: str) -> Any:
    """Converts command-line `text` to the declared type `tp` (then checked by `coerce`)."""
    optional, inner = _optional(tp)
    if optional:
        return None if text.lower() in ("none", "null") else from_text(inner, text, key)
    if typing.get_origin(tp) is tuple:
        body = text.strip()
        if body[:1] + body[-1:] in ("[]", "()"):
            body = body[1:-1]
        items = [s.strip().strip("'\"") for s in body.split(",") if s.strip()]
        require(bool(items), key, "a non-empty list like [1,2]", text)
        return tuple(from_text(typing.get_args(tp)[0], s, key) for s in items)
    try:
        if tp is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is invalid: must be {tp.__name__}") from None
    return coerce(tp, text, key)


def leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict flattened to dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def changed(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs, in key order."""
    a, b = leaves(old), leaves(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def field_types(cls: type) -> dict[str, Any]:
    """Dotted field name -> declared type, for every leaf field of dataclass `cls`."""
    out: dict[str, Any] = {}

    def walk(c: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(c).items():
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")
            else:
                out[prefix + name] = tp

    walk(cls, "")
    return out


def with_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """`obj` (a dataclass) with dotted-name overrides applied, validated like a loaded one."""
    d = dataclasses.asdict(obj)
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node = None
                break
            node = node[p]
        if node is None or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config field {key!r}; valid: "
                              f"{sorted(field_types(type(obj)))}")
        node[parts[-1]] = value
    return build(type(obj), d)
