"""The models of a finished run: the final pruned one and the initial dense one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..federated.loop import CHECKPOINT_FILE, load_checkpoint
from ..models import ModelSpec, new_model


@dataclass
class RunModels:
    spec: ModelSpec  # of the final model
    final: nn.Module  # pruned weights from the checkpoint
    initial: nn.Module  # the same architecture before pruning, with the run's seeded init
    round: int


def load_run(run_dir: Path) -> RunModels:
    """Rebuild a run's final model (checkpoint) and its initial dense model (seeded init)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    spec, final, rnd = load_checkpoint(run_dir / CHECKPOINT_FILE)
    cfg_path = run_dir / "config.json"
    try:
        seed = int(json.loads(cfg_path.read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: cannot read the run's seed ({exc})") from None
    initial, _ = new_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                           image_size=spec.image_size, widths=spec.widths, seed=seed)
    return RunModels(spec=spec, final=final.eval(), initial=initial.eval(), round=rnd)
