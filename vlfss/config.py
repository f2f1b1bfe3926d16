"""Typed dataclass configs, loaded strictly from YAML with ``key=value`` overrides.

An unknown key, a value of the wrong type or a NaN is an error that names the key. Paths in a
config (fields whose name ends in ``_path``, ``_dir`` or ``_root``) resolve relative to the YAML file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")
_PATH_SUFFIXES = ("_path", "_dir", "_root", "_file")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a type annotation; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError:
                continue  # try the union's next type
        raise ConfigError(f"config key '{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    return _convert_scalar(value, tp, key)


def _convert_scalar(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a bool, int, float or str value (anything else passes as it is)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if math.isnan(float(value)):
            raise ConfigError(f"config key '{key}': NaN is not allowed")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys of {cls.__name__}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain mapping of a dataclass config (for JSON metadata and checkpoints)."""
    return dataclasses.asdict(cfg)


def _parse_scalar(text: str) -> Any:
    """An override's value parsed as YAML (``a=`` is the empty string)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested mapping, returning a copy."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the relative path values of ``data`` (keys ending in _path, _dir, _root, _file) absolute, relative to
    ``base`` (the folder of the YAML file that sets them), in place; URLs and hub names stay as they are."""
    for k, v in data.items():
        if isinstance(v, dict):
            _resolve_paths(v, base)
        elif isinstance(v, str) and k.endswith(_PATH_SUFFIXES) and v and not Path(v).is_absolute():
            if "://" not in v and not v.startswith(("hf-hub:", "local-dir:")):
                data[k] = str((base / v).resolve())


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load dataclass ``cls`` from YAML file ``path`` (optional) plus ``key=value`` overrides.

    A YAML file may name a ``base:`` file (relative to itself) whose values it extends.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    data = apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``delta``'s values on top, merging nested mappings key by key."""
    out = dict(base)
    for k, v in delta.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of YAML file ``path``, its paths resolved, merged over its ``base:`` file's (recursively)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    _resolve_paths(data, path.parent)
    base = data.pop("base", None)
    if base is not None:
        data = _merge(_read_yaml((path.parent / base).resolve()), data)
    return data
