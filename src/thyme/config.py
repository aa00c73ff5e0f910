"""Typed configs from YAML and `--set key=value`: frozen dataclasses, strict keys, one-line errors.

Every training stage has one frozen dataclass (`thyme.train.config.SFTConfig`, ...) that validates itself in
`__post_init__`. This module only fills one from plain data:

    config = load_config(SFTConfig, "sft.yaml", overrides=["learning_rate=2e-5", "lora.r=8"])

- Unknown keys are errors that name the key and suggest the closest valid one; missing required keys name
  what to add. Nothing unknown passes silently.
- Values are checked against the field's type (bool, int, float, str, Literal choices, optional values,
  tuples, nested dataclasses) and the error names the dotted key, the value and what was expected.
- `--set a.b=value` parses `value` as YAML (`3`, `2e-5`, `true`, `[a, b]`, `null`) and sets the dotted key,
  creating nested mappings as needed; `data.0.path=...` indexes a list.

All errors are `ConfigError`, a ValueError whose message is one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message is one line saying what to fix."""


def load_config(cls: type[T], path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> T:
    """Read YAML at `path` (None: start empty), apply `key=value` overrides, and build `cls`."""
    import yaml

    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values, not a {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return build(cls, data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one `dotted.key=value` in `data` (the value parsed as YAML)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: write key=value, e.g. --set learning_rate=2e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(node, list):
            node = node[_index(node, part, key)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def build(cls: type[T], data: Any, where: str = "") -> T:
    """An instance of the dataclass `cls` from a mapping, every key and value checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys to values, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {_join(where, key)!r}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"config key {_join(where, name)!r} is required; add it to the config or --set it"
            )
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: {_show(value)} is not any of {' | '.join(_name(o) for o in options)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {_show(value)} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list, Sequence):
        item = args[0] if args else Any
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            value = [value]  # a single item where a list is expected
        return tuple(_convert(v, item, f"{where}.{i}") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected a whole number, got {_show(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected text, got {_show(value)}")
    raise ConfigError(f"{where}: cannot read a value of type {_name(hint)}")


def to_plain(config: Any) -> Any:
    """A config as plain data (tuples as lists), e.g. to save next to a checkpoint."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_plain(v) for v in config]
    return config


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
