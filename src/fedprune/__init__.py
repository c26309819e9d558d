"""fedprune: automatic structured pruning during federated training."""

from .config import ConfigError, ExperimentConfig, load_config
from .federated import run_simulation
from .models import ModelSpec, build, create_model, list_models
from .pruning import prune_model, rebuild

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "ModelSpec",
    "build",
    "create_model",
    "list_models",
    "load_config",
    "prune_model",
    "rebuild",
    "run_simulation",
]
