"""The experiment configuration: one frozen dataclass tree holding every default.

Experiment files (TOML) and ``--set key=value`` hold overrides only.  Every value is checked
when the tree is built; a bad key or value raises :class:`ConfigError` naming the key and what
is allowed.  The resolved tree is written next to the results (``config.json``).

This module is the public face of the configuration: the sections
(:mod:`fedprune.config_sections`, :mod:`fedprune.config_pruning`), the tree
(:mod:`fedprune.config_tree`) and reading files and overrides into it (:func:`from_dict`,
:func:`load_config`, ...: :mod:`fedprune.config_parse`).
"""

from .config_parse import ENGINE_KEY, ENGINES, from_dict, load_config, merge, parse_overrides
from .config_pruning import BudgetConfig, PruneConfig
from .config_sections import (
    DEFAULT_SYNTHETIC_CLIENTS,
    ConfigError,
    DataConfig,
    FedConfig,
    ModelConfig,
    TrainConfig,
    check_device_name,
    default_auto_deadline,
    default_budget_deadline,
    default_nested_window,
    default_window,
)
from .config_tree import ExperimentConfig

__all__ = [
    "DEFAULT_SYNTHETIC_CLIENTS", "ENGINES", "ENGINE_KEY",
    "BudgetConfig", "ConfigError", "DataConfig", "ExperimentConfig", "FedConfig",
    "ModelConfig", "PruneConfig", "TrainConfig", "check_device_name", "default_auto_deadline",
    "default_budget_deadline", "default_nested_window", "default_window",
    "from_dict", "load_config", "merge", "parse_overrides",
]
