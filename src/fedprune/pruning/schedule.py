"""When the server prunes: start round, last round, and patience on "params dropped".

The state is a frozen value that :func:`advance` returns anew each round; nothing is global.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Schedule:
    """Pruning is tried every ``interval`` rounds from ``start_round`` to ``max_prune_round``.

    It stops for good after ``patience`` consecutive tried rounds in which the parameter count
    did not drop, or after ``max_prune_round``.
    """

    start_round: int = 1
    max_prune_round: int = 50
    patience: int = 3
    interval: int = 1

    def __post_init__(self) -> None:
        if self.start_round < 1:
            raise ValueError(f"start_round must be >= 1, got {self.start_round}")
        if self.max_prune_round < self.start_round:
            raise ValueError(
                f"max_prune_round ({self.max_prune_round}) must be >= start_round "
                f"({self.start_round})"
            )
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")


@dataclass(frozen=True)
class ScheduleState:
    """Progress of the schedule: rounds without a drop, and whether/when pruning stopped."""

    stale_rounds: int = 0
    stopped: bool = False
    stopped_round: int | None = None
    accepted_steps: int = 0


def is_try_round(schedule: Schedule, rnd: int) -> bool:
    """True when ``rnd`` is one of the schedule's rounds (every ``interval`` in the window)."""
    return (schedule.start_round <= rnd <= schedule.max_prune_round
            and (rnd - schedule.start_round) % schedule.interval == 0)


def is_active(schedule: Schedule, state: ScheduleState, rnd: int) -> bool:
    """True when the server should try the pruning rule after aggregating round ``rnd``."""
    return not state.stopped and is_try_round(schedule, rnd)


def advance(
    schedule: Schedule, state: ScheduleState, rnd: int, params_before: int, params_after: int
) -> ScheduleState:
    """Return the state after a tried round; a step counts only if the params dropped."""
    if params_after < params_before:
        state = replace(state, stale_rounds=0, accepted_steps=state.accepted_steps + 1)
    else:
        state = replace(state, stale_rounds=state.stale_rounds + 1)
    if state.stale_rounds >= schedule.patience or rnd + schedule.interval > schedule.max_prune_round:
        state = replace(state, stopped=True, stopped_round=rnd)
    return state
