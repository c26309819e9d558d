"""Tests for fedprune.data: the partitioners and the federated digits loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedprune.config import ConfigError, DataConfig
from fedprune.data import (
    FederatedData,
    dirichlet_partition,
    iid_partition,
    load_federated,
    partition_report,
)

# scikit-learn's digits: 1,797 images, per-class counts of the digits 0..9
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# round(0.2 * count) per class: 35.6->36, 36.4->36, 35.4->35, 36.6->37, 36.2->36, ...
DIGITS_TEST_COUNTS = [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # 359 in all


def _labels(per_class: int = 50, classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)  # 500 samples by default


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- dirichlet_partition


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_covers_every_index_exactly_once(alpha: float) -> None:
    y = _labels()

    parts = dirichlet_partition(y, 10, alpha, _rng(0), min_size=1)

    assert len(parts) == 10
    together = np.concatenate(parts)
    assert together.size == 500
    np.testing.assert_array_equal(np.sort(together), np.arange(500))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # each part sorted, no repeats


def test_dirichlet_single_client_gets_everything() -> None:
    parts = dirichlet_partition(_labels(3, 4), 1, 0.5, _rng(0))

    assert len(parts) == 1
    np.testing.assert_array_equal(parts[0], np.arange(12))


def test_dirichlet_respects_min_size() -> None:
    y = _labels()

    parts = dirichlet_partition(y, 10, 0.3, _rng(1), min_size=20)

    assert min(p.size for p in parts) >= 20
    assert sum(p.size for p in parts) == 500


def test_dirichlet_is_deterministic_per_seed() -> None:
    y = _labels()

    a = dirichlet_partition(y, 8, 0.5, _rng(7), min_size=5)
    b = dirichlet_partition(y, 8, 0.5, _rng(7), min_size=5)
    c = dirichlet_partition(y, 8, 0.5, _rng(8), min_size=5)

    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_small_alpha_gives_fewer_labels_per_client_than_large_alpha() -> None:
    y = _labels()

    skewed = partition_report(dirichlet_partition(y, 10, 0.05, _rng(0)), y)
    uniform = partition_report(dirichlet_partition(y, 10, 100.0, _rng(0)), y)

    # alpha=100: every client gets ~5 of each class's 50 samples, so all 10 labels
    assert uniform["mean_labels_per_client"] >= 9.5
    assert skewed["mean_labels_per_client"] < 5.0
    assert skewed["mean_labels_per_client"] < uniform["mean_labels_per_client"]


def test_dirichlet_impossible_min_size_raises_helpful_error() -> None:
    with pytest.raises(ValueError) as err:
        dirichlet_partition(_labels(), 10, 0.5, _rng(0), min_size=51)  # 10 * 51 > 500

    msg = str(err.value)
    assert "10 clients" in msg and "51 samples" in msg and "500" in msg
    assert "data.min_client_size" in msg


def test_dirichlet_unreachable_min_size_gives_up_with_advice() -> None:
    # 10 * 50 == 500 is feasible only if every client gets exactly 50: never at alpha 0.05
    with pytest.raises(ValueError, match="raise data.alpha or lower data.min_client_size"):
        dirichlet_partition(_labels(), 10, 0.05, _rng(0), min_size=50)


@pytest.mark.parametrize(("clients", "alpha"), [(0, 0.5), (3, 0.0), (3, -1.0)])
def test_dirichlet_rejects_bad_arguments(clients: int, alpha: float) -> None:
    with pytest.raises(ValueError, match="num_clients|alpha"):
        dirichlet_partition(_labels(), clients, alpha, _rng(0))


# ---------------------------------------------------------------- iid_partition


def test_iid_sizes_differ_by_at_most_one_and_cover_all() -> None:
    parts = iid_partition(103, 10, _rng(0))

    # 103 = 3 * 11 + 7 * 10
    assert sorted(p.size for p in parts) == [10] * 7 + [11] * 3
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(103))
    assert not np.array_equal(np.concatenate(parts), np.arange(103))  # shuffled


def test_iid_rejects_more_clients_than_samples() -> None:
    with pytest.raises(ValueError, match=r"num_clients must be in \[1, 5\], got 6"):
        iid_partition(5, 6, _rng(0))


# ---------------------------------------------------------------- load_federated


@pytest.fixture(scope="module")
def digits() -> FederatedData:
    return load_federated(DataConfig(val_fraction=0.0), seed=0)


def test_digits_split_sizes_and_stratified_test(digits: FederatedData) -> None:
    train_total = sum(len(c) for c in digits.clients)

    assert len(digits.clients) == 20
    assert train_total + len(digits.test_y) == 1797
    assert len(digits.test_y) == 359  # ~ 0.2 * 1797 = 359.4
    counts = np.bincount(digits.test_y.numpy(), minlength=10)
    assert counts.tolist() == DIGITS_TEST_COUNTS
    all_y = torch.cat([c.y for c in digits.clients] + [digits.test_y])
    assert np.bincount(all_y.numpy()).tolist() == DIGITS_COUNTS
    assert min(len(c) for c in digits.clients) >= 10  # data.min_client_size default


def test_digits_tensors_shape_dtype_and_scale(digits: FederatedData) -> None:
    x = torch.cat([c.x for c in digits.clients] + [digits.test_x])

    assert digits.num_classes == 10
    assert tuple(digits.input_shape) == (1, 28, 28)
    assert x.shape == (1797, 1, 28, 28)
    assert x.dtype == torch.float32 and digits.test_y.dtype == torch.int64
    assert torch.isfinite(x).all()
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05  # standardised


def test_digits_same_seed_gives_identical_clients(digits: FederatedData) -> None:
    again = load_federated(DataConfig(val_fraction=0.0), seed=0)
    other = load_federated(DataConfig(val_fraction=0.0), seed=1)

    assert len(again.clients) == len(digits.clients)
    for a, b in zip(digits.clients, again.clients, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.equal(digits.test_y, again.test_y)
    assert [len(c) for c in other.clients] != [len(c) for c in digits.clients]


def test_digits_native_8x8_with_iid_partition() -> None:
    cfg = DataConfig(val_fraction=0.0, image_size=8, partition="iid", num_clients=7,
                     test_fraction=0.2)

    data = load_federated(cfg, seed=0)

    assert tuple(data.input_shape) == (1, 8, 8)
    assert data.test_x.shape == (359, 1, 8, 8)
    # 1797 - 359 = 1438 = 3 * 206 + 4 * 205
    assert sorted(len(c) for c in data.clients) == [205] * 4 + [206] * 3
    assert torch.isfinite(data.test_x).all()


def test_unknown_dataset_name_lists_known_datasets() -> None:
    with pytest.raises(ConfigError) as err:
        load_federated(DataConfig(val_fraction=0.0, name="cifar10"), seed=0)

    assert "'cifar10'" in str(err.value) and "digits" in str(err.value)
    assert "fashion-mnist" in str(err.value)


def test_named_dataset_without_files_says_which_path_it_needs() -> None:
    with pytest.raises(ValueError, match="data.name=mnist needs data.path"):
        load_federated(DataConfig(val_fraction=0.0, name="mnist"), seed=0)
