"""Progress of a suite: the runner's events and an estimate of the time left.

:func:`~fedprune.reproduce.runner.run_plan` reports through a callback that receives
:class:`RunEvent` objects: ``begin`` (the runs of this invocation, in the order they are
started), ``start`` and ``done`` for every run, and ``tick`` now and then while runs are going
on (to refresh a display).  With ``jobs`` workers, several runs are under way at once; a run's
``start`` is sent when it is handed to a free worker.

:class:`TimeLeft` turns those events into an estimate of the wall time left.  Each run has a
*cost*, its expected share of the work (the setting's cost x the method's, times the fraction
of its rounds still to run; latency-only work counts 0).  Finished runs give the seconds per
unit of cost; the runs under way and those not started yet are then laid out over the workers
as the runner hands them out (in order, each to the first free worker), and the estimate is
when the last one ends.  Nothing here reads a clock: the caller passes the times.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    """One run of an invocation, as the progress callback sees it."""

    run: str  # run folder relative to the suite's OUT, e.g. digits/cnn_femnist/dense/seed0
    state: str  # fresh | resume | done (trained already: its latency only)
    cost: float  # expected share of the work (0 for latency only)


@dataclass(frozen=True)
class RunEvent:
    """What :func:`run_plan` tells its progress callback."""

    kind: str  # begin | start | done | tick
    tasks: tuple[TaskInfo, ...]  # every run of this invocation, in the order they are started
    jobs: int  # runs in parallel
    task: TaskInfo | None = None  # the run that started or ended (start, done)
    result: dict[str, Any] | None = None  # done: ok, seconds, error (see runner.execute)
    states: dict[str, int] = field(default_factory=dict)  # begin: state -> count in the plan


class TimeLeft:
    """Cost-weighted estimate of the wall time a suite's invocation has left."""

    def __init__(self, tasks: Sequence[TaskInfo], jobs: int) -> None:
        if jobs < 1:
            raise ValueError("jobs must be >= 1")
        self.tasks = list(tasks)
        self.jobs = jobs
        self._by_run = {t.run: t for t in self.tasks}
        if len(self._by_run) != len(self.tasks):
            raise ValueError("two tasks of one invocation share a run folder")
        self.running: dict[str, float] = {}  # run -> the time it started
        self.finished: dict[str, tuple[float, bool]] = {}  # run -> (seconds, ok)

    def start(self, run: str, now: float) -> None:
        self._task(run)
        self.running[run] = now

    def finish(self, run: str, seconds: float, ok: bool) -> None:
        self._task(run)
        self.running.pop(run, None)
        self.finished[run] = (float(seconds), bool(ok))

    def _task(self, run: str) -> TaskInfo:
        if run not in self._by_run:
            raise KeyError(f"{run} is not a task of this invocation")
        return self._by_run[run]

    @property
    def done(self) -> int:
        return len(self.finished)

    @property
    def total(self) -> int:
        return len(self.tasks)

    def seconds_per_cost(self) -> float | None:
        """Seconds per unit of cost over the runs that trained and succeeded (None: none yet)."""
        pairs = [(self._by_run[r].cost, s) for r, (s, ok) in self.finished.items()
                 if ok and self._by_run[r].cost > 0]
        if not pairs:
            return None
        return sum(s for _, s in pairs) / sum(c for c, _ in pairs)

    def _latency_only_seconds(self) -> float:
        xs = [s for r, (s, ok) in self.finished.items() if ok and self._by_run[r].cost <= 0]
        return statistics.fmean(xs) if xs else 0.0

    def seconds_left(self, now: float) -> float | None:
        """Wall seconds until every run has ended; None while there is nothing to go by."""
        rate = self.seconds_per_cost()
        left = [t for t in self.tasks if t.run not in self.finished]
        if not left:
            return 0.0
        if rate is None and any(t.cost > 0 for t in left):
            return None
        lat = self._latency_only_seconds()

        def expected(t: TaskInfo) -> float:
            return t.cost * rate if t.cost > 0 and rate is not None else lat

        # when each worker is free again: the runs under way, then idle workers
        free = [max(0.0, expected(self._by_run[r]) - (now - t0))
                for r, t0 in self.running.items()]
        free += [0.0] * max(0, self.jobs - len(free))
        heapq.heapify(free)
        end = max(free)
        for t in left:
            if t.run in self.running:
                continue
            ends = heapq.heappop(free) + expected(t)
            end = max(end, ends)
            heapq.heappush(free, ends)
        return end


def format_left(seconds: float | None) -> str:
    """``about 9 min left`` and the like (``time left not known yet`` for None)."""
    if seconds is None:
        return "time left not known yet"
    if seconds < 60:
        return "less than a minute left"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"
