"""The named random streams of a run, all derived from the experiment's ``seed``.

Each stream is an independent NumPy ``SeedSequence`` entropy list ``[seed, STREAM, ...]``, so
drawing more from one stream never shifts another: changing the number of rounds does not
change the data split, and resuming a run restores only the sampling stream's state.  The
stream numbers are part of every recorded result; changing one changes every figure.

* :func:`data_split` -- ``[seed, 1]``: the test hold-out (when the files have none) and the
  partition of the training set into clients;
* :func:`client_sampling` -- ``[seed, 2]``: the clients of every round, one draw a round;
* :func:`batch_order` -- ``[seed, 3, round, client]``: one client's batch order in one round;
* :func:`validation_split` -- ``[seed, 4]``: each client's validation samples;
* :func:`test_subset` -- ``[seed, 5]``: the test samples kept under ``data.max_test_samples``;
* :func:`guard_clients` -- ``[seed, 5, round]``: budget mode, the clients that validate a cut;
* :func:`pruning_seed` -- ``seed * 100003 + round``: the integer seed of a pruning step
  (re-initialised survivors).

(``[seed, 5]`` and ``[seed, 5, round]`` are different entropy lists, so different streams.)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "BATCHES",
    "DATA_SPLIT",
    "GUARD",
    "PRUNING_STRIDE",
    "SAMPLING",
    "TEST_SUBSET",
    "VALIDATION",
    "WIDTHS",
    "batch_order",
    "batch_widths",
    "client_sampling",
    "data_split",
    "guard_clients",
    "pruning_seed",
    "test_subset",
    "validation_split",
    "width_draws",
]

DATA_SPLIT = 1
SAMPLING = 2
BATCHES = 3
VALIDATION = 4
TEST_SUBSET = 5
GUARD = 5  # with the round appended: a stream apart from TEST_SUBSET's
WIDTHS = 6  # with the round appended
BATCH_WIDTHS = 7  # with the round and the client appended
PRUNING_STRIDE = 100_003  # (seed, round) pairs give distinct seeds while rounds < 100003


def data_split(seed: int) -> np.random.Generator:
    """Test hold-out and partition of the training set into clients."""
    return np.random.default_rng([seed, DATA_SPLIT])


def client_sampling(seed: int) -> np.random.Generator:
    """The server's client sampling, one ``choice`` per round (its state is checkpointed)."""
    return np.random.default_rng([seed, SAMPLING])


def batch_order(seed: int, rnd: int, client: int) -> torch.Generator:
    """The batch-order generator of client ``client`` in round ``rnd``.

    The same in every engine (in-process loop, batched engine, Flower ClientApp), so a client
    trains on the same batches wherever it runs.
    """
    entropy = [seed, BATCHES, rnd, client]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def validation_split(seed: int) -> np.random.Generator:
    """Each client's validation samples (``data.val_fraction``), client after client."""
    return np.random.default_rng([seed, VALIDATION])


def test_subset(seed: int) -> np.random.Generator:
    """The test samples kept when the test split exceeds ``data.max_test_samples``."""
    return np.random.default_rng([seed, TEST_SUBSET])


def guard_clients(seed: int, rnd: int) -> np.random.Generator:
    """The clients asked to validate in round ``rnd``: budget mode's guard, the automatic
    method's judged candidate."""
    return np.random.default_rng([seed, GUARD, rnd])


def width_draws(seed: int, rnd: int) -> np.random.Generator:
    """The width each sampled client trains in round ``rnd`` while the automatic method
    searches (:mod:`fedprune.pruners.nested`)."""
    return np.random.default_rng([seed, WIDTHS, rnd])


def batch_widths(seed: int, rnd: int, client: int) -> np.random.Generator:
    """The width of each batch that client ``client`` trains in round ``rnd`` under ordered
    dropout per batch (``prune.ordered_dropout = "batch"``): drawn alike by the client and
    by the server that counts its compute, in every engine."""
    return np.random.default_rng([seed, BATCH_WIDTHS, rnd, client])


def pruning_seed(seed: int, rnd: int) -> int:
    """The seed of the pruning step after round ``rnd`` (used when survivors are
    re-initialised)."""
    return int(seed * PRUNING_STRIDE + rnd)
