"""Partitioners: pure functions from labels to per-client index arrays (seeded)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

MAX_DRAWS = 1000  # bounded retries for the minimum-size condition


def dirichlet_partition(
    targets: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split sample indices over clients with label proportions drawn from Dirichlet(alpha).

    For every class, the class's samples are shuffled and divided over the clients in
    proportions drawn from ``Dirichlet(alpha * 1)``.  The draw is repeated (at most
    ``MAX_DRAWS`` times) until every client holds at least ``min_size`` samples.
    """
    targets = np.asarray(targets)
    n = targets.size
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give {num_clients} clients at least {min_size} samples each from {n} "
            "samples: lower data.num_clients or data.min_client_size"
        )
    classes = np.unique(targets)
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(targets == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * idx.size).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(p.size for p in out) >= min_size:
            return out
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw in {MAX_DRAWS} gave every one of {num_clients} "
        f"clients {min_size} samples: raise data.alpha or lower data.min_client_size"
    )


def iid_partition(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``n`` indices and deal them into ``num_clients`` near-equal parts."""
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients must be in [1, {n}], got {num_clients}")
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def partition_report(parts: list[np.ndarray], targets: np.ndarray) -> dict[str, float]:
    """Sizes and label spread of a partition, for logs."""
    sizes = np.array([p.size for p in parts])
    labels = [np.unique(np.asarray(targets)[p]).size for p in parts]
    return {"clients": len(parts), "min_size": int(sizes.min()), "max_size": int(sizes.max()),
            "mean_size": float(sizes.mean()), "mean_labels_per_client": float(np.mean(labels))}
