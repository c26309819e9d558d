"""The models of a finished run: the final pruned one and the initial dense one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..models import ModelSpec, new_model
from ..rundir import RunDir


@dataclass
class RunModels:
    spec: ModelSpec  # of the final model
    final: nn.Module  # pruned weights from the checkpoint
    initial: nn.Module  # the same architecture before pruning, with the run's seeded init
    round: int


def load_run(run_dir: Path, *, allow_unverified: bool = False) -> RunModels:
    """Rebuild a run's final model (checkpoint) and its initial dense model (seeded init);
    ``allow_unverified``: read a checkpoint that carries no checksum
    (:func:`~fedprune.checkpoint.read_checkpoint`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    rd = RunDir(run_dir, allow_unverified=allow_unverified)
    spec, final, rnd = rd.load_checkpoint()
    try:
        seed = int(rd.read_config_dict()["seed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{rd.config_file}: cannot read the run's seed ({exc})") from None
    initial, _ = new_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                           image_size=spec.image_size, widths=spec.widths, seed=seed)
    return RunModels(spec=spec, final=final.eval(), initial=initial.eval(), round=rnd)
