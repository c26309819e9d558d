"""Reading a configuration: TOML files and ``--set key=value`` overrides into the tree.

Every value is checked against its field's type (:func:`_coerce`) and every key against the
dataclasses of the configuration tree (:mod:`fedprune.config_tree`); a bad key or value raises
:class:`~fedprune.config.ConfigError` naming it, in one line that quotes at most a short prefix
of the value (:func:`~fedprune.config_sections.shown`).  A ``--set`` value is text
(:class:`SetText`) and is read as its field's type; a value of a TOML file, a JSON
``config.json`` or a Flower run config already has a type and must have the field's: a string
is not a number.  Strings, lists and nesting are bounded here (``MAX_TEXT``, ``MAX_ITEMS``,
``MAX_DEPTH`` of :mod:`fedprune.config_sections`), the sizes by the sections themselves.
:mod:`fedprune.config` re-exports :func:`from_dict`, :func:`parse_overrides`, :func:`merge`
and :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from .config_sections import MAX_DEPTH, MAX_ITEMS, MAX_TEXT, ConfigError, shown
from .config_tree import ExperimentConfig

__all__ = ["ENGINES", "ENGINE_KEY", "SetText", "check_nesting", "from_dict", "load_config",
           "merge", "parse_overrides"]

# a run's config.json carries, beside the settings, the engine that wrote it: not a setting
ENGINE_KEY = "engine"
ENGINES = ("in-process", "flower")
_PATH_SHOWN = 240  # an error message quotes a config file's path up to this length


class SetText(str):
    """A value typed on the command line (``--set key=value``): text, read as its field's type
    (``"3"`` -> 3 for an integer field), where a value that has a type (TOML, JSON, a Flower
    run config) must have the field's.  Compares and prints as the plain string."""

    __slots__ = ()


def check_nesting(values: Any, where: str = "the configuration") -> None:
    """Refuse tables and lists nested more than ``MAX_DEPTH`` deep, without recursing."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(values, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        children = (node.items() if isinstance(node, dict)
                    else enumerate(node) if isinstance(node, list) else ())
        for name, child in children:
            if not isinstance(child, (dict, list)):
                continue
            if depth + 1 > MAX_DEPTH:
                key = ".".join(str(p) for p in (*path, name)[:3])
                raise ConfigError(f"{where} nests tables or lists more than {MAX_DEPTH} levels "
                                  f"deep (under {shown(key)}): a setting is a section, a key "
                                  "and at most a list of values")
            stack.append((child, depth + 1, (*path, name) if len(path) < 3 else path))


def _list_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; read a ``--set`` text as that type."""
    text = isinstance(value, SetText)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ConfigError(f"{key} is too long: at most {MAX_TEXT} characters, got "
                          f"{shown(value)}")
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} = {shown(value)} is not allowed: choose one of "
                              f"{list(allowed)}")
        return str(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # a list as text: "[4, 8]" or "4, 8" (any source)
            raw = value.strip()
            if _list_depth(raw) > MAX_DEPTH:  # what json.loads would recurse into
                raise ConfigError(f"{key} nests lists more than {MAX_DEPTH} levels deep: "
                                  f"{shown(value)}")
            try:
                value = json.loads(raw) if raw.startswith("[") else [
                    SetText(v.strip()) for v in raw.split(",") if v.strip()]
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: cannot read {shown(value)} as a list "
                                  f"({exc})") from None
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {shown(value)}")
        if len(value) > MAX_ITEMS:
            raise ConfigError(f"{key} is too long: at most {MAX_ITEMS} items, got "
                              f"{len(value)}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {shown(value)}")
    if tp is int:
        if text:
            try:
                return int(value)
            except ValueError:  # not an integer, or more digits than Python converts
                raise ConfigError(f"{key} must be an integer, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not (text or isinstance(value, (int, float))):
            raise ConfigError(f"{key} must be a number, got {shown(value)}")
        try:
            out = float(value)
        except ValueError:  # text that is not a number
            raise ConfigError(f"{key} must be a number, got {shown(value)}") from None
        except OverflowError:  # an integer beyond every float
            out = math.inf
        if not math.isfinite(out):
            raise ConfigError(f"{key} must be a finite number, got {shown(value)}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {shown(value)}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=repr)
    if unknown:
        where = f"section [{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown key {shown(f'{prefix}{unknown[0]}')} in {where}; known keys: "
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
    check_nesting(values)
    if values.get(ENGINE_KEY) in ENGINES:  # read back from a run's config.json
        values = {k: v for k, v in values.items() if k != ENGINE_KEY}
    return _build(ExperimentConfig, values, "")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["prune.k=1.5", "seed=3"]`` into nested overrides.

    The values stay strings: :class:`SetText`, which :func:`from_dict` reads as the field's
    type.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {shown(pair)}: expected key=value, e.g. prune.k=1.5")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"--set {shown(pair)}: bad key {shown(key)}")
        if len(parts) > MAX_DEPTH:
            raise ConfigError(f"--set {shown(key)}=...: bad key: more than {MAX_DEPTH} parts "
                              "(a key is section.key)")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {shown(pair)}: {shown(p)} is a value, not a section")
        node[parts[-1]] = SetText(value)
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
        text = str(path)  # as typed, unless long or unprintable (then quoted and cut)
        where = "config file " + (text if len(text) <= _PATH_SHOWN and text.isprintable()
                                  else shown(text, _PATH_SHOWN))
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} cannot be read as UTF-8 TOML: {exc}") from None
        except OSError as exc:  # strerror: the message without the (maybe long) file name
            raise ConfigError(f"{where} cannot be read as UTF-8 TOML: "
                              f"{exc.strerror or type(exc).__name__}") from None
        except ValueError:  # tomllib's int(): more digits than Python converts
            raise ConfigError(f"{where} holds an integer of more than "
                              f"{sys.get_int_max_str_digits()} digits") from None
        except RecursionError:  # tomllib recurses into nested arrays and inline tables
            raise ConfigError(f"{where} nests tables or lists too deeply to read: a setting "
                              f"needs at most {MAX_DEPTH} levels") from None
        check_nesting(values, where)
    values = merge(values, parse_overrides(overrides or []))
    try:
        return from_dict(values)
    except TypeError as exc:  # e.g. a section given a scalar where a table is expected
        raise ConfigError(str(exc)) from None
