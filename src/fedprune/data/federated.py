"""From a dataset name and the data config to per-client tensors and a global test set.

``digits`` is built in memory as float tensors (unchanged).  Every other dataset goes
through the prepared cache (:mod:`fedprune.data.cache`): clients hold uint8 tensors that are
views into the memory-mapped images whenever their samples are contiguous (natural clients
of a source with its own test split), or into one shared gathered copy otherwise; never a
copy per client.  Batches become float32 in ``train_local``/``evaluate`` through the data's
``transform`` (:mod:`fedprune.data.transform`), which the engines pass beside the tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import seeds
from ..config import ConfigError, DataConfig
from .cache import Prepared, prepare
from .digits import load_digits_arrays
from .errors import DataError
from .partition import (
    dirichlet_partition,
    flwr_partition,
    holdout_per_client,
    iid_partition,
    natural_partition,
    partition_report,
    split_validation,
)
from .registry import NAMES, SPECS
from .source import resolve_source
from .transform import PixelTransform

logger = logging.getLogger(__name__)

DATASETS = NAMES


@dataclass(frozen=True)
class ClientData:
    """One client's training samples (and optional validation samples) as tensors."""

    x: torch.Tensor
    y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    name: str = ""  # natural client id (writer, celebrity), or "" for synthetic partitions

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class FederatedData:
    clients: list[ClientData]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    info: dict[str, Any] = field(default_factory=dict)  # dataset, source, cache, partition
    # uint8 pixels -> model inputs, for every x above; None: float tensors (digits)
    transform: PixelTransform | None = None


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(fraction * idx.size)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _partition(cfg: DataConfig, labels: np.ndarray, rng: np.random.Generator,
               seed: int) -> list[np.ndarray]:
    """Dirichlet or IID positions into ``labels`` (fedprune's or flwr-datasets' partitioner)."""
    if cfg.partitioner == "flwr":
        return flwr_partition(cfg.partition, labels, cfg.num_clients, cfg.alpha,
                              cfg.min_client_size, int(rng.integers(2**31)))
    if cfg.partition == "dirichlet":
        return dirichlet_partition(labels, cfg.num_clients, cfg.alpha, rng, cfg.min_client_size)
    return iid_partition(labels.size, cfg.num_clients, rng)


def _digits(cfg: DataConfig, seed: int) -> FederatedData:
    x, y = load_digits_arrays(cfg.image_size)
    rng = seeds.data_split(seed)
    y_np = y.numpy()
    train_idx, test_idx = _stratified_split(y_np, cfg.test_fraction, rng)
    train_y = y_np[train_idx]
    parts = _partition(cfg, train_y, rng, seed)
    report = partition_report(parts, train_y)
    logger.info("partition of %s: %s", cfg.name, report)
    vrng = seeds.validation_split(seed)
    clients = []
    for p in parts:
        tr, va = split_validation(train_idx[p], cfg.val_fraction, vrng)
        sel = torch.from_numpy(tr)
        vx = vy = None
        if va.size:
            vsel = torch.from_numpy(va)
            vx, vy = x[vsel].contiguous(), y[vsel].contiguous()
        clients.append(ClientData(x[sel].contiguous(), y[sel].contiguous(), vx, vy))
    sel = torch.from_numpy(test_idx)
    return FederatedData(
        clients=clients,
        test_x=x[sel].contiguous(),
        test_y=y[sel].contiguous(),
        num_classes=int(y.max().item()) + 1,
        input_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
        info={"dataset": "digits", "source": "scikit-learn (embedded)", "partition": report},
    )


def _is_range(idx: np.ndarray) -> bool:
    return idx.size > 0 and int(idx[-1]) - int(idx[0]) + 1 == idx.size and \
        bool(np.all(np.diff(idx) == 1))


def _take(images: torch.Tensor, blocks: list[np.ndarray]) -> list[torch.Tensor]:
    """Tensors for index blocks: views when every block is a contiguous range, else views
    into one gathered copy of all blocks together (one copy in all, not one per client)."""
    if all(_is_range(b) or b.size == 0 for b in blocks):
        return [images[int(b[0]) : int(b[-1]) + 1] if b.size else images[:0] for b in blocks]
    order = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    buf = images[torch.from_numpy(order.astype(np.int64))]
    out, start = [], 0
    for b in blocks:
        out.append(buf[start : start + b.size])
        start += b.size
    return out


@dataclass
class Plan:
    """Index blocks into a prepared dataset: what each client, and the test set, holds."""

    train: list[np.ndarray]  # per client, sorted sample indices
    val: list[np.ndarray]  # per client, possibly empty
    test: np.ndarray
    names: list[str]  # natural client ids, or [] for synthetic partitions
    report: dict[str, float]


def plan(prep: Prepared, cfg: DataConfig, seed: int) -> Plan:
    """Hold out a test split if the files have none, partition, split validation (seeded)."""
    meta = prep.meta
    spec = SPECS[cfg.name]
    rng = seeds.data_split(seed)
    labels, splits = prep.labels, prep.splits
    train_idx = np.flatnonzero(splits == 0)
    test_idx = np.flatnonzero(splits == 1)
    if test_idx.size == 0:  # no test split in the files: hold one out
        if cfg.partition == "natural":
            tr, te = holdout_per_client(prep.clients[train_idx], cfg.test_fraction, rng)
        else:
            tr, te = _stratified_split(labels[train_idx], cfg.test_fraction, rng)
        train_idx, test_idx = train_idx[tr], train_idx[te]
    names: list[str] = []
    if cfg.partition == "natural":
        if not meta.get("natural"):
            raise ConfigError(f"data.partition = 'natural' needs client ids, which {cfg.name} "
                              "does not have: use 'dirichlet' or 'iid'")
        parts, chosen = natural_partition(prep.clients[train_idx], cfg.num_clients, rng,
                                          cfg.min_client_size, client_key=spec.client_key)
        names = [prep.client_names[c] for c in chosen]
    else:
        parts = _partition(cfg, labels[train_idx], rng, seed)
    report = partition_report(parts, labels[train_idx])
    logger.info("partition of %s: %s", cfg.name, report)
    vrng = seeds.validation_split(seed)
    train_blocks, val_blocks = [], []
    for p in parts:
        tr, va = split_validation(train_idx[p], cfg.val_fraction, vrng)
        train_blocks.append(tr)
        val_blocks.append(va)
    if cfg.max_test_samples and test_idx.size > cfg.max_test_samples:
        trng = seeds.test_subset(seed)
        test_idx = np.sort(trng.choice(test_idx, size=cfg.max_test_samples, replace=False))
    return Plan(train_blocks, val_blocks, test_idx, names, report)


def federate(prep: Prepared, cfg: DataConfig, seed: int) -> FederatedData:
    """Clients, per-client validation and a global test set, as views where possible."""
    meta = prep.meta
    p = plan(prep, cfg, seed)
    images = torch.from_numpy(prep.images)
    labels_t = torch.from_numpy(prep.labels)
    xs = _take(images, p.train + [v for v in p.val if v.size])
    vx_iter = iter(xs[len(p.train):])
    clients = []
    for i, (tr, va) in enumerate(zip(p.train, p.val, strict=True)):
        vx = vy = None
        if va.size:
            vx = next(vx_iter)
            vy = labels_t[torch.from_numpy(va)]
        clients.append(ClientData(xs[i], labels_t[torch.from_numpy(tr)], vx, vy,
                                  p.names[i] if p.names else ""))
    (test_x,) = _take(images, [p.test])
    return FederatedData(
        clients=clients,
        test_x=test_x,
        test_y=labels_t[torch.from_numpy(p.test)],
        num_classes=int(meta["num_classes"]),
        input_shape=tuple(int(s) for s in meta["shape"]),  # type: ignore[arg-type]
        info={"dataset": cfg.name, "source": meta["source"]["path"], "format": meta["format"],
              "cache": str(prep.directory) if prep.directory else None,
              "cache_reused": prep.reused, "prepare_seconds": round(prep.seconds, 3),
              "test_samples": int(p.test.size), "partition": p.report},
        transform=PixelTransform.of(meta["mean"], meta["std"]),
    )


def load_prepared(cfg: DataConfig) -> Prepared:
    """Open (or build) the prepared cache for ``cfg``."""
    source = resolve_source(cfg)
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
    return prepare(source, root, cfg.cache)


def load_federated(cfg: DataConfig, seed: int) -> FederatedData:
    """Load ``cfg.name``, hold out a test split if the files have none, and partition the rest."""
    if cfg.name not in SPECS:  # DataConfig checks this too; kept for hand-built configs
        raise ConfigError(f"data.name = {cfg.name!r} is unknown: choose one of {list(DATASETS)}")
    if cfg.name == "digits":
        if cfg.partition == "natural":
            raise ConfigError("data.partition = 'natural' needs client ids, which digits does "
                              "not have: use 'dirichlet' or 'iid'")
        return _digits(cfg, seed)
    try:
        prep = load_prepared(cfg)
    except MemoryError:
        raise DataError(cfg.path or cfg.name, "ran out of memory while preparing") from None
    return federate(prep, cfg, seed)
