"""The pruning sections of the configuration: the rule or automatic method
(:class:`PruneConfig`, ``[prune]``) and budget mode (:class:`BudgetConfig`, ``[budget]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config_sections import MAX_CLIENTS, MAX_COUNT, MAX_ROUNDS, MAX_WIDTH, _check

#: the names ``prune.method`` accepts: the built-in methods and every method registered with
#: :func:`fedprune.pruners.register` (which adds its name here)
PRUNE_METHODS: set[str] = {"auto", "auto-paired", "boundary", "ratio"}


@dataclass(frozen=True)
class PruneConfig:
    enabled: bool = True  # false = the dense FedAvg baseline, everything else equal
    # k, mode, max_fraction and patience: method "boundary" (and budget mode)
    k: float = 0.75  # boundary half-width in standard deviations of the layer's L1 scores
    mode: Literal["both", "low"] = "low"  # "both" = the paper's rule (also cuts strong filters)
    min_channels: int = 1  # fewest channels a prunable group may keep
    max_fraction: float = 0.2  # most of a group's channels one step may remove
    # The pruning window; 0 = automatic from fed.rounds (config.default_window): at the
    # default 100 rounds, with method "auto" judgements from round 20 every 2 rounds up to
    # round 40; with "auto-paired" candidates from round 30 every 2 up to round 60; with
    # "boundary" and "ratio" tries from round 30 every 2 up to 40; budget mode up to 80.
    start_round: int = 0  # warm-up: cutting an untrained net kills it (paper: round 1)
    max_prune_round: int = 0  # last round pruning may happen (paper: 50 or 100)
    patience: int = 3  # stop after this many tried rounds in a row without a params drop
    # try the rule every N rounds (N-1 recovery rounds between cuts); method "auto": a
    # candidate trains N rounds beside the current model before it is judged
    interval: int = 0
    reinit: bool = False  # true = re-initialise survivors after each cut (the paper's code)
    # "auto" = fedprune's automatic method (fedprune.pruners.nested): until the size is
    # decided each sampled client trains one nested width of the model (its channels of
    # highest L1 norm, widths on multiples of round_to), so the search costs no more than
    # dense training; the clients' validation splits then measure every width against the
    # full one in one query, and the model is cut once to the narrowest width whose measured
    # cost stays within max_accuracy_drop.
    # "auto-paired" = the earlier automatic method (fedprune.pruners.auto): each cut is a
    # candidate the sampled clients train alongside the current model (and the unpruned
    # reference) for prune.interval rounds, then judged by paired validation.
    # "boundary" = the mean +- k*std rule on a fixed schedule (k, mode, max_fraction,
    # patience; the paper's rule with mode "both"); "ratio" = the fixed-ratio L1 baseline:
    # each tried round removes floor(ratio * channels) lowest-L1 filters of every layer
    # (k, mode and max_fraction unused; kept channels rounded to round_to); one-shot when
    # max_prune_round == start_round
    method: str = "auto"  # one of PRUNE_METHODS
    ratio: float = 0.5  # fraction of each layer's filters the ratio method removes per step
    # method "auto": the largest drop in validation accuracy (a fraction: 0.01 = 1 point)
    # that the kept cuts together may cost, as measured by paired federated validation
    max_accuracy_drop: float = 0.01
    # method "auto": a cut is kept only if its cost against the reference plus this many
    # standard errors of it (from the clients' paired differences) fits max_accuracy_drop
    confidence_z: float = 2.0
    step: float = 0.2  # method "auto": share of each layer's filters the first cut removes
    min_step: float = 0.05  # method "auto": a dropped cut halves the step; below this, stop
    # method "auto": a candidate that does not fit yet trains on for another prune.interval
    # rounds and is judged again, up to this many judgements (a fresh cut is still
    # recovering), before it is dropped; 1 = judged once
    judgements: int = 3
    val_clients: int = 50  # clients that validate a candidate (all, if fewer hold a split)
    # methods "auto" and "ratio": channels kept per group on a multiple of this (a group of
    # round_to channels or fewer is left whole): convs whose input channels are a multiple
    # of the CPU's SIMD block run on the fast path of ONNX Runtime and XNNPACK (16 measured
    # fastest on x86 with AVX-512; benchmarks/width_latency.py); 1 = any width
    round_to: int = 16
    # method "auto": before measuring each width, a validating client re-estimates its
    # batch-norm statistics on up to this many of its training samples (forward passes,
    # counted in its compute): a narrow width's own statistics, not those it shares with the
    # wider ones; 0 = measure with the global model's statistics.  Models without batch
    # norm: nothing to re-estimate, nothing sent
    bn_calibration: int = 128
    # method "auto", while it searches: each sampled client holds one width (the full one
    # with probability 1/2, else a narrower one); "batch" (default) = each batch of a
    # client's round trains its width with probability 1/2, else one of the narrower widths
    # inside it, uniformly (ordered dropout per batch, as FjORD), so that the narrow widths
    # learn at every client; "client" = every batch trains the client's width
    ordered_dropout: str = "batch"
    # method "auto": when a width is cut: "pooled" (default) = from the second judgement on,
    # each width's cost and standard error pooled over the last two judgements (weighted by
    # their precision, 1 / se^2), and the narrowest width that fits so is cut at once; "agree" = when two judgements in a row
    # choose the same width
    decide: str = "pooled"
    # methods "auto" and "auto-paired": the share of the validating clients whose paired
    # differences (a width's accuracy against the full one's, on the same samples) are left
    # out at each end before the cost is pooled (rounded up: one of 10, 5 of 50; at least one
    # client kept), so that a minority of clients answering falsely cannot move a decision by
    # more than the honest clients' spread; its standard error is the trimmed mean's
    # (winsorized).  0 = the plain pooled difference
    trim_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check(self.k >= 0, "prune.k", ">= 0", self.k)
        _check(self.method in PRUNE_METHODS, "prune.method",
               "one of " + ", ".join(repr(m) for m in sorted(PRUNE_METHODS)), self.method)
        _check(0 <= self.max_accuracy_drop <= 1, "prune.max_accuracy_drop", "in [0, 1]",
               self.max_accuracy_drop)
        _check(0 <= self.confidence_z <= 10, "prune.confidence_z", "in [0, 10]",
               self.confidence_z)
        _check(0 < self.step < 1, "prune.step", "in (0, 1)", self.step)
        _check(0 < self.min_step <= self.step, "prune.min_step",
               f"in (0, prune.step ({self.step})]", self.min_step)
        _check(1 <= self.judgements <= MAX_ROUNDS, "prune.judgements",
               f"in [1, {MAX_ROUNDS}]", self.judgements)
        _check(2 <= self.val_clients <= MAX_CLIENTS, "prune.val_clients",
               f"in [2, {MAX_CLIENTS}] (the cost's standard error needs two clients)",
               self.val_clients)
        _check(0 < self.ratio < 1, "prune.ratio", "in (0, 1)", self.ratio)
        _check(1 <= self.round_to <= 1024, "prune.round_to", "an integer in [1, 1024]",
               self.round_to)
        _check(0 <= self.bn_calibration <= 1_000_000, "prune.bn_calibration",
               "an integer in [0, 1000000]", self.bn_calibration)
        _check(self.ordered_dropout in ("client", "batch"), "prune.ordered_dropout",
               "'client' or 'batch'", self.ordered_dropout)
        _check(self.decide in ("agree", "pooled"), "prune.decide", "'agree' or 'pooled'",
               self.decide)
        _check(0 <= self.trim_fraction < 0.5, "prune.trim_fraction",
               "in [0, 0.5) (the share of clients left out at each end)", self.trim_fraction)
        _check(self.mode in ("both", "low"), "prune.mode", "'both' or 'low'", self.mode)
        _check(1 <= self.min_channels <= MAX_WIDTH, "prune.min_channels",
               f"in [1, {MAX_WIDTH}]", self.min_channels)
        _check(0 < self.max_fraction <= 1, "prune.max_fraction", "in (0, 1]", self.max_fraction)
        _check(0 <= self.start_round <= MAX_ROUNDS, "prune.start_round",
               f"in [1, {MAX_ROUNDS}], or 0 for automatic", self.start_round)
        _check(0 <= self.max_prune_round <= MAX_ROUNDS, "prune.max_prune_round",
               f"in [1, {MAX_ROUNDS}], or 0 for automatic", self.max_prune_round)
        _check(not (self.start_round and self.max_prune_round)
               or self.max_prune_round >= self.start_round, "prune.max_prune_round",
               f">= prune.start_round ({self.start_round}), or 0 for automatic",
               self.max_prune_round)
        _check(1 <= self.patience <= MAX_ROUNDS, "prune.patience", f"in [1, {MAX_ROUNDS}]",
               self.patience)
        _check(0 <= self.interval <= MAX_ROUNDS, "prune.interval",
               f"in [1, {MAX_ROUNDS}], or 0 for automatic", self.interval)


@dataclass(frozen=True)
class BudgetConfig:
    """Budget mode: prune until the model fits a device budget, guarded by validation.

    Active when any target is set.  Tries happen every ``prune.interval`` rounds from
    ``prune.start_round`` up to ``prune.max_prune_round`` (patience is not used: the
    controller tightens k instead), and stop once every target is met.
    """

    params: int = 0  # most trainable parameters; 0 = no such target
    params_fraction: float = 0.0  # ... as a fraction of the initial model's; 0 = none
    flops: int = 0  # most forward FLOPs per sample; 0 = none
    flops_fraction: float = 0.0  # ... as a fraction of the initial model's; 0 = none
    latency_ms: float = 0.0  # most latency per sample, estimated from latency_table; 0 = none
    latency_table: str = ""  # JSON written by `fedprune bench-latency --table`
    k_min: float = 0.0  # k never goes below this when tightening
    k_max: float = 4.0  # nor above this when relaxing
    tighten: float = 0.7  # k *= tighten after a try that cut nothing while over budget
    relax: float = 1.5  # k *= relax and the step's max fraction halves when the guard fires
    guard: bool = True  # federated-validation accuracy guard (needs data.val_fraction > 0)
    guard_tolerance: float = 0.01  # largest validation-accuracy drop a cut may cause ...
    guard_z: float = 1.0  # ... plus this many standard errors of the two accuracy estimates
    guard_recovery_rounds: int = 2  # rounds a cut model trains before the guard judges it
    guard_clients: int = 10  # clients that report validation accuracy (fewer if fewer exist)
    max_rollbacks: int = 4  # rollbacks in a row before budget mode gives up

    def __post_init__(self) -> None:
        _check(0 <= self.params <= MAX_COUNT, "budget.params", f"in [0, {MAX_COUNT}]",
               self.params)
        _check(0 <= self.params_fraction < 1, "budget.params_fraction", "in [0, 1)",
               self.params_fraction)
        _check(0 <= self.flops <= MAX_COUNT, "budget.flops", f"in [0, {MAX_COUNT}]",
               self.flops)
        _check(0 <= self.flops_fraction < 1, "budget.flops_fraction", "in [0, 1)",
               self.flops_fraction)
        _check(self.latency_ms >= 0, "budget.latency_ms", ">= 0", self.latency_ms)
        _check(not (self.latency_ms > 0 and not self.latency_table), "budget.latency_table",
               "a JSON file from `fedprune bench-latency --table` when budget.latency_ms is set",
               self.latency_table)
        _check(self.k_min >= 0, "budget.k_min", ">= 0", self.k_min)
        _check(self.k_max > self.k_min, "budget.k_max", f"> budget.k_min ({self.k_min})",
               self.k_max)
        _check(0 < self.tighten < 1, "budget.tighten", "in (0, 1)", self.tighten)
        _check(self.relax > 1, "budget.relax", "> 1", self.relax)
        _check(0 <= self.guard_tolerance <= 1, "budget.guard_tolerance", "in [0, 1]",
               self.guard_tolerance)
        _check(0 <= self.guard_z <= 10, "budget.guard_z", "in [0, 10]", self.guard_z)
        _check(0 <= self.guard_recovery_rounds <= MAX_ROUNDS, "budget.guard_recovery_rounds",
               f"in [0, {MAX_ROUNDS}]", self.guard_recovery_rounds)
        _check(1 <= self.guard_clients <= MAX_CLIENTS, "budget.guard_clients",
               f"in [1, {MAX_CLIENTS}]", self.guard_clients)
        _check(1 <= self.max_rollbacks <= MAX_ROUNDS, "budget.max_rollbacks",
               f"in [1, {MAX_ROUNDS}]", self.max_rollbacks)

    @property
    def active(self) -> bool:
        return bool(self.params or self.params_fraction or self.flops or self.flops_fraction
                    or self.latency_ms)
