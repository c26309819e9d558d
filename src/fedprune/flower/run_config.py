"""Flower run config <-> fedprune's :class:`~fedprune.config.ExperimentConfig`.

A Flower App takes its settings from ``[tool.flwr.app.config]`` in its ``pyproject.toml``
(``flower/pyproject.toml`` here), overridden per run with ``flwr run . --run-config '...'``.
Flower flattens nested tables with dots, so the keys are fedprune's dotted keys with each
part in kebab-case::

    seed = 0                       ->  seed
    [tool.flwr.app.config.prune]
    start-round = 30               ->  prune.start-round   (ExperimentConfig: prune.start_round)

Every :class:`ExperimentConfig` setting has a key (:func:`default_run_config` lists them with
fedprune's defaults), plus the Flower-only keys of :class:`FlowerSettings` (``out-dir``,
``config-file``, ``round-timeout``, ``min-nodes``, ``node-wait-timeout``, ``plots``,
``resume``).  Values
are checked exactly as ``fedprune run`` checks them (types, the limits of docs/settings.md,
``fedprune.config_parse``): a bad value raises :class:`ConfigError` naming the run-config key,
in one line that quotes at most a short prefix of the value.  A value has the type Flower
gives it: ``"0.1"`` is a string, not a number; a list (``model.widths``) is written as text,
``"8,16"``.

Flower itself refuses a ``--run-config`` key that the app does not declare, before any of
this code runs, and says only "Invalid run configuration.".  So that ``fedprune run``'s
snake_case spelling (``fed.clients_per_round``) works too, the app also declares every
multi-word key in snake_case (:data:`SNAKE_ALIASES`, :func:`declared_run_config`).

Only the ServerApp reads the run config.  It sends the resolved experiment (JSON) to the
ClientApps in every message, so SuperNodes never need the config file or the run config.
:func:`format_run_config` writes the ``--run-config`` argument of ``flwr run``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, ExperimentConfig, from_dict, load_config, merge
from ..config_parse import _coerce, check_nesting
from ..config_sections import MAX_CLIENTS, shown

__all__ = [
    "FLOWER_KEYS",
    "SNAKE_ALIASES",
    "FlowerSettings",
    "declared_run_config",
    "default_run_config",
    "experiment_to_run_config",
    "format_run_config",
    "kebab",
    "parse_run_config",
]


def kebab(name: str) -> str:
    """``max_prune_round`` -> ``max-prune-round``."""
    return name.replace("_", "-")


def _snake(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class FlowerSettings:
    """Settings of the Flower app that ``fedprune run`` has as command-line options or lacks."""

    out_dir: str = ""  # run directory for rounds.jsonl / summary.json / config.json; "" = none
    config_file: str = ""  # a fedprune TOML of overrides (like `fedprune run --config`); "" = none
    round_timeout: float = 600.0  # seconds to wait for the replies of one round
    min_nodes: int = 0  # wait for this many SuperNodes before round 1; 0 = data.num-clients
    node_wait_timeout: float = 300.0  # give up waiting for min-nodes after this many seconds
    plots: bool = True  # write accuracy.png, params.png, bytes.png (budget.png) into out-dir
    resume: bool = False  # continue the unfinished run whose checkpoint out-dir holds

    def __post_init__(self) -> None:
        if not (self.round_timeout > 0 and math.isfinite(self.round_timeout)):
            raise ConfigError(f"round-timeout = {shown(self.round_timeout)} is out of range: "
                              "allowed > 0 seconds")
        if not 0 <= self.min_nodes <= MAX_CLIENTS:
            raise ConfigError(f"min-nodes = {shown(self.min_nodes)} is out of range: allowed "
                              f"in [0, {MAX_CLIENTS}]")
        if not (self.node_wait_timeout > 0 and math.isfinite(self.node_wait_timeout)):
            raise ConfigError(f"node-wait-timeout = {shown(self.node_wait_timeout)} is out of "
                              "range: allowed > 0 seconds")

    def to_run_config(self) -> dict[str, Any]:
        return {kebab(k): v for k, v in dataclasses.asdict(self).items()}


FLOWER_KEYS = tuple(kebab(f.name) for f in dataclasses.fields(FlowerSettings))


def _leaf_items(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _leaf_items(v, f"{prefix}{kebab(k)}.")
        else:
            out.append((f"{prefix}{kebab(k)}", v))
    return out


def _run_value(value: Any) -> bool | int | float | str:
    """A Flower run-config value (bool, int, float or str) for an ExperimentConfig value."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def experiment_to_run_config(cfg: ExperimentConfig) -> dict[str, bool | int | float | str]:
    """Flat run-config keys (kebab-case, dotted) for every setting of ``cfg``.

    Lists become comma-separated strings (``model.widths = "8,16"``) and ``None`` becomes ``""``
    because a Flower run-config value is a bool, int, float or string.
    """
    return {k: _run_value(v) for k, v in _leaf_items(cfg.to_dict())}


def _field_defaults(cls: type) -> dict[str, Any]:
    """The declared defaults of a config dataclass tree, before ``__post_init__`` resolves
    its automatic values (``data.num_clients = 0``, ``prune.start_round = 0``, ...)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = (_field_defaults(type(value)) if dataclasses.is_dataclass(value)
                           else value)
    return out


def _experiment_defaults() -> dict[str, bool | int | float | str]:
    return {k: _run_value(v) for k, v in _leaf_items(_field_defaults(ExperimentConfig))}


def default_run_config() -> dict[str, bool | int | float | str]:
    """Every run-config key the app understands, with fedprune's defaults.

    The defaults are the declared ones, automatic values included (``prune.start-round = 0``
    = from ``fed.rounds``), so that a run config that changes ``fed.rounds`` alone gets the
    same automatic pruning window as ``fedprune run --set fed.rounds=...``.
    """
    return {**_experiment_defaults(), **FlowerSettings().to_run_config()}


_EXPERIMENT_DEFAULTS = _experiment_defaults()


def _snake_key(key: str) -> str:
    return ".".join(_snake(p) for p in key.split("."))


#: snake_case spelling -> run-config key, for every key with a ``-`` (``fed.clients_per_round``
#: -> ``fed.clients-per-round``): the spelling of ``fedprune run --set``.  Flower refuses a
#: ``--run-config`` key that ``flower/pyproject.toml`` does not declare (before the app runs,
#: with only "Invalid run configuration."), so the app declares these spellings too.
SNAKE_ALIASES: dict[str, str] = {_snake_key(k): k for k in default_run_config() if "-" in k}


def declared_run_config() -> dict[str, bool | int | float | str]:
    """What ``flower/pyproject.toml`` declares: every key and its snake_case alias."""
    defaults = default_run_config()
    return {**defaults, **{alias: defaults[key] for alias, key in SNAKE_ALIASES.items()}}


def _fold_aliases(run_config: dict[str, Any]) -> dict[str, Any]:
    """Replace the snake_case aliases by their run-config keys.

    Flower passes every declared key, so an alias at its default value says nothing; one with
    another value is what the user set.  Both spellings set to different values is an error.
    """
    defaults = default_run_config()
    out = {k: v for k, v in run_config.items() if k not in SNAKE_ALIASES}
    for alias, key in SNAKE_ALIASES.items():
        if alias not in run_config or run_config[alias] == defaults[key]:
            continue
        value = run_config[alias]
        other = run_config.get(key, defaults[key])
        if other != defaults[key] and other != value:
            raise ConfigError(f"run-config keys '{key}' = {shown(other)} and '{alias}' = "
                              f"{shown(value)} disagree: set only one ('{key}' is the "
                              "documented spelling)")
        out[key] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = [_snake(p) for p in key.split(".")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts[-1] == "widths" and isinstance(value, str) and not value.strip():
            value = None  # "" = the model's default widths
        node[parts[-1]] = value
    return out


def parse_run_config(
    run_config: dict[str, Any], base_dir: Path | None = None
) -> tuple[ExperimentConfig, FlowerSettings]:
    """Resolve a Flower run config into fedprune's config tree and the Flower-only settings.

    Precedence: fedprune's defaults, then ``config-file`` (if set), then every experiment key
    of ``run_config``.  When ``config-file`` is set, a run-config key overrides the file only
    if its value differs from fedprune's default (Flower always passes every key, so a key left
    at its default cannot be told apart from one the user set to the default).

    A snake_case alias of a key (:data:`SNAKE_ALIASES`, ``fed.clients_per_round``) counts as
    that key when its value differs from the default.

    Raises :class:`ConfigError` on an unknown key or a bad value, naming the run-config key.
    """
    check_nesting(run_config, "the run config")  # before anything compares its values
    flower_values: dict[str, Any] = {}
    experiment_flat: dict[str, Any] = {}
    for key, value in _fold_aliases(dict(run_config)).items():
        if key in FLOWER_KEYS:
            flower_values[_snake(key)] = value
        else:
            experiment_flat[key] = value

    settings = _flower_settings(flower_values)

    base: dict[str, Any] = {}
    if settings.config_file:
        path = Path(settings.config_file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        base = _toml_overrides(path)
        experiment_flat = {k: v for k, v in experiment_flat.items()
                           if k not in _EXPERIMENT_DEFAULTS or _EXPERIMENT_DEFAULTS[k] != v}
    unknown = sorted((k for k in experiment_flat if k not in _EXPERIMENT_DEFAULTS), key=repr)
    if unknown:
        raise ConfigError(f"unknown run-config key {shown(unknown[0])}; known keys: "
                          + ", ".join(sorted([*_EXPERIMENT_DEFAULTS, *FLOWER_KEYS])))
    try:
        cfg = from_dict(merge(base, _nest(experiment_flat)))
    except ConfigError as exc:
        raise ConfigError(_kebab_message(str(exc))) from None
    return cfg, settings


def _flower_settings(values: dict[str, Any]) -> FlowerSettings:
    """Check the Flower-only values as every setting is checked (type, string length)."""
    hints = typing.get_type_hints(FlowerSettings)
    return FlowerSettings(**{name: _coerce(kebab(name), value, hints[name])
                             for name, value in values.items()})


def _toml_overrides(path: Path) -> dict[str, Any]:
    """The overrides of a fedprune TOML file, checked like ``fedprune run --config``."""
    load_config(path)  # raises ConfigError naming the file on a missing/bad file or value
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))


def _kebab_message(message: str) -> str:
    """Rewrite the snake_case keys in a ConfigError message to run-config keys."""
    for key in sorted(_EXPERIMENT_DEFAULTS, key=len, reverse=True):
        snake = ".".join(_snake(p) for p in key.split("."))
        if snake != key:
            message = message.replace(snake, key)
    return message


def format_run_config(values: Mapping[str, Any]) -> str:
    """``{"fed.rounds": 3, "out-dir": "/x"}`` -> ``fed.rounds=3 out-dir="/x"``, the
    ``--run-config`` argument of ``flwr run``."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            if '"' in value:
                raise ValueError(f"run-config value for {key} cannot hold '\"': {value!r}")
            text = f'"{value}"'
        else:
            raise TypeError(f"run-config value for {key} must be bool, int, float or str")
        parts.append(f"{key}={text}")
    return " ".join(parts)
