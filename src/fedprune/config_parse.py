"""Reading a configuration: TOML files and ``--set key=value`` overrides into the tree.

Every value is converted to its field's type (:func:`_coerce`) and every key checked against the
dataclasses of the configuration tree (:mod:`fedprune.config_tree`); a bad key or value raises
:class:`~fedprune.config.ConfigError` naming it.  :mod:`fedprune.config` re-exports
:func:`from_dict`, :func:`parse_overrides`, :func:`merge` and :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from .config_sections import ConfigError
from .config_tree import ExperimentConfig

__all__ = ["ENGINES", "ENGINE_KEY", "from_dict", "load_config", "merge", "parse_overrides"]

# a run's config.json carries, beside the settings, the engine that wrote it: not a setting
ENGINE_KEY = "engine"
ENGINES = ("in-process", "flower")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from TOML or a ``--set`` string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed: choose one of {list(allowed)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [
                    v for v in text.split(",") if v.strip()]
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: cannot read {value!r} as a list ({exc})") from None
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"section [{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}' in {where}; known keys: "
            + ", ".join(prefix + n for n in sorted(names))
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} is a section: use [{prefix}{name}] or "
                                  f"{prefix}{name}.<key>=<value>")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build a config from nested overrides; everything absent keeps its default."""
    if not isinstance(values, dict):
        raise ConfigError("a configuration must be a table of keys and values")
    if values.get(ENGINE_KEY) in ENGINES:  # read back from a run's config.json
        values = {k: v for k, v in values.items() if k != ENGINE_KEY}
    return _build(ExperimentConfig, values, "")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["prune.k=1.5", "seed=3"]`` into nested overrides (values stay strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. prune.k=1.5")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"--set {pair!r}: bad key {key!r}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {p!r} is a value, not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the TOML file's overrides, then ``--set`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read as UTF-8 TOML: {exc}") from None
    values = merge(values, parse_overrides(overrides or []))
    try:
        return from_dict(values)
    except TypeError as exc:  # e.g. a section given a scalar where a table is expected
        raise ConfigError(str(exc)) from None
