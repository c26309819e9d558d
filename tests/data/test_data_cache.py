"""The prepared-data cache: reuse, invalidation, damage, views instead of per-client copies,
and the per-batch uint8 -> float transform used in training and evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.config import DataConfig, TrainConfig
from fedprune.data import DataError, PixelTransform, load_federated, load_prepared
from fedprune.data.cache import default_cache_dir
from fedprune.data.synthetic import femnist_clients, split_clients, write_leaf_femnist
from fedprune.data.transform import to_float_batch
from fedprune.federated.client import evaluate, train_local
from fedprune.models import new_model


@pytest.fixture
def leaf(tmp_path: Path) -> Path:
    writers = femnist_clients(8, np.random.default_rng(0), mean_size=15)
    train, test = split_clients(writers, 0.2, np.random.default_rng(1))
    return write_leaf_femnist(tmp_path / "leaf", train, test, writers_per_file=3)


def _cfg(tmp_path: Path, leaf: Path, **kw) -> DataConfig:
    kw.setdefault("val_fraction", 0.0)  # every sample in training unless a test asks
    return DataConfig(name="femnist", path=str(leaf), cache_dir=str(tmp_path / "cache"), **kw)


def test_second_open_reuses_the_cache(tmp_path: Path, leaf: Path) -> None:
    first = load_prepared(_cfg(tmp_path, leaf))
    second = load_prepared(_cfg(tmp_path, leaf))

    assert not first.reused and second.reused
    assert first.directory == second.directory
    assert first.directory.parent == tmp_path / "cache"
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    meta = json.loads((second.directory / "meta.json").read_text())
    assert meta["num_samples"] == len(second.labels) and len(meta["files"]) == 6


def test_cache_off_gives_the_same_arrays_without_files(tmp_path: Path, leaf: Path) -> None:
    cached = load_prepared(_cfg(tmp_path, leaf))
    mem = load_prepared(_cfg(tmp_path, leaf, cache="off"))

    assert mem.directory is None and not isinstance(mem.images, np.memmap)
    np.testing.assert_array_equal(mem.images, cached.images)
    np.testing.assert_array_equal(mem.labels, cached.labels)
    assert mem.meta["mean"] == cached.meta["mean"]


@pytest.mark.parametrize("change", ["modified", "resized", "new", "gone"])
def test_changed_source_is_reported_then_rebuilt(tmp_path: Path, leaf: Path, change: str) -> None:
    load_prepared(_cfg(tmp_path, leaf))
    f = leaf / "train" / "all_data_1.json"
    if change == "modified":
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    elif change == "resized":
        f.write_text(f.read_text() + " ")
    elif change == "new":  # a file of new writers (the same writer twice is refused)
        obj = json.loads(f.read_text())
        obj["users"] = [f"{u}-new" for u in obj["users"]]
        obj["user_data"] = {f"{u}-new": d for u, d in obj["user_data"].items()}
        (leaf / "train" / "all_data_9.json").write_text(json.dumps(obj))
    else:
        (leaf / "test" / "all_data_2.json").unlink()

    with pytest.raises(DataError) as err:
        load_prepared(_cfg(tmp_path, leaf))

    msg = str(err.value)
    assert "no longer matches its source" in msg and "data.cache=rebuild" in msg
    assert {"modified": "was modified", "resized": "changed size", "new": "is new",
            "gone": "is gone"}[change] in msg
    rebuilt = load_prepared(_cfg(tmp_path, leaf, cache="rebuild"))
    assert not rebuilt.reused
    assert load_prepared(_cfg(tmp_path, leaf)).reused


def test_damaged_cache_files_are_reported(tmp_path: Path, leaf: Path) -> None:
    d = load_prepared(_cfg(tmp_path, leaf)).directory
    images = d / "images.u8"
    images.write_bytes(images.read_bytes()[:-784])

    with pytest.raises(DataError, match=r"images.u8: is truncated: expected \d+ bytes"):
        load_prepared(_cfg(tmp_path, leaf))

    (d / "meta.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="is not a complete fedprune cache"):
        load_prepared(_cfg(tmp_path, leaf))


def test_natural_clients_are_views_of_the_memory_map(tmp_path: Path, leaf: Path) -> None:
    total = load_prepared(_cfg(tmp_path, leaf)).images.nbytes

    data = load_federated(_cfg(tmp_path, leaf, partition="natural", num_clients=8,
                               min_client_size=1), seed=0)

    # no copy per client: every x (and the test set) is a slice of the one mapped file
    tensors = [c.x for c in data.clients] + [data.test_x]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert all(t.untyped_storage().nbytes() == total for t in tensors)
    assert sum(t.shape[0] for t in tensors) * 784 == total


def test_synthetic_partitions_share_one_gathered_copy(tmp_path: Path, leaf: Path) -> None:
    data = load_federated(_cfg(tmp_path, leaf, num_clients=4, min_client_size=2), seed=0)

    storages = {c.x.untyped_storage().data_ptr() for c in data.clients}
    assert len(storages) == 1  # one buffer for all clients, each a slice of it
    assert sum(len(c) for c in data.clients) == sum(c.x.shape[0] for c in data.clients)


def test_cache_location_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDPRUNE_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FEDPRUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fedprune"


# ----------------------------------------------------------------------------- transform


def test_transform_standardises_with_the_cached_mean_and_std(tmp_path: Path, leaf: Path) -> None:
    data = load_federated(_cfg(tmp_path, leaf, partition="natural", num_clients=8,
                               min_client_size=1), seed=0)
    meta = load_prepared(_cfg(tmp_path, leaf)).meta
    x = data.clients[0].x

    out = to_float_batch(data.transform, x[:5])

    ref = (x[:5].double() / 255 - meta["mean"][0]) / meta["std"][0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)
    allx = torch.cat([to_float_batch(data.transform, c.x) for c in data.clients])
    assert abs(allx.mean().item()) < 0.05 and abs(allx.std().item() - 1) < 0.05


def test_uint8_without_transform_is_scaled_and_float_passes_through() -> None:
    u = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    f = torch.randn(2, 1, 2, 2)

    assert to_float_batch(None, u).tolist() == [[[[0.0, 1.0]]]]
    assert to_float_batch(None, f) is f
    assert to_float_batch(PixelTransform.of([0.5], [0.5]), f) is f


def test_rgb_transform_is_per_channel() -> None:
    t = PixelTransform.of([0.0, 0.5, 1.0], [1.0, 0.5, 0.25])
    x = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)

    assert t(x).flatten().tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="std must be > 0"):
        PixelTransform.of([0.5], [0.0])


def test_train_and_evaluate_on_uint8_match_the_float_path() -> None:
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    tf = PixelTransform.of([0.3], [0.4])
    xf = tf(xu)
    cfg = TrainConfig(local_epochs=1, batch_size=16)
    results = []
    for x in (xf, xu):
        model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                             widths=None, seed=0)
        state, _, info = train_local(model, x, y, cfg, torch.Generator().manual_seed(1),
                                     transform=tf)
        results.append((info["train_loss"], evaluate(model, x, y, batch_size=20, transform=tf),
                        state))

    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    for k in results[0][2]:
        torch.testing.assert_close(results[0][2][k], results[1][2][k])
