"""Natural partitions, per-client hold-outs and validation splits, the flwr-datasets backend,
and the data config keys that drive them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.config import ConfigError, DataConfig, load_config
from fedprune.data import (
    NAMES,
    flwr_partition,
    holdout_per_client,
    load_federated,
    natural_partition,
    split_validation,
)
from fedprune.data.synthetic import femnist_clients, write_leaf_femnist


def _clients(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def test_natural_partition_groups_drops_small_and_draws_seeded() -> None:
    ids = _clients([5, 1, 7, 3, 9])
    rng_ids = np.random.default_rng(0).permutation(ids)  # any order in, groups out

    parts, chosen = natural_partition(rng_ids, 3, np.random.default_rng(1), min_size=3)

    assert len(parts) == 3 and chosen == sorted(chosen)
    assert set(chosen) <= {0, 2, 3, 4}  # client 1 has 1 < 3 samples
    for p, c in zip(parts, chosen, strict=True):
        assert np.all(rng_ids[p] == c) and p.size == (ids == c).sum()
    again, chosen2 = natural_partition(rng_ids, 3, np.random.default_rng(1), min_size=3)
    assert chosen2 == chosen and all(np.array_equal(a, b) for a, b in zip(parts, again,
                                                                          strict=True))
    _, everyone = natural_partition(ids, 4, np.random.default_rng(1), min_size=3)
    assert everyone == [0, 2, 3, 4]


def test_natural_partition_asks_for_fewer_clients_when_too_few() -> None:
    with pytest.raises(ValueError) as err:
        natural_partition(_clients([5, 1, 7]), 3, np.random.default_rng(0), min_size=2,
                          client_key="writer")

    msg = str(err.value)
    assert "data.num_clients = 3" in msg and "only 2 writers" in msg and "3 in all" in msg


def test_holdout_per_client_keeps_one_train_sample_each() -> None:
    ids = _clients([1, 2, 10, 40])

    train, test = holdout_per_client(ids, 0.25, np.random.default_rng(0))

    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(ids.size))
    assert np.bincount(ids[test], minlength=4).tolist() == [0, 0, 2, 10]  # round(0.25*n)
    assert np.all(np.bincount(ids[train]) >= 1)


def test_split_validation() -> None:
    part = np.arange(100, 120)

    tr, va = split_validation(part, 0.25, np.random.default_rng(0))
    none_tr, none_va = split_validation(part, 0.0, np.random.default_rng(0))

    assert va.size == 5 and tr.size == 15 and np.intersect1d(tr, va).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), part)
    assert np.array_equal(none_tr, part) and none_va.size == 0
    one_tr, one_va = split_validation(np.array([3]), 0.9, np.random.default_rng(0))
    assert one_tr.tolist() == [3] and one_va.size == 0


@pytest.mark.parametrize("kind", ["dirichlet", "iid"])
def test_flwr_datasets_partitioners_cover_every_sample_once(kind: str) -> None:
    pytest.importorskip("flwr_datasets")
    y = np.repeat(np.arange(10), 40)

    parts = flwr_partition(kind, y, 8, 0.5, 5, seed=3)
    again = flwr_partition(kind, y, 8, 0.5, 5, seed=3)

    assert len(parts) == 8 and min(p.size for p in parts) >= 5
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(y.size))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if kind == "iid":
        assert sorted(p.size for p in parts) == [50] * 8


def test_flwr_backend_drives_load_federated() -> None:
    pytest.importorskip("flwr_datasets")

    data = load_federated(DataConfig(val_fraction=0.0, partitioner="flwr", num_clients=5), seed=0)

    assert len(data.clients) == 5 and sum(len(c) for c in data.clients) == 1797 - 359


# ----------------------------------------------------------------------------- via the loader


@pytest.fixture
def leaf(tmp_path: Path) -> Path:
    return write_leaf_femnist(tmp_path / "leaf",
                              femnist_clients(10, np.random.default_rng(2), mean_size=30))


def _load(tmp_path: Path, leaf: Path, seed: int = 0, **kw):
    kw.setdefault("val_fraction", 0.0)
    return load_federated(DataConfig(name="femnist", path=str(leaf),
                                     cache_dir=str(tmp_path / "c"), **kw), seed=seed)


def test_validation_split_per_client_and_test_cap(tmp_path: Path, leaf: Path) -> None:
    data = _load(tmp_path, leaf, partition="natural", num_clients=6, min_client_size=5,
                 val_fraction=0.2, max_test_samples=25)

    assert len(data.test_y) == 25
    for c in data.clients:
        assert c.val_x is not None and c.val_y is not None
        n = len(c) + len(c.val_y)
        assert len(c.val_y) == min(round(0.2 * n), n - 1)
        assert c.val_x.dtype == torch.uint8 and c.val_x.shape[0] == len(c.val_y)


def test_dirichlet_and_iid_over_a_natural_dataset(tmp_path: Path, leaf: Path) -> None:
    d = _load(tmp_path, leaf, num_clients=4, min_client_size=5,
              partition="dirichlet")
    i = _load(tmp_path, leaf, num_clients=4, partition="iid")
    other_seed = _load(tmp_path, leaf, seed=1, num_clients=4, min_client_size=5,
                       partition="dirichlet")

    assert all(c.name == "" for c in d.clients)
    assert sum(len(c) for c in d.clients) == sum(len(c) for c in i.clients)
    assert max(len(c) for c in i.clients) - min(len(c) for c in i.clients) <= 1
    assert [len(c) for c in d.clients] != [len(c) for c in other_seed.clients]


def test_natural_selection_is_seeded(tmp_path: Path, leaf: Path) -> None:
    a = _load(tmp_path, leaf, partition="natural", num_clients=3, min_client_size=1)
    b = _load(tmp_path, leaf, partition="natural", num_clients=3, min_client_size=1)
    c = _load(tmp_path, leaf, seed=5, partition="natural", num_clients=3, min_client_size=1)

    assert [x.name for x in a.clients] == [x.name for x in b.clients]
    assert [x.name for x in a.clients] != [x.name for x in c.clients]
    with pytest.raises(ValueError, match="only 10 writers"):
        _load(tmp_path, leaf, partition="natural", num_clients=11, min_client_size=1)


def test_digits_validation_split_leaves_default_streams_alone() -> None:
    base = load_federated(DataConfig(val_fraction=0.0), seed=0)
    val = load_federated(DataConfig(val_fraction=0.1), seed=0)

    for a, b in zip(base.clients, val.clients, strict=True):
        assert len(a) == len(b) + len(b.val_y)
        assert a.val_x is None
    assert torch.equal(base.test_y, val.test_y)


# ----------------------------------------------------------------------------- config keys


def test_config_dataset_names_match_the_registry() -> None:
    from fedprune.data.registry import FORMATS

    assert DataConfig._NAMES == NAMES
    assert DataConfig._FORMATS == FORMATS


@pytest.mark.parametrize(("pairs", "fragment"), [
    (["data.name=cifar10"], "data.name = 'cifar10' is out of range: allowed one of digits"),
    (["data.format=zip"], "data.format"),
    (["data.partition=natural"], "'natural' needs femnist or celeba"),
    (["data.name=fashion-mnist", "data.partition=natural"], "'natural' needs femnist"),
    (["data.val_fraction=1"], "data.val_fraction"),
    (["data.max_test_samples=-1"], "data.max_test_samples"),
    (["data.cache=maybe"], "data.cache"),
    (["data.partitioner=sklearn"], "data.partitioner"),
])
def test_bad_data_keys_raise_config_errors(pairs: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match="data.") as err:
        load_config(None, pairs)

    assert fragment in str(err.value)


def test_new_data_keys_parse_from_set() -> None:
    cfg = load_config(None, ["data.name=femnist", "data.path=/x/y", "data.partition=natural",
                             "data.val_fraction=0.1", "data.cache=off", "data.format=leaf",
                             "data.max_test_samples=100", "data.subset=digits_only"])

    d = cfg.data
    assert (d.name, d.path, d.partition, d.val_fraction, d.cache, d.format) == (
        "femnist", "/x/y", "natural", 0.1, "off", "leaf")
    assert (d.max_test_samples, d.subset, d.attribute) == (100, "digits_only", "Male")
