"""From a dataset name and the data config to per-client tensors and a global test set."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from .digits import load_digits_arrays
from .partition import dirichlet_partition, iid_partition, partition_report

logger = logging.getLogger(__name__)

DATASETS = ("digits",)


@dataclass(frozen=True)
class ClientData:
    """One client's training samples as ready tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class FederatedData:
    clients: list[ClientData]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_federated(cfg: DataConfig, seed: int) -> FederatedData:
    """Load ``cfg.name``, hold out a stratified test split, and partition the rest."""
    if cfg.name == "digits":
        x, y = load_digits_arrays(cfg.image_size)
    else:
        raise ConfigError(f"data.name = {cfg.name!r} is unknown: choose one of {list(DATASETS)}")
    rng = np.random.default_rng([seed, 1])  # a stream of its own: data split, not training
    y_np = y.numpy()
    train_idx, test_idx = _stratified_split(y_np, cfg.test_fraction, rng)
    train_y = y_np[train_idx]
    if cfg.partition == "dirichlet":
        parts = dirichlet_partition(train_y, cfg.num_clients, cfg.alpha, rng, cfg.min_client_size)
    else:
        parts = iid_partition(train_y.size, cfg.num_clients, rng)
    logger.info("partition of %s: %s", cfg.name, partition_report(parts, train_y))
    clients = []
    for p in parts:
        sel = torch.from_numpy(train_idx[p])
        clients.append(ClientData(x[sel].contiguous(), y[sel].contiguous()))
    sel = torch.from_numpy(test_idx)
    return FederatedData(
        clients=clients,
        test_x=x[sel].contiguous(),
        test_y=y[sel].contiguous(),
        num_classes=int(y.max().item()) + 1,
        input_shape=tuple(x.shape[1:]),  # type: ignore[arg-type]
    )
