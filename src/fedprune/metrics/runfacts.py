"""What ``fedprune compare`` reads of one run directory: :class:`RunFacts`.

A run directory is what ``fedprune run --out DIR`` (or the Flower app's ``out-dir``) writes:
``rounds.jsonl`` and ``config.json`` from the first round on, ``summary.json`` once it has
finished, and ``latency.json`` where its latency was measured (``fedprune bench-latency
--save`` or ``fedprune reproduce``).  A run that has not finished is read from its last round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprune.rundir import RunDir

__all__ = ["NotARunError", "RunFacts", "read_run"]


class NotARunError(ValueError):
    """A directory given as a run holds no run records."""


@dataclass
class RunFacts:
    """The figures of one run that ``fedprune compare`` shows."""

    path: Path
    label: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # rounds.jsonl
    finished: bool  # summary.json present
    accuracy: float | None
    params_initial: int | None  # None: an unfinished run that pruned in its first round
    params_final: int
    flops_initial: int | None
    flops_final: int
    bytes_total: int
    bytes_total_dense: int | None  # what dense FedAvg would have moved on the same rounds
    client_flops_total: int | None  # the clients' training and validation FLOPs
    client_flops_total_dense: int | None  # dense FedAvg's clients on the same rounds
    engine: str  # "loop" or "flower"
    budget: dict[str, Any] | None  # summary["budget"] (targets, status, met, final, gap, ...)
    latency: dict[str, Any] | None  # latency.json

    @property
    def dense(self) -> bool:
        """A dense FedAvg run (pruning switched off)."""
        return not self.config.get("prune", {}).get("enabled", True)

    @property
    def rounds_done(self) -> int:
        return int(self.rows[-1]["round"])

    @property
    def rounds_planned(self) -> int | None:
        return self.config.get("fed", {}).get("rounds")

    @property
    def flops_cut(self) -> float | None:
        """Fraction of the initial FLOPs removed."""
        if not self.flops_initial:
            return None
        return 1.0 - self.flops_final / self.flops_initial

    @property
    def bytes_vs_dense(self) -> float | None:
        """Bytes over the run as a share of dense FedAvg's on the same rounds."""
        return _ratio(self.bytes_total, self.bytes_total_dense)

    @property
    def client_flops_vs_dense(self) -> float | None:
        """The clients' FLOPs as a share of dense FedAvg's clients' on the same rounds."""
        return _ratio(self.client_flops_total, self.client_flops_total_dense)

    @property
    def budget_status(self) -> str | None:
        return None if self.budget is None else self.budget.get("status")

    @property
    def latency_ms(self) -> float | None:
        """Median latency (ms) of the final model, where it was timed."""
        if not self.latency or not self.latency.get("timed"):
            return None
        return float(self.latency["final"]["median_ms"])

    @property
    def latency_ratio(self) -> float | None:
        """Final model's median latency / the initial dense model's (1 for dense FedAvg)."""
        if not self.latency or self.latency.get("ratio") is None:
            return None
        return float(self.latency["ratio"])


def read_run(run_dir: Path, label: str | None = None) -> RunFacts:
    """Read one run directory (finished or not, in-process loop or Flower).

    Raises:
        NotARunError: ``run_dir`` is not a directory, or holds no ``rounds.jsonl``/
            ``config.json`` (the message names run directories below it, if any).
        ValueError: a record file is malformed.
    """
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        what = "is a file" if rd.path.exists() else "does not exist"
        raise NotARunError(f"{rd.path} {what}: give the directory of a run (the --out of "
                           "'fedprune run')")
    rounds_name, config_name = rd.rounds_file.name, rd.config_file.name
    if not rd.has_rounds():
        below = [r.path for r in RunDir.below(rd.path)]
        hint = ("; it holds runs in subdirectories, e.g. " + ", ".join(map(str, below))
                if below else "; give the directory of a run (the --out of 'fedprune run')")
        started = rd.config_file.is_file()
        raise NotARunError(f"{rd.path} is not a run directory: no {rounds_name}"
                           + (" yet (the run has not finished a round)" if started else hint))
    rows = rd.read_rounds()
    if not rows:
        raise NotARunError(f"{rd.path}: {rounds_name} is empty (the run has not finished a "
                           "round)")
    summary = rd.read_summary() if rd.state() == "finished" else None
    if rd.config_file.is_file():
        config = rd.read_config_dict()
    elif summary is not None and isinstance(summary.get("config"), dict):
        config = summary["config"]
    else:
        raise NotARunError(f"{rd.path} is not a run directory: no {config_name}")
    latency = rd.read_latency()
    try:
        return _facts_from(rd.path, label, rows, summary, config, latency)
    except KeyError as exc:
        raise ValueError(f"{rd.path}: a record lacks the key {exc} (not written by fedprune?)"
                         ) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{rd.path}: a record holds an unexpected value ({exc})") from None


def _facts_from(run_dir: Path, label: str | None, rows: list[dict[str, Any]],
                summary: dict[str, Any] | None, config: dict[str, Any],
                latency: dict[str, Any] | None) -> RunFacts:
    last = rows[-1]
    if summary is not None:
        accuracy = summary.get("accuracy")
        params_initial, params_final = summary["params_initial"], summary["params_final"]
        flops_initial, flops_final = summary["flops_initial"], summary["flops_final"]
        bytes_total = summary["bytes_total"]
        bytes_dense = summary.get("bytes_total_dense")
        flops_clients = summary.get("client_flops_total")
        flops_clients_dense = summary.get("client_flops_total_dense")
        budget = summary.get("budget")
        engine = summary.get("engine", "loop")
    else:  # unfinished: the last round; the initial size is round 1's unless it pruned
        accuracy = next((r["accuracy"] for r in reversed(rows)
                         if r.get("accuracy") is not None), None)
        first_dense = not rows[0].get("pruned")
        params_initial = rows[0]["params"] if first_dense else None
        flops_initial = rows[0]["flops"] if first_dense else None
        params_final, flops_final = last["params"], last["flops"]
        bytes_total = last["bytes_cumulative"]
        bytes_dense = flops_clients_dense = None  # dense FedAvg's totals are in the summary
        flops_clients = (sum(r["client_flops"] for r in rows)
                         if all("client_flops" in r for r in rows) else None)
        budget = _budget_so_far(last)
        engine = "flower" if "failures" in last else "loop"
    if accuracy is not None and isinstance(accuracy, float) and math.isnan(accuracy):
        accuracy = None
    return RunFacts(path=run_dir, label=label or run_dir.resolve().name, config=config,
                    rows=rows, finished=summary is not None, accuracy=accuracy,
                    params_initial=params_initial, params_final=int(params_final),
                    flops_initial=flops_initial, flops_final=int(flops_final),
                    bytes_total=int(bytes_total), bytes_total_dense=bytes_dense,
                    client_flops_total=flops_clients,
                    client_flops_total_dense=flops_clients_dense, engine=engine, budget=budget,
                    latency=latency)


def _ratio(a: int | None, b: int | None) -> float | None:
    return None if a is None or not b else a / b


def _budget_so_far(row: dict[str, Any]) -> dict[str, Any] | None:
    """An unfinished budget run's outcome so far, from its last round's ``budget`` record
    (status and gaps; the params and FLOPs targets follow from the gaps)."""
    rec = row.get("budget")
    if not rec:
        return None
    gap = rec.get("gap") or {}
    targets = {k: round(row[k] / (1.0 + g)) for k, g in gap.items()
               if k in ("params", "flops") and 1.0 + g > 0}
    return {"status": rec.get("status"), "met": all(g <= 1e-12 for g in gap.values()),
            "targets": targets, "final": {k: row[k] for k in targets}, "gap": gap}
