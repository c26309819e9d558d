"""Server-side steps shared by the in-process loop and the Flower strategy.

One implementation of "prune the aggregate if the schedule says so" and of the run summary,
so the two engines cannot drift apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..metrics import count_macs, n_params
from ..models import ModelSpec
from ..pruning import Schedule, ScheduleState, advance, is_active, prune_model

logger = logging.getLogger(__name__)


def schedule_of(cfg: ExperimentConfig) -> Schedule:
    p = cfg.prune
    return Schedule(p.start_round, p.max_prune_round, p.patience, p.interval)


@dataclass(frozen=True)
class PruneStep:
    spec: ModelSpec  # the spec after the step (unchanged when nothing was cut)
    state: ScheduleState
    pruned: bool  # True when the parameter count dropped


def maybe_prune(
    cfg: ExperimentConfig,
    state: ScheduleState,
    model: nn.Module,
    example: torch.Tensor,
    spec: ModelSpec,
    rnd: int,
) -> PruneStep:
    """After aggregating round ``rnd``: run the rule if the schedule is active, in place."""
    schedule = schedule_of(cfg)
    if not (cfg.prune.enabled and is_active(schedule, state, rnd)):
        return PruneStep(spec, state, False)
    p = cfg.prune
    before = n_params(model)
    res = prune_model(
        model, example, k=p.k, mode=p.mode, min_channels=p.min_channels,
        max_fraction=p.max_fraction, reinit=p.reinit, seed=int(cfg.seed * 100_003 + rnd),
        record=spec.record, ratio=p.ratio if p.method == "ratio" else None,
    )
    after = n_params(model)
    state = advance(schedule, state, rnd, before, after)
    pruned = after < before
    if pruned:
        spec = replace(spec, record=res.record)
        logger.info("round %d: pruned %d -> %d params, widths %s", rnd, before, after,
                    spec.widths_now())
    if state.stopped:
        logger.info("round %d: pruning stopped (%d steps accepted)", rnd, state.accepted_steps)
    return PruneStep(spec, state, pruned)


def run_summary(
    cfg: ExperimentConfig,
    model: nn.Module,
    example: torch.Tensor,
    spec: ModelSpec,
    state: ScheduleState,
    *,
    accuracy: float,
    loss: float,
    params_initial: int,
    macs_initial: int,
    widths_initial: dict[str, int],
    bytes_total: int,
    bytes_total_dense: int,
    seconds: float,
) -> dict[str, Any]:
    """The ``summary.json`` keys every engine writes."""
    macs_final = count_macs(model, example)
    return {
        "accuracy": accuracy,
        "loss": loss,
        "params_initial": params_initial,
        "params_final": n_params(model),
        "macs_initial": macs_initial,
        "macs_final": macs_final,
        "flops_initial": 2 * macs_initial,
        "flops_final": 2 * macs_final,
        "bytes_total": bytes_total,
        "bytes_total_dense": bytes_total_dense,
        "widths_initial": widths_initial,
        "widths_final": spec.widths_now(),
        "prune_stopped_round": state.stopped_round,
        "prune_steps": state.accepted_steps,
        "rounds": cfg.fed.rounds,
        "seconds": seconds,
        "config": cfg.to_dict(),
    }
