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


def natural_partition(
    clients: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    min_size: int = 1,
    names: list[str] | None = None,
    client_key: str = "client",
) -> tuple[list[np.ndarray], list[int]]:
    """One part per natural client (writer, celebrity): positions into ``clients``.

    ``clients`` holds each sample's client index.  Clients with fewer than ``min_size``
    samples are dropped; of the rest, ``num_clients`` are drawn (seeded, without replacement)
    and returned in index order, or all of them when ``num_clients`` is 0.  Returns
    ``(parts, chosen client indices)``.
    """
    clients = np.asarray(clients)
    order = np.argsort(clients, kind="stable")
    ids, starts, counts = np.unique(clients[order], return_index=True, return_counts=True)
    eligible = np.flatnonzero(counts >= min_size)
    if eligible.size == 0:
        raise ValueError(
            f"no {client_key} holds at least data.min_client_size = {min_size} training samples "
            f"({ids.size} {client_key}s in all, the largest with "
            f"{int(counts.max()) if counts.size else 0}): lower data.min_client_size")
    num_clients = num_clients or int(eligible.size)
    if num_clients > eligible.size:
        dropped = ids.size - eligible.size
        raise ValueError(
            f"data.num_clients = {num_clients} but only {eligible.size} {client_key}s hold at "
            f"least data.min_client_size = {min_size} training samples ({ids.size} in all, "
            f"{dropped} smaller): lower data.num_clients or data.min_client_size"
        )
    chosen = np.sort(rng.choice(eligible, size=num_clients, replace=False)) \
        if num_clients < eligible.size else eligible
    parts = [np.sort(order[starts[i] : starts[i] + counts[i]]) for i in chosen]
    return parts, [int(ids[i]) for i in chosen]


def holdout_per_client(
    clients: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n)`` of each client's ``n`` samples (LEAF's sample split).

    Every client keeps at least one training sample.  Returns sorted positions
    ``(train, test)`` into ``clients``.
    """
    clients = np.asarray(clients)
    order = np.argsort(clients, kind="stable")
    _, starts, counts = np.unique(clients[order], return_index=True, return_counts=True)
    test = []
    for s, n in zip(starts, counts, strict=True):
        k = min(round(fraction * n), n - 1)
        if k > 0:
            test.append(rng.choice(order[s : s + n], size=k, replace=False))
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    keep = np.ones(clients.size, dtype=bool)
    keep[test_idx] = False
    return np.flatnonzero(keep), test_idx


def split_validation(
    part: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A client's ``(train, validation)`` indices: ``round(fraction * n)`` held out, >= 1 kept."""
    n = part.size
    k = min(round(fraction * n), n - 1) if fraction > 0 else 0
    if k <= 0:
        return part, part[:0]
    perm = rng.permutation(n)
    return np.sort(part[perm[k:]]), np.sort(part[perm[:k]])


def flwr_partition(
    kind: str,
    targets: np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int,
    seed: int,
) -> list[np.ndarray]:
    """Partition with flwr-datasets' ``DirichletPartitioner`` or ``IidPartitioner``.

    The labels go into an in-memory ``datasets.Dataset`` (with a column of positions, so each
    partition maps back to sample indices); no images are copied.  ``IidPartitioner`` deals
    contiguous shards, so the positions are shuffled first (seeded), as ``FederatedDataset``
    does by default.
    """
    try:
        from datasets import Dataset
        from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
    except ImportError:
        raise ValueError("data.partitioner=flwr needs flwr-datasets: pip install "
                         "'fedprune[data]' (or use data.partitioner=fedprune)") from None
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    pos = rng.permutation(targets.size) if kind == "iid" else np.arange(targets.size)
    ds = Dataset.from_dict({"label": targets[pos].tolist(), "pos": pos.tolist()})
    if kind == "dirichlet":
        part = DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                                    min_partition_size=min_size, self_balancing=False,
                                    shuffle=True, seed=seed)
    elif kind == "iid":
        part = IidPartitioner(num_partitions=num_clients)
    else:
        raise ValueError(f"flwr-datasets partitioner for {kind!r} is not wired in")
    part.dataset = ds
    try:
        return [np.sort(np.asarray(part.load_partition(i)["pos"], dtype=np.int64))
                for i in range(num_clients)]
    except ValueError as exc:
        raise ValueError(f"flwr-datasets {type(part).__name__}: {exc} (raise data.alpha or "
                         "lower data.min_client_size)") from None
