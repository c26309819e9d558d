"""The configuration's building blocks: :class:`ConfigError`, the checks and automatic
defaults every section uses, and the sections of data, model, local training and the
federation.  The pruning sections are :mod:`fedprune.config_pruning`, the tree of them all
:mod:`fedprune.config_tree`; :mod:`fedprune.config` is the public face of them.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message says how to fix it."""


DEFAULT_SYNTHETIC_CLIENTS = 20  # data.num_clients = 0 for a dataset split without client ids

# Limits of every setting (docs/settings.md, "Limits"): far beyond any real run, they keep a
# hostile or mistyped value from reaching the code that runs (an overflow, a 10 MB path in
# config.json, a recursion).  Each is checked in one place: the sizes below by the sections'
# __post_init__ (:func:`_check`), strings, lists and nesting where values are read
# (:func:`fedprune.config_parse._coerce`, :func:`fedprune.config_parse.check_nesting`).
MAX_ROUNDS = 1_000_000  # fed.rounds, and every setting counted in rounds
MAX_CLIENTS = 10_000_000  # data.num_clients, fed.clients_per_round and other client counts
MAX_EPOCHS = 10_000  # train.local_epochs
MAX_BATCH = 1_000_000  # train.batch_size
MAX_SAMPLES = 1_000_000_000  # data.min_client_size, data.max_test_samples
MAX_THREADS = 4096  # threads
MAX_WIDTH = 1_000_000  # each of model.widths, prune.min_channels
MAX_COUNT = 10**18  # budget.params, budget.flops (per sample)
MAX_TEXT = 4096  # characters of a string setting (paths, names): Linux's PATH_MAX
MAX_ITEMS = 1024  # items of a list setting (model.widths)
MAX_DEPTH = 8  # tables and lists inside each other (a setting needs three: section, key, list)
SHOWN_CHARS = 60  # an error message quotes at most this much of a value, then its length


class _Short(reprlib.Repr):
    """``repr`` of a table or list, a few levels and items deep (any depth is safe)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 12
        self.maxstring = self.maxother = self.maxlong = SHOWN_CHARS

    def repr_int(self, x: int, level: int) -> str:
        return shown(x)

    def repr_str(self, x: str, level: int) -> str:
        return shown(x)


_SHORT = _Short()


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """What an error message quotes of ``value``: its ``repr``, or for a long value the
    first ``limit`` characters of it and its length, so that a message stays one short line
    whatever the value (a 10 MB string, an integer of 5000 digits, lists 5000 deep)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
        if len(text) <= limit:
            return text
        return f"{text[:limit]}... ({len(text.lstrip('-'))} digits)"
    if isinstance(value, (dict, list, tuple, set)):
        text = _SHORT.repr(value)
        if len(text) <= limit:
            return text
        return f"{text[:limit]}... ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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


def default_nested_window(rounds: int) -> tuple[int, int, int]:
    """The automatic method's judgements (``prune.method = "auto"``) when the window is
    automatic: (first, last, interval).  From 20 % of the rounds (round 20 of 100: channel
    structure settles early in training), every 2 rounds (every round in short runs), up to
    40 % (round 40 of 100): the size is decided early, so most rounds train the small model.
    """
    start = max(1, round(0.2 * rounds))
    _, _, interval = default_window(rounds)
    return start, max(start, round(0.4 * rounds)), interval


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: object) -> bool:
    """True when ``name`` is a device name of the ``device`` setting (syntax only; whether
    the device is there is :func:`fedprune.device.resolve_device`'s question)."""
    return isinstance(name, str) and _DEVICE_RE.match(name) is not None


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {shown(value)} is out of range: allowed {allowed}")


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
        _check(0 <= self.num_clients <= MAX_CLIENTS, "data.num_clients",
               f"in [1, {MAX_CLIENTS}], or 0 for automatic (every natural client; 20 for a "
               "synthetic split)", self.num_clients)
        if self.num_clients == 0 and self.partition != "natural":
            object.__setattr__(self, "num_clients", DEFAULT_SYNTHETIC_CLIENTS)
        _check(self.partition != "natural" or self.name in self._NATURAL,
               "data.partition", "'dirichlet' or 'iid' for a dataset without client ids "
               "('natural' needs femnist or celeba)", self.partition)
        _check(self.partitioner in ("fedprune", "flwr"), "data.partitioner",
               "'fedprune' or 'flwr'", self.partitioner)
        _check(self.alpha > 0, "data.alpha", "> 0", self.alpha)
        _check(1 <= self.min_client_size <= MAX_SAMPLES, "data.min_client_size",
               f"in [1, {MAX_SAMPLES}]", self.min_client_size)
        _check(0 < self.test_fraction < 1, "data.test_fraction", "in (0, 1)", self.test_fraction)
        _check(0 <= self.val_fraction < 1, "data.val_fraction", "in [0, 1)", self.val_fraction)
        _check(0 <= self.max_test_samples <= MAX_SAMPLES, "data.max_test_samples",
               f"in [0, {MAX_SAMPLES}] (0 = all)", self.max_test_samples)
        _check(8 <= self.image_size <= 256, "data.image_size", "in [8, 256]", self.image_size)
        _check(self.cache in ("auto", "rebuild", "off"), "data.cache",
               "'auto', 'rebuild' or 'off'", self.cache)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn_femnist"  # a name from fedprune.models.list_models()
    widths: list[int] | None = None  # conv widths; None = the paper's widths

    def __post_init__(self) -> None:
        if self.widths is not None:
            _check(bool(self.widths) and all(isinstance(w, int) and 1 <= w <= MAX_WIDTH
                                             for w in self.widths),
                   "model.widths", f"a non-empty list of integers in [1, {MAX_WIDTH}]",
                   self.widths)


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
        _check(1 <= self.local_epochs <= MAX_EPOCHS, "train.local_epochs",
               f"in [1, {MAX_EPOCHS}]", self.local_epochs)
        _check(1 <= self.batch_size <= MAX_BATCH, "train.batch_size", f"in [1, {MAX_BATCH}]",
               self.batch_size)
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
    # b^2 / its length, then the replies are averaged by the aggregator.  2.0 bounds a rogue
    # client's pull to that of two median clients (a sign flip that slips past the direction
    # screen costs less than at 3.0, the earlier default) and clipped 37 of the 15,000
    # honest replies of the auto suite's dense runs (docs/aggregation.md); 0 = no clipping
    # (with "fedavg": plain FedAvg).  Every model of the round (the automatic method's
    # candidate and reference too) is bounded against the median of its own updates, over
    # the same clients.
    clip_factor: float = 2.0
    # "fedavg" = the sample-weighted mean; "trimmed_mean" = coordinate-wise mean without the
    # trim_fraction largest and smallest values; "median" = coordinate-wise median (both
    # count every client once)
    aggregator: Literal["fedavg", "trimmed_mean", "median"] = "fedavg"
    trim_fraction: float = 0.1  # trimmed_mean: share cut from each end (1 of 10 clients)
    # After the bound, a reply whose update has a cosine below min_cosine with the round's
    # coordinate-wise median update is left out (fedprune.federated.aggregate.
    # screen_directions): a sign-flipped update pulls the model back at any scale the bound
    # lets through, and the median points where most clients do.  0 (default) = leave out
    # the updates pointing against it; -1 = off (with clip_factor 0 and "fedavg": plain
    # FedAvg).  Judged among 3 or more replies.
    min_cosine: float = 0.0
    # What the weights travel as, both ways (fedprune.federated.wire): "float32", or
    # "bfloat16" (half the bytes: the server rounds the model it sends, clients round what
    # they send back; both train and aggregate in float32 from the rounded values).
    payload_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _check(1 <= self.rounds <= MAX_ROUNDS, "fed.rounds", f"in [1, {MAX_ROUNDS}]",
               self.rounds)
        _check(1 <= self.clients_per_round <= MAX_CLIENTS, "fed.clients_per_round",
               f"in [1, {MAX_CLIENTS}]", self.clients_per_round)
        _check(1 <= self.eval_every <= MAX_ROUNDS, "fed.eval_every", f"in [1, {MAX_ROUNDS}]",
               self.eval_every)
        _check(1 <= self.min_replies <= self.clients_per_round, "fed.min_replies",
               f"in [1, fed.clients_per_round ({self.clients_per_round})]", self.min_replies)
        _check(self.clip_factor == 0 or self.clip_factor >= 1, "fed.clip_factor",
               "0 (no clipping) or >= 1 (a bound below the median update would shrink "
               "most honest updates)", self.clip_factor)
        _check(self.aggregator in ("fedavg", "trimmed_mean", "median"), "fed.aggregator",
               "'fedavg', 'trimmed_mean' or 'median'", self.aggregator)
        _check(0 <= self.trim_fraction < 0.5, "fed.trim_fraction",
               "in [0, 0.5) (the share cut from each end)", self.trim_fraction)
        _check(-1 <= self.min_cosine < 1, "fed.min_cosine",
               "in [-1, 1) (-1: no update is left out for its direction)", self.min_cosine)
        _check(self.payload_dtype in ("float32", "bfloat16"), "fed.payload_dtype",
               "'float32' or 'bfloat16'", self.payload_dtype)
