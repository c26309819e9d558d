"""The whole experiment configuration: one frozen tree of the sections, with the checks that
span sections and the pruning window resolved from ``fed.rounds``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .config_pruning import BudgetConfig, PruneConfig
from .config_sections import (
    MAX_THREADS,
    DataConfig,
    FedConfig,
    ModelConfig,
    TrainConfig,
    _check,
    check_device_name,
    default_auto_deadline,
    default_budget_deadline,
    default_nested_window,
    default_window,
)


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = 0  # seeds data split, model init, client sampling and local shuffling
    # torch intra-op threads.  1 by default: a run's figures then do not depend on the
    # machine or its load (more threads than idle cores slow training down several-fold on
    # a busy machine), and every figure in the docs was measured so.  0 = torch's default
    # (one per core).
    threads: int = 1
    # Where local training and evaluation run (fedprune.device): "cpu"; "cuda", "cuda:N";
    # "mps"; "auto" = CUDA where this machine's torch sees a GPU, else the CPU.  "cpu" by
    # default, so that a run's figures do not depend on the hardware present.  The server's
    # pruning and aggregation stay on the CPU in float32.
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)", self.seed)
        self._resolve_window()
        if self.budget.active:
            if self.prune.method == "auto":  # budget mode's cuts are the boundary rule's
                object.__setattr__(self, "prune",
                                   dataclasses.replace(self.prune, method="boundary"))
            _check(self.prune.enabled and self.prune.method == "boundary", "budget",
                   "only with prune.enabled = true and prune.method = 'auto' or 'boundary' "
                   "(budget mode adapts the boundary rule's k)",
                   f"prune.enabled={self.prune.enabled}, prune.method={self.prune.method!r}")
            _check(not (self.budget.guard and self.data.val_fraction == 0), "budget.guard",
                   "false, or set data.val_fraction > 0 (e.g. 0.1) so that clients hold a "
                   "validation split for the guard", self.budget.guard)
        _check(0 <= self.threads <= MAX_THREADS, "threads",
               f"in [0, {MAX_THREADS}] (0 = one per core)", self.threads)
        _check(check_device_name(self.device), "device",
               "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", self.device)
        _check(not self.data.num_clients or self.fed.clients_per_round <= self.data.num_clients,
               "fed.clients_per_round", f"<= data.num_clients ({self.data.num_clients})",
               self.fed.clients_per_round)

    def _resolve_window(self) -> None:
        """Fill the automatic (0) pruning-window keys from fed.rounds; check explicit ones."""
        p, rounds = self.prune, self.fed.rounds
        start, last, interval = default_window(rounds)
        if self.budget.active:
            last = default_budget_deadline(rounds)
        elif p.method == "auto":
            start, last, interval = default_nested_window(rounds)
        elif p.method == "auto-paired":
            last = default_auto_deadline(rounds)
        start = p.start_round or (min(start, p.max_prune_round) if p.max_prune_round
                                  else start)
        resolved = dataclasses.replace(p, start_round=start,
                                       max_prune_round=p.max_prune_round or max(last, start),
                                       interval=p.interval or interval)
        object.__setattr__(self, "prune", resolved)
        if resolved.enabled:
            _check(resolved.start_round <= rounds, "prune.start_round",
                   f"<= fed.rounds ({rounds}), or 0 for automatic: pruning would never run "
                   "(set prune.enabled = false for dense FedAvg)", resolved.start_round)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
