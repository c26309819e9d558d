"""The experiment configuration: one frozen dataclass tree holding every default.

Experiment files (TOML) and ``--set key=value`` hold overrides only.  Every value is checked
when the tree is built; a bad key or value raises :class:`ConfigError` naming the key and what
is allowed.  The resolved tree is written next to the results (``config.json``).  Reading
files and overrides into the tree (:func:`from_dict`, :func:`load_config`, ...) is
:mod:`fedprune.config_parse`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message says how to fix it."""


DEFAULT_SYNTHETIC_CLIENTS = 20  # data.num_clients = 0 for a dataset split without client ids


def default_window(rounds: int) -> tuple[int, int, int]:
    """fedprune's pruning window for a run of ``rounds`` rounds: (start, last, interval).

    Six tries whatever the length: at 100 rounds rounds 30 to 40 every 2 rounds (warm-up of
    30 %, then a cut every other round so each cut gets a recovery round); shorter runs start
    at 30 % of the rounds and try every 2 rounds while that fits before 60 % of the rounds,
    else every round.  Used where ``prune.start_round``, ``prune.max_prune_round`` or
    ``prune.interval`` is 0 (automatic, the default), and by ``fedprune reproduce``.
    """
    start = max(1, round(0.3 * rounds))
    interval = 2 if start + 10 <= round(0.6 * rounds) or rounds >= 100 else 1
    return start, start + 5 * interval, interval


def default_budget_deadline(rounds: int) -> int:
    """The last try round of budget mode when ``prune.max_prune_round`` is automatic.

    Budget mode keeps trying until the budget is met, so it gets a longer window than the
    rule's six tries: up to 80 % of the rounds (at 100 rounds, round 80), leaving a fifth
    of the run for the final model to recover.
    """
    start, last, _ = default_window(rounds)
    return max(last, round(0.8 * rounds))


def default_auto_deadline(rounds: int) -> int:
    """The last round a candidate cut may start in with ``prune.method = "auto"`` when
    ``prune.max_prune_round`` is automatic: 60 % of the rounds (round 60 of 100), so that
    the final architecture trains for at least 40 % of the run."""
    _, last, _ = default_window(rounds)
    return max(last, round(0.6 * rounds))


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: object) -> bool:
    """True when ``name`` is a device name of the ``device`` setting (syntax only; whether
    the device is there is :func:`fedprune.device.resolve_device`'s question)."""
    return isinstance(name, str) and _DEVICE_RE.match(name) is not None


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is out of range: allowed {allowed}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where its files are, and how it is split over clients (docs/data.md)."""

    # dataset names and on-disk formats (fedprune.data.registry holds the details)
    _NAMES = ("digits", "femnist", "celeba", "fashion-mnist", "mnist", "emnist")
    _FORMATS = ("auto", "leaf", "tff-sqlite", "tff-hdf5", "parquet", "idx", "hub")
    _NATURAL = ("femnist", "celeba")  # datasets whose files name each sample's client

    name: str = "digits"  # embedded offline default: scikit-learn's handwritten digits
    path: str = ""  # local file or folder; "" = the dataset's default (fashion-mnist: Debian's)
    format: str = "auto"  # auto-detected from data.path; "hub" fetches through flwr-datasets
    subset: str = ""  # TFF EMNIST: all | digits_only; EMNIST IDX: byclass, letters, ...
    attribute: str = "Male"  # CelebA's binary label; "json" = the LEAF JSON's own y
    image_dir: str = ""  # LEAF CelebA images; "" = img_align_celeba found next to the JSON
    # clients the training split is divided over (natural: drawn from the files' clients);
    # 0 = automatic: every natural client that holds data.min_client_size samples, or 20 for
    # a split of a dataset without client ids
    num_clients: int = 0
    # "auto" = "natural" for files that carry their own client ids (femnist: writers, celeba:
    # celebrities), "dirichlet" for the others; the resolved value is what config.json shows
    partition: Literal["auto", "dirichlet", "iid", "natural"] = "auto"
    partitioner: Literal["fedprune", "flwr"] = "fedprune"  # whose Dirichlet/IID code splits
    alpha: float = 0.5  # Dirichlet concentration over labels; smaller = more non-IID
    min_client_size: int = 10  # samples every client must get (re-drawn until it holds)
    test_fraction: float = 0.2  # held-out global test split when the files have none
    # per-client validation share of each client's samples: what the automatic pruning
    # method (prune.method = "auto") and budget mode's guard validate on, on the clients;
    # held out from training whatever the method, so that methods compare on equal data
    val_fraction: float = 0.1
    max_test_samples: int = 0  # cap on the global test set (seeded draw); 0 = all of it
    image_size: int = 28  # digits (8x8) are resized to this, so CNN-FEMNIST applies
    cache: Literal["auto", "rebuild", "off"] = "auto"  # prepared-data cache (memory-mapped)
    cache_dir: str = ""  # "" = $FEDPRUNE_CACHE_DIR or ~/.cache/fedprune

    def __post_init__(self) -> None:
        _check(self.name in self._NAMES, "data.name", "one of " + ", ".join(self._NAMES),
               self.name)
        _check(self.format in self._FORMATS, "data.format", "one of " + ", ".join(self._FORMATS),
               self.format)
        _check(self.partition in ("auto", "dirichlet", "iid", "natural"), "data.partition",
               "'auto', 'dirichlet', 'iid' or 'natural'", self.partition)
        if self.partition == "auto":  # resolved here, so every reader sees the real split
            object.__setattr__(self, "partition", "natural" if self.name in self._NATURAL
                               else "dirichlet")
        _check(self.num_clients >= 0, "data.num_clients",
               ">= 1, or 0 for automatic (every natural client; 20 for a synthetic split)",
               self.num_clients)
        if self.num_clients == 0 and self.partition != "natural":
            object.__setattr__(self, "num_clients", DEFAULT_SYNTHETIC_CLIENTS)
        _check(self.partition != "natural" or self.name in self._NATURAL,
               "data.partition", "'dirichlet' or 'iid' for a dataset without client ids "
               "('natural' needs femnist or celeba)", self.partition)
        _check(self.partitioner in ("fedprune", "flwr"), "data.partitioner",
               "'fedprune' or 'flwr'", self.partitioner)
        _check(self.alpha > 0, "data.alpha", "> 0", self.alpha)
        _check(self.min_client_size >= 1, "data.min_client_size", ">= 1", self.min_client_size)
        _check(0 < self.test_fraction < 1, "data.test_fraction", "in (0, 1)", self.test_fraction)
        _check(0 <= self.val_fraction < 1, "data.val_fraction", "in [0, 1)", self.val_fraction)
        _check(self.max_test_samples >= 0, "data.max_test_samples", ">= 0 (0 = all)",
               self.max_test_samples)
        _check(8 <= self.image_size <= 256, "data.image_size", "in [8, 256]", self.image_size)
        _check(self.cache in ("auto", "rebuild", "off"), "data.cache",
               "'auto', 'rebuild' or 'off'", self.cache)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn_femnist"  # a name from fedprune.models.list_models()
    widths: list[int] | None = None  # conv widths; None = the paper's widths

    def __post_init__(self) -> None:
        if self.widths is not None:
            _check(bool(self.widths) and all(isinstance(w, int) and w >= 1 for w in self.widths),
                   "model.widths", "a non-empty list of integers >= 1", self.widths)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["adam", "sgd"] = "adam"  # the paper's choice; fresh per client
    lr: float = 3e-3  # Adam; the paper uses 1e-3 on FEMNIST, 3e-3 converges faster on digits
    momentum: float = 0.0  # SGD only
    local_epochs: int = 5  # passes over the client's data per round (the paper's 5)
    batch_size: int = 32  # the paper's batch size
    # In-process loop only: "batched" trains the sampled clients together (same results as
    # one by one, up to float rounding; plain CNNs only), "per_client" one after another,
    # "auto" batched where the model allows it.
    engine: Literal["auto", "batched", "per_client"] = "auto"
    # Arithmetic of local training (fedprune.device): "fp32"; "bf16" = autocast to bfloat16
    # (convolutions and matrix products; float32 weights, optimizer state and aggregation),
    # faster on CPUs with AVX-512 BF16 or AMX and on recent GPUs (README, "Devices");
    # "fp16" = autocast to float16 with dynamic loss scaling, CUDA only.  Evaluation runs in
    # float32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        _check(self.optimizer in ("adam", "sgd"), "train.optimizer", "'adam' or 'sgd'",
               self.optimizer)
        _check(0 < self.lr <= 10, "train.lr", "in (0, 10]", self.lr)
        _check(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        _check(self.local_epochs >= 1, "train.local_epochs", ">= 1", self.local_epochs)
        _check(self.batch_size >= 1, "train.batch_size", ">= 1", self.batch_size)
        _check(self.precision in ("fp32", "bf16", "fp16"), "train.precision",
               "'fp32', 'bf16' or 'fp16' (CUDA only)", self.precision)


@dataclass(frozen=True)
class FedConfig:
    rounds: int = 100  # communication rounds (paper: 500 on FEMNIST)
    clients_per_round: int = 10  # sampled without replacement each round (seeded)
    eval_every: int = 5  # evaluate the global model every N rounds, and always at the end
    min_replies: int = 1  # fewer valid replies than this: the round is skipped, not averaged
    # Bounded influence of any one client (fedprune.federated.aggregate.robust_aggregate):
    # a reply's update (its weights minus the weights sent) longer than the bound b =
    # clip_factor x the median update norm of the round's replies is scaled down to length
    # b^2 / its length, then the replies are averaged by the aggregator.  3.0 bounds a rogue
    # client's pull to that of three median clients and never clipped an honest reply of
    # the default runs (README, "Aggregation"); 0 = no clipping (with "fedavg": plain
    # FedAvg).  Every model of the round (the automatic method's candidate and reference
    # too) is bounded against the median of its own updates, over the same clients.
    clip_factor: float = 3.0
    # "fedavg" = the sample-weighted mean; "trimmed_mean" = coordinate-wise mean without the
    # trim_fraction largest and smallest values; "median" = coordinate-wise median (both
    # count every client once)
    aggregator: Literal["fedavg", "trimmed_mean", "median"] = "fedavg"
    trim_fraction: float = 0.1  # trimmed_mean: share cut from each end (1 of 10 clients)
    # What the weights travel as, both ways (fedprune.federated.wire): "float32", or
    # "bfloat16" (half the bytes: the server rounds the model it sends, clients round what
    # they send back; both train and aggregate in float32 from the rounded values).
    payload_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "fed.rounds", ">= 1", self.rounds)
        _check(self.clients_per_round >= 1, "fed.clients_per_round", ">= 1",
               self.clients_per_round)
        _check(self.eval_every >= 1, "fed.eval_every", ">= 1", self.eval_every)
        _check(1 <= self.min_replies <= self.clients_per_round, "fed.min_replies",
               f"in [1, fed.clients_per_round ({self.clients_per_round})]", self.min_replies)
        _check(self.clip_factor == 0 or self.clip_factor >= 1, "fed.clip_factor",
               "0 (no clipping) or >= 1 (a bound below the median update would shrink "
               "most honest updates)", self.clip_factor)
        _check(self.aggregator in ("fedavg", "trimmed_mean", "median"), "fed.aggregator",
               "'fedavg', 'trimmed_mean' or 'median'", self.aggregator)
        _check(0 <= self.trim_fraction < 0.5, "fed.trim_fraction",
               "in [0, 0.5) (the share cut from each end)", self.trim_fraction)
        _check(self.payload_dtype in ("float32", "bfloat16"), "fed.payload_dtype",
               "'float32' or 'bfloat16'", self.payload_dtype)


@dataclass(frozen=True)
class PruneConfig:
    enabled: bool = True  # false = the dense FedAvg baseline, everything else equal
    # k, mode, max_fraction and patience: method "boundary" (and budget mode)
    k: float = 0.75  # boundary half-width in standard deviations of the layer's L1 scores
    mode: Literal["both", "low"] = "low"  # "both" = the paper's rule (also cuts strong filters)
    min_channels: int = 1  # fewest channels a prunable group may keep
    max_fraction: float = 0.2  # most of a group's channels one step may remove
    # The pruning window; 0 = automatic from fed.rounds (config.default_window): at the
    # default 100 rounds, from round 30 every 2 rounds, up to round 60 with method "auto",
    # 40 with "boundary" and "ratio", and 80 in budget mode.
    start_round: int = 0  # warm-up: cutting an untrained net kills it (paper: round 1)
    max_prune_round: int = 0  # last round pruning may happen (paper: 50 or 100)
    patience: int = 3  # stop after this many tried rounds in a row without a params drop
    # try the rule every N rounds (N-1 recovery rounds between cuts); method "auto": a
    # candidate trains N rounds beside the current model before it is judged
    interval: int = 0
    reinit: bool = False  # true = re-initialise survivors after each cut (the paper's code)
    # "auto" = fedprune's automatic method: each cut is a candidate the sampled clients train
    # alongside the current model (and the unpruned reference) for prune.interval rounds; then
    # reference and candidate are validated on the clients' validation splits, and the cut is
    # kept while its measured accuracy cost stays within max_accuracy_drop
    # (fedprune.pruners.auto).
    # "boundary" = the mean +- k*std rule on a fixed schedule (k, mode, max_fraction,
    # patience; the paper's rule with mode "both"); "ratio" = the fixed-ratio L1 baseline:
    # each tried round removes floor(ratio * channels) lowest-L1 filters of every layer
    # (k, mode and max_fraction unused); one-shot when max_prune_round == start_round
    method: Literal["auto", "boundary", "ratio"] = "auto"
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

    def __post_init__(self) -> None:
        _check(self.k >= 0, "prune.k", ">= 0", self.k)
        _check(self.method in ("auto", "boundary", "ratio"), "prune.method",
               "'auto', 'boundary' or 'ratio'", self.method)
        _check(0 <= self.max_accuracy_drop <= 1, "prune.max_accuracy_drop", "in [0, 1]",
               self.max_accuracy_drop)
        _check(0 <= self.confidence_z <= 10, "prune.confidence_z", "in [0, 10]",
               self.confidence_z)
        _check(0 < self.step < 1, "prune.step", "in (0, 1)", self.step)
        _check(0 < self.min_step <= self.step, "prune.min_step",
               f"in (0, prune.step ({self.step})]", self.min_step)
        _check(self.judgements >= 1, "prune.judgements", ">= 1", self.judgements)
        _check(self.val_clients >= 2, "prune.val_clients",
               ">= 2 (the cost's standard error needs two clients)", self.val_clients)
        _check(0 < self.ratio < 1, "prune.ratio", "in (0, 1)", self.ratio)
        _check(self.mode in ("both", "low"), "prune.mode", "'both' or 'low'", self.mode)
        _check(self.min_channels >= 1, "prune.min_channels", ">= 1", self.min_channels)
        _check(0 < self.max_fraction <= 1, "prune.max_fraction", "in (0, 1]", self.max_fraction)
        _check(self.start_round >= 0, "prune.start_round", ">= 1, or 0 for automatic",
               self.start_round)
        _check(self.max_prune_round >= 0, "prune.max_prune_round", ">= 1, or 0 for automatic",
               self.max_prune_round)
        _check(not (self.start_round and self.max_prune_round)
               or self.max_prune_round >= self.start_round, "prune.max_prune_round",
               f">= prune.start_round ({self.start_round}), or 0 for automatic",
               self.max_prune_round)
        _check(self.patience >= 1, "prune.patience", ">= 1", self.patience)
        _check(self.interval >= 0, "prune.interval", ">= 1, or 0 for automatic", self.interval)


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
        _check(self.params >= 0, "budget.params", ">= 0", self.params)
        _check(0 <= self.params_fraction < 1, "budget.params_fraction", "in [0, 1)",
               self.params_fraction)
        _check(self.flops >= 0, "budget.flops", ">= 0", self.flops)
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
        _check(self.guard_recovery_rounds >= 0, "budget.guard_recovery_rounds", ">= 0",
               self.guard_recovery_rounds)
        _check(self.guard_clients >= 1, "budget.guard_clients", ">= 1", self.guard_clients)
        _check(self.max_rollbacks >= 1, "budget.max_rollbacks", ">= 1", self.max_rollbacks)

    @property
    def active(self) -> bool:
        return bool(self.params or self.params_fraction or self.flops or self.flops_fraction
                    or self.latency_ms)


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
        _check(self.threads >= 0, "threads", ">= 0", self.threads)
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


# The parser lives in its own module; its functions are part of this module's interface.
# (``fedprune/__init__`` imports this module first, so the names above exist when
# ``config_parse`` imports them.)
from .config_parse import from_dict, load_config, merge, parse_overrides  # noqa: E402

__all__ = [
    "BudgetConfig", "ConfigError", "DataConfig", "ExperimentConfig", "FedConfig",
    "ModelConfig", "PruneConfig", "TrainConfig", "default_auto_deadline",
    "default_budget_deadline", "default_window",
    "from_dict", "load_config", "merge", "parse_overrides",
]
