"""Writers for every supported on-disk format, with synthetic content.

Used by the tests (small, valid or deliberately broken files) and by the FEMNIST-sized
benchmark.  Each writer produces files laid out exactly as the real publications are
(LEAF JSON, TFF SQLite and HDF5, flwrlabs Parquet, IDX), so the readers are exercised on the
real layouts.
"""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .tfexample import encode_example

# {client id: (pixels uint8 [n, H, W] or [n, C, H, W], labels int [n])}
Clients = Mapping[str, tuple[np.ndarray, np.ndarray]]
CELEBA_ATTRS = ("5_o_Clock_Shadow", "Male", "Smiling", "Young")  # a subset, for small files


def femnist_clients(num_writers: int, rng: np.random.Generator, mean_size: float = 20,
                    num_classes: int = 62, prefix: str = "f") -> dict[str, tuple[np.ndarray,
                                                                                   np.ndarray]]:
    """Writers with LEAF-like sizes and images: white background (255), darker strokes."""
    out = {}
    sizes = np.maximum(2, rng.poisson(mean_size, num_writers))
    for w, n in enumerate(sizes):
        labels = rng.integers(0, num_classes, n)
        imgs = np.full((n, 28, 28), 255, dtype=np.uint8)
        for i, c in enumerate(labels):  # a label-dependent stroke so that models can learn
            r = 4 + int(c) % 20
            imgs[i, r : r + 3, 4:24] = rng.integers(0, 80, (3, 20))
            imgs[i, 4:24, 4 + int(c) // 3 % 20] = rng.integers(0, 80, 20)
        out[f"{prefix}{w:04d}_{w % 100:02d}"] = (imgs, labels.astype(np.int64))
    return out


def split_clients(clients: Clients, test_fraction: float, rng: np.random.Generator
                  ) -> tuple[dict, dict]:
    """Per-client train/test split (LEAF ``-t sample``): every client keeps one train sample."""
    train, test = {}, {}
    for cid, (x, y) in clients.items():
        k = min(round(test_fraction * len(y)), len(y) - 1)
        perm = rng.permutation(len(y))
        train[cid] = (x[perm[k:]], y[perm[k:]])
        if k:
            test[cid] = (x[perm[:k]], y[perm[:k]])
    return train, test


# ----------------------------------------------------------------------------- LEAF JSON


def leaf_femnist_obj(clients: Clients) -> dict:
    """LEAF's FEMNIST JSON object: pixels as ``v / 255`` floats, as data_to_json.py writes."""
    users = list(clients)
    return {
        "users": users,
        "num_samples": [len(clients[u][1]) for u in users],
        "user_data": {u: {"x": (clients[u][0].reshape(len(clients[u][1]), -1) / 255.0).tolist(),
                          "y": [int(v) for v in clients[u][1]]} for u in users},
    }


def write_leaf_femnist(root: Path, train: Clients, test: Clients | None = None,
                       writers_per_file: int = 100) -> Path:
    """``root/train/all_data_<i>.json`` (+ ``root/test``), or ``root/all_data`` without test."""
    splits = [("train", train), ("test", test)] if test is not None else [("all_data", train)]
    for name, clients in splits:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        ids = list(clients)
        for i in range(0, len(ids), writers_per_file):
            part = {u: clients[u] for u in ids[i : i + writers_per_file]}
            with open(d / f"all_data_{i // writers_per_file}.json", "w") as f:
                json.dump(leaf_femnist_obj(part), f)
    return root


def write_celeba_images(image_dir: Path, n: int, rng: np.random.Generator,
                        size: tuple[int, int] = (36, 44)) -> list[str]:
    """``n`` small JPEG faces ``000001.jpg``...; returns their names."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(image_dir / name, quality=90)
        names.append(name)
    return names


def write_attr_file(path: Path, names: list[str], attrs: Mapping[str, np.ndarray]) -> None:
    """CelebA's ``list_attr_celeba.txt``: count, attribute names, then 1/-1 per image."""
    cols = list(attrs)
    lines = [str(len(names)), " ".join(cols)]
    for i, name in enumerate(names):
        lines.append(name + " " + " ".join("1" if attrs[c][i] else "-1" for c in cols))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_leaf_celeba(root: Path, celebs: Mapping[str, list[str]], labels: Mapping[str, list],
                      split: str = "train") -> Path:
    """LEAF CelebA JSON (``x``: image names, ``y``: LEAF's target) under ``root/<split>``."""
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    obj = {"users": list(celebs), "num_samples": [len(v) for v in celebs.values()],
           "user_data": {c: {"x": celebs[c], "y": labels[c]} for c in celebs}}
    (d / "all_data.json").write_text(json.dumps(obj), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- TFF


def write_tff_sqlite(path: Path, splits: Mapping[str, Clients]) -> Path:
    """TFF's SqlClientData layout; ``splits`` maps split names (``all_train``...) to clients."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                    "serialized_example_proto BLOB NOT NULL)")
        con.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT "
                    "NULL, num_examples INTEGER NOT NULL)")
        for split, clients in splits.items():
            for cid, (x, y) in clients.items():
                px = x.reshape(len(y), -1).astype(np.float32) / np.float32(255)
                rows = [(split, cid, encode_example({"label": np.array([int(v)]),
                                                     "pixels": px[i]}))
                        for i, v in enumerate(y)]
                con.executemany("INSERT INTO examples VALUES (?, ?, ?)", rows)
                con.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(y)))
    con.close()
    return path


def write_tff_hdf5(path: Path, clients: Clients) -> Path:
    """``examples/<client_id>/{pixels [n, 28, 28] float32, label [n] int32}``."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("examples")
        for cid, (x, y) in clients.items():
            c = g.create_group(cid)
            c.create_dataset("pixels", data=x.reshape(len(y), 28, 28).astype(np.float32) / 255)
            c.create_dataset("label", data=np.asarray(y, dtype=np.int32))
    return path


# ----------------------------------------------------------------------------- Parquet


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_parquet_femnist(path: Path, clients: Clients) -> Path:
    """flwrlabs/femnist's columns: image {bytes, path}, writer_id, hsf_id, character."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, writers, labels = [], [], []
    for cid, (x, y) in clients.items():
        for i, v in enumerate(y):
            images.append({"bytes": _png(x[i].reshape(28, 28)), "path": None})
            writers.append(cid)
            labels.append(int(v))
    table = pa.table({
        "image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "writer_id": pa.array(writers, type=pa.string()),
        "hsf_id": pa.array([0] * len(writers), type=pa.int64()),
        "character": pa.array(labels, type=pa.int64()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_parquet_celeba(path: Path, rows: list[tuple[int, np.ndarray, dict[str, bool]]]) -> Path:
    """flwrlabs/celeba's columns: image (JPEG), celeb_id, one bool column per attribute."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {"image": [], "celeb_id": []}
    for celeb, img, attrs in rows:
        cols["image"].append({"bytes": _png(img, "JPEG"), "path": None})
        cols["celeb_id"].append(int(celeb))
        for k, v in attrs.items():
            cols.setdefault(k, []).append(bool(v))
    arrays = {"image": pa.array(cols.pop("image"), type=pa.struct([("bytes", pa.binary()),
                                                                    ("path", pa.string())])),
              "celeb_id": pa.array(cols.pop("celeb_id"), type=pa.int64())}
    arrays.update({k: pa.array(v, type=pa.bool_()) for k, v in cols.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


# ----------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                      for d in arr.shape)
    return header + arr.tobytes()


def write_idx(folder: Path, train: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray] | None = None, prefix: str = "",
              gz: bool = True, test_name: str = "t10k") -> Path:
    """``<prefix>train-images-idx3-ubyte[.gz]`` etc., as MNIST and Fashion-MNIST ship."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, pair in (("train", train), (test_name, test)):
        if pair is None:
            continue
        for kind, arr, nd in (("images", pair[0], 3), ("labels", pair[1], 1)):
            name = f"{prefix}{split}-{kind}-idx{nd}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return folder
