"""TensorFlow Federated's EMNIST files, read without TensorFlow.

SQLite (``emnist_all.sqlite``, the decompressed ``emnist_all.sqlite.lzma`` that
``tff.simulation.datasets.emnist.load_data`` downloads): table ``examples(split_name,
client_id, serialized_example_proto)`` with one serialized ``tf.train.Example`` per row
(features ``pixels``: 784 floats, ``label``: one int64) and table ``client_metadata(client_id,
split_name, num_examples)``.  Split names are ``all_train``/``all_test`` and
``digits_only_train``/``digits_only_test`` (``data.subset`` = ``all`` or ``digits_only``);
``train``/``test`` are accepted too.

HDF5 (the older ``fed_emnist.tar.bz2``: ``fed_emnist_train.h5`` and ``fed_emnist_test.h5``,
or ``fed_emnist_digitsonly_*.h5``): groups ``examples/<client_id>`` holding datasets
``pixels`` ``[n, 28, 28]`` float32 and ``label`` ``[n]`` int.

In both, pixels are grey levels in [0, 1] with 1.0 the background, as in LEAF.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DatasetSpec
from ..tfexample import ProtoError, parse_example
from . import SQLITE_MAGIC, XZ_MAGIC, Chunk, float_pixels_to_u8, head, to_labels

REQUIRED_TABLES = ("examples", "client_metadata")
REQUIRED_COLUMNS = ("split_name", "client_id", "serialized_example_proto")
H5_PREFIX = {"all": "fed_emnist", "digits_only": "fed_emnist_digitsonly"}


# ----------------------------------------------------------------------------- SQLite


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise DataError(path, "file is missing")
    magic = head(path)
    if magic != SQLITE_MAGIC:
        hint = ""
        if magic.startswith(XZ_MAGIC) or magic[:3] == b"\x5d\x00\x00":
            hint = " (it is LZMA-compressed: decompress it first, e.g. `unlzma -k FILE`)"
        raise DataError(path, f"is not an SQLite database{hint}")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise DataError(path, f"is not a readable SQLite database ({exc})") from None
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise DataError(path, f"lacks the table(s) {missing} of TFF's SqlClientData (has "
                              f"{sorted(tables)})")
    cols = {r[1] for r in con.execute("PRAGMA table_info(examples)")}
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise DataError(path, f"table examples lacks the column(s) {missing}")
    return con


def sqlite_splits(path: Path, subset: str) -> tuple[str, str | None]:
    """The (train, test) split names to read for ``data.subset``."""
    con = _connect(path)
    try:
        names = sorted({r[0] for r in con.execute("SELECT DISTINCT split_name FROM "
                                                  "client_metadata")})
    except sqlite3.DatabaseError as exc:
        raise DataError(path, f"cannot read client_metadata ({exc})") from None
    finally:
        con.close()
    explicit, subset = bool(subset), subset or "all"
    for train, test in ((f"{subset}_train", f"{subset}_test"), ("train", "test")):
        if train in names:
            return train, (test if test in names else None)
    if len(names) == 1 and not explicit:
        return names[0], None
    prefixes = sorted({n.rsplit("_", 1)[0] for n in names if n.endswith("_train")})
    raise DataError(path, f"has splits {names}; none is {subset + '_train'!r} or 'train'"
                          + (f": set data.subset to one of {prefixes}" if prefixes else ""))


def _parse_row(path: Path, blob: bytes, client: str, split: str) -> tuple[np.ndarray, int]:
    where = f"client {client!r} ({split})"
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise DataError(path, f"{where}: serialized_example_proto is "
                              f"{'NULL' if blob is None else type(blob).__name__}, not a "
                              "serialized tf.train.Example (a BLOB)")
    try:
        ex = parse_example(bytes(blob))
    except ProtoError as exc:
        raise DataError(path, f"{where}: serialized_example_proto is not a tf.train.Example "
                              f"({exc})") from None
    pixels, label = ex.get("pixels"), ex.get("label")
    if pixels is None or label is None:
        raise DataError(path, f"{where}: the tf.train.Example lacks feature(s) "
                              f"{[k for k in ('pixels', 'label') if k not in ex]} (has "
                              f"{sorted(ex)})")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
        raise DataError(path, f"{where}: feature 'pixels' must be a float_list")
    if pixels.size != 784:
        raise DataError(path, f"{where}: 'pixels' holds {pixels.size} values, expected 784 "
                              "(28x28)")
    if not isinstance(label, np.ndarray) or label.dtype != np.int64 or label.size != 1:
        raise DataError(path, f"{where}: feature 'label' must be an int64_list of one value")
    return pixels, int(label[0])


def read_sqlite(path: Path, spec: DatasetSpec, subset: str = "") -> Iterator[Chunk]:
    train, test = sqlite_splits(path, subset)
    ours = {train: "train"} | ({test: "test"} if test else {})
    con = _connect(path)
    try:
        meta: dict[tuple[str, str], int] = {}
        for cid, split, n in con.execute(
                "SELECT client_id, split_name, num_examples FROM client_metadata WHERE "
                f"split_name IN ({','.join('?' * len(ours))})", tuple(ours)):
            if not isinstance(n, int) or n <= 0:
                raise DataError(path, f"client {cid!r} ({split}) has num_examples = {n!r} in "
                                      "client_metadata (an empty client)")
            meta[(split, str(cid))] = n
        seen: dict[tuple[str, str], int] = {}
        cur = con.execute("SELECT split_name, client_id, serialized_example_proto FROM examples "
                          f"WHERE split_name IN ({','.join('?' * len(ours))})", tuple(ours))
        key: tuple[str, str] | None = None
        px: list[np.ndarray] = []
        ys: list[int] = []

        def flush() -> Chunk:
            assert key is not None
            what = f"client {key[1]!r} ({key[0]})"
            x = float_pixels_to_u8(np.stack(px), path, what).reshape(-1, 1, 28, 28)
            y = to_labels(ys, spec.num_classes, path, what)
            seen[key] = seen.get(key, 0) + len(ys)
            return Chunk(x, y, key[1], ours[key[0]])

        while rows := cur.fetchmany(4096):
            for split, cid, blob in rows:
                k = (split, str(cid))
                if k != key:
                    if px:
                        yield flush()
                    key, px, ys = k, [], []
                p, lab = _parse_row(path, blob, k[1], split)
                px.append(p)
                ys.append(lab)
        if px:
            yield flush()
    except sqlite3.DatabaseError as exc:
        raise DataError(path, f"cannot be read ({exc})") from None
    finally:
        con.close()
    for k, n in meta.items():
        if seen.get(k, 0) != n:
            raise DataError(path, f"client {k[1]!r} ({k[0]}): client_metadata says {n} examples "
                                  f"but table examples holds {seen.get(k, 0)}")
    for k in seen:
        if k not in meta:
            raise DataError(path, f"client {k[1]!r} ({k[0]}) has examples but no row in "
                                  "client_metadata")


# ----------------------------------------------------------------------------- HDF5


def h5_files(path: Path, subset: str) -> list[tuple[str, Path]]:
    """``(split, file)``: a file (and its ``_test`` sibling) or a folder of TFF ``.h5`` files."""
    if path.is_file():
        split = "test" if "test" in path.stem else "train"
        out = [(split, path)]
        if split == "train" and "train" in path.name:
            sibling = path.with_name(path.name.replace("train", "test"))
            if sibling.is_file():
                out.append(("test", sibling))
        return out
    if not path.is_dir():
        raise DataError(path, "does not exist")
    subset = subset or "all"
    prefix = H5_PREFIX.get(subset, subset)
    for ext in (".h5", ".hdf5"):
        train = path / f"{prefix}_train{ext}"
        if train.is_file():
            test = path / f"{prefix}_test{ext}"
            return [("train", train)] + ([("test", test)] if test.is_file() else [])
    trains = sorted(p for p in path.iterdir() if p.suffix in (".h5", ".hdf5")
                    and p.stem.endswith("_train"))
    if len(trains) == 1:
        return h5_files(trains[0], subset)
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".h5", ".hdf5"))
    raise DataError(path, f"has no {prefix}_train.h5 (data.subset={subset!r}); found "
                          f"{found or 'no .h5 files'}")


def read_hdf5(path: Path, spec: DatasetSpec, subset: str = "") -> Iterator[Chunk]:
    try:
        import h5py
    except ImportError:
        raise DataError(path, "reading HDF5 needs h5py: pip install 'fedprune[data]' "
                              "(or pip install h5py)") from None
    from . import HDF5_MAGIC

    for split, f in h5_files(path, subset):
        if head(f, 8) != HDF5_MAGIC:
            raise DataError(f, "is not an HDF5 file")
        try:
            h5 = h5py.File(f, "r")
        except OSError as exc:
            raise DataError(f, f"cannot be opened as HDF5 ({exc})") from None
        with h5:
            group = h5.get("examples")
            if not isinstance(group, h5py.Group):
                raise DataError(f, f"lacks the group 'examples' of TFF's HDF5ClientData (has "
                                   f"{sorted(h5.keys())})")
            if len(group) == 0:
                raise DataError(f, "group 'examples' holds no clients")
            for cid in group:
                what = f"client {cid!r}"
                g = group[cid]
                if not isinstance(g, h5py.Group) or "pixels" not in g or "label" not in g:
                    raise DataError(f, f"examples/{cid} must hold datasets 'pixels' and 'label'")
                try:
                    pixels = np.asarray(g["pixels"][()], dtype=np.float32)
                    labels = np.asarray(g["label"][()])
                except (OSError, ValueError, TypeError) as exc:
                    raise DataError(f, f"{what}: cannot be read ({exc})") from None
                if pixels.ndim == 2 and pixels.shape[1] == 784:
                    pixels = pixels.reshape(-1, 28, 28)
                if pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
                    raise DataError(f, f"{what}: 'pixels' has shape {pixels.shape}, expected "
                                       "[n, 28, 28]")
                labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 \
                    else labels
                if labels.shape != (pixels.shape[0],):
                    raise DataError(f, f"{what}: 'label' has shape {labels.shape} for "
                                       f"{pixels.shape[0]} images")
                if pixels.shape[0] == 0:
                    raise DataError(f, f"{what} has no samples (an empty client)")
                x = float_pixels_to_u8(pixels, f, what).reshape(-1, 1, 28, 28)
                yield Chunk(x, to_labels(labels, spec.num_classes, f, what), str(cid), split)
