"""Every on-disk format, written small in its real layout and read back through the public
loaders; and the malformed variants of each, which must raise DataError naming the file."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprune.config import DataConfig
from fedprune.data import DataError, load_federated, load_prepared
from fedprune.data.synthetic import (
    femnist_clients,
    idx_bytes,
    split_clients,
    write_attr_file,
    write_celeba_images,
    write_idx,
    write_leaf_celeba,
    write_leaf_femnist,
    write_parquet_celeba,
    write_parquet_femnist,
    write_tff_hdf5,
    write_tff_sqlite,
)
from fedprune.data.tfexample import encode_example, parse_example


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("val_fraction", 0.0)  # every sample in training unless a test asks
    return DataConfig(**kw)


def _prep(tmp_path: Path, **kw):
    return load_prepared(_cfg(tmp_path, **kw))


def _raises(tmp_path: Path, where: Path | str, *fragments: str, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_federated(_cfg(tmp_path, **kw), seed=0)
    msg = str(err.value)
    assert str(where) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _all(clients: dict) -> tuple[np.ndarray, np.ndarray]:
    xs = np.concatenate([x.reshape(len(y), 1, 28, 28) for x, y in clients.values()])
    ys = np.concatenate([y for _, y in clients.values()])
    return xs, ys


@pytest.fixture(scope="module")
def writers() -> dict:
    return femnist_clients(6, np.random.default_rng(0), mean_size=12)


@pytest.fixture(scope="module")
def split(writers: dict) -> tuple[dict, dict]:
    return split_clients(writers, 0.25, np.random.default_rng(1))


# ============================================================================ LEAF FEMNIST


@pytest.fixture
def leaf_dir(tmp_path: Path, split: tuple[dict, dict]) -> Path:
    train, test = split
    return write_leaf_femnist(tmp_path / "leaf", train, test, writers_per_file=4)


def test_leaf_femnist_round_trip_is_exact(tmp_path: Path, leaf_dir: Path, split) -> None:
    train, test = split

    prep = _prep(tmp_path, name="femnist", path=str(leaf_dir))

    tr = prep.splits == 0
    x_train, y_train = _all(train)
    assert prep.images.shape == (tr.sum() + (~tr).sum(), 1, 28, 28)
    np.testing.assert_array_equal(prep.images[tr], x_train)  # v/255 floats -> uint8 exactly
    np.testing.assert_array_equal(prep.labels[tr], y_train)
    np.testing.assert_array_equal(prep.images[~tr], _all(test)[0])
    assert prep.client_names == list(train)
    assert prep.meta["num_classes"] == 62 and prep.meta["shape"] == [1, 28, 28]


def test_leaf_femnist_natural_clients_are_the_writers(tmp_path: Path, leaf_dir: Path,
                                                      split) -> None:
    train, test = split

    data = load_federated(_cfg(tmp_path, name="femnist", path=str(leaf_dir),
                               partition="natural", num_clients=6, min_client_size=1), seed=0)

    assert [c.name for c in data.clients] == list(train)
    for c in data.clients:
        x, y = train[c.name]
        assert c.x.dtype == torch.uint8 and tuple(c.x.shape[1:]) == (1, 28, 28)
        np.testing.assert_array_equal(c.x.numpy().reshape(len(y), 28, 28), x)
        np.testing.assert_array_equal(c.y.numpy(), y)
    assert len(data.test_y) == sum(len(y) for _, y in test.values())  # LEAF's own test split
    assert data.num_classes == 62 and tuple(data.input_shape) == (1, 28, 28)


def test_leaf_all_data_folder_without_test_split_holds_out_per_writer(
        tmp_path: Path, writers: dict) -> None:
    root = write_leaf_femnist(tmp_path / "leaf", writers)  # all_data/*.json only

    data = load_federated(_cfg(tmp_path, name="femnist", path=str(root), partition="natural",
                               num_clients=6, min_client_size=1, test_fraction=0.25), seed=0)

    total = sum(len(y) for _, y in writers.values())
    assert sum(len(c) for c in data.clients) + len(data.test_y) == total
    for c in data.clients:
        n = len(writers[c.name][1])
        assert len(c) == n - min(round(0.25 * n), n - 1)


def _leaf_file(tmp_path: Path, obj) -> Path:
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    path = d / "all_data_0.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _leaf_obj(n: int = 3, pixels: int = 784, label: int = 1) -> dict:
    x = [[1.0] * pixels for _ in range(n)]
    return {"users": ["w1"], "num_samples": [n], "user_data": {"w1": {"x": x, "y": [label] * n}}}


def _mutate(kind: str) -> object:
    obj = _leaf_obj()
    if kind == "truncated":
        return json.dumps(obj)[:-40]
    if kind == "malformed":
        return json.dumps(obj).replace(", ", "; ", 1)
    if kind == "pixels":
        obj["user_data"]["w1"]["x"][1] = [1.0] * 783
    elif kind == "label":
        obj["user_data"]["w1"]["y"][2] = 62
    elif kind == "nan":
        obj["user_data"]["w1"]["x"][0][5] = float("nan")
    elif kind == "range":
        obj["user_data"]["w1"]["x"][0][5] = 1.5
    elif kind == "empty":
        obj["user_data"]["w1"] = {"x": [], "y": []}
        obj["num_samples"] = [0]
    elif kind == "missing_user":
        obj["users"].append("w2")
        obj["num_samples"].append(3)
    elif kind == "count":
        obj["num_samples"] = [4]
    elif kind == "keys":
        del obj["user_data"]
    elif kind == "xy":
        obj["user_data"]["w1"]["y"].pop()
    elif kind == "string":
        obj["user_data"]["w1"]["x"][0] = "000001.jpg"
    elif kind == "twice":  # the same writer listed twice: its samples would count twice
        obj["users"].append("w1")
        obj["num_samples"].append(3)
    return obj


@pytest.mark.parametrize(("kind", "fragments"), [
    ("truncated", ["is not valid JSON", "truncated"]),
    ("malformed", ["is not valid JSON", "malformed", "line 1"]),
    ("pixels", ["user 'w1'", "sample 1 has 783 pixel values, expected 784 (28x28)"]),
    ("label", ["user 'w1'", "label 2 is 62, out of range: expected 0..61"]),
    ("nan", ["user 'w1'", "sample 0 has a non-finite pixel (nan)"]),
    ("range", ["pixel values must lie in [0, 1]", "1.5"]),
    ("empty", ["user 'w1' has no samples (an empty client)"]),
    ("missing_user", ["user 'w2' is listed in 'users' but has no"]),
    ("count", ["num_samples says 4 but 'x' holds 3"]),
    ("keys", ["lacks the LEAF key(s) ['user_data']"]),
    ("xy", ["'x' holds 3 samples but 'y' 2"]),
    ("string", ["data.name=celeba"]),
    ("twice", ["user 'w1' is listed twice in 'users' for the same split"]),
])
def test_malformed_leaf_json_names_file_and_problem(tmp_path: Path, kind: str,
                                                    fragments: list[str]) -> None:
    path = _leaf_file(tmp_path, _mutate(kind))

    _raises(tmp_path, path, *fragments, name="femnist", path=str(path.parent))


def test_a_writer_in_two_files_of_one_split_is_refused(tmp_path: Path) -> None:
    first = _leaf_file(tmp_path, _leaf_obj())
    (first.parent / "all_data_1.json").write_text(json.dumps(_leaf_obj()), encoding="utf-8")

    _raises(tmp_path, first.parent / "all_data_1.json", "user 'w1' is listed also in",
            str(first), name="femnist", path=str(first.parent))


def test_leaf_folder_without_json_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    _raises(tmp_path, tmp_path / "empty", "holds no recognised dataset files", name="femnist",
            path=str(tmp_path / "empty"))
    _raises(tmp_path, tmp_path / "nowhere", "data.path does not exist", name="femnist",
            path=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="needs data.path.*data.format=hub"):
        load_federated(_cfg(tmp_path, name="femnist"), seed=0)


# ============================================================================ LEAF CelebA


@pytest.fixture
def celeba_leaf(tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    raw = tmp_path / "celeba" / "data" / "raw"
    names = write_celeba_images(raw / "img_align_celeba", 9, rng)
    male = rng.integers(0, 2, 9).astype(bool)
    write_attr_file(raw / "list_attr_celeba.txt", names,
                    {"Male": male, "Smiling": ~male, "Young": male})
    celebs = {"101": names[:4], "7": names[4:9]}
    smiling = {c: [float(not male[names.index(n)]) for n in v] for c, v in celebs.items()}
    write_leaf_celeba(tmp_path / "celeba" / "data", celebs, smiling)
    return tmp_path / "celeba" / "data", names, male


def test_leaf_celeba_reads_male_from_attribute_file(tmp_path: Path, celeba_leaf) -> None:
    root, names, male = celeba_leaf

    prep = _prep(tmp_path, name="celeba", path=str(root))

    assert prep.images.shape == (9, 3, 84, 84) and prep.meta["num_classes"] == 2
    np.testing.assert_array_equal(prep.labels, male.astype(np.int64))
    assert prep.client_names == ["101", "7"]
    from PIL import Image  # LEAF's own preprocessing: img.resize((84, 84)).convert('RGB')

    with Image.open(root / "raw" / "img_align_celeba" / names[0]) as img:
        ref = np.asarray(img.resize((84, 84)).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(prep.images[0], ref)

    json_labels = _prep(tmp_path, name="celeba", path=str(root), attribute="json")
    np.testing.assert_array_equal(json_labels.labels, (~male).astype(np.int64))  # LEAF's y


def test_leaf_celeba_natural_run_data(tmp_path: Path, celeba_leaf) -> None:
    root, _, _ = celeba_leaf

    data = load_federated(_cfg(tmp_path, name="celeba", path=str(root), partition="natural",
                               num_clients=2, min_client_size=2, test_fraction=0.25), seed=0)

    assert sorted(c.name for c in data.clients) == ["101", "7"]
    assert tuple(data.input_shape) == (3, 84, 84) and data.num_classes == 2
    assert sum(len(c) for c in data.clients) + len(data.test_y) == 9


def test_leaf_celeba_errors(tmp_path: Path, celeba_leaf) -> None:
    root, names, _ = celeba_leaf
    attr = root / "raw" / "list_attr_celeba.txt"

    _raises(tmp_path, attr, "has no attribute 'Bald'", name="celeba", path=str(root),
            attribute="Bald")
    missing = root / "raw" / "img_align_celeba" / names[3]
    missing.unlink()
    _raises(tmp_path, missing, "image file is missing", name="celeba", path=str(root))
    attr.unlink()
    _raises(tmp_path, root / "raw", "list_attr_celeba.txt is missing", "data.attribute=json",
            name="celeba", path=str(root))


# ============================================================================ TFF SQLite


def _db(tmp_path: Path, split: tuple[dict, dict], name: str = "emnist_all.sqlite") -> Path:
    train, test = split
    digits = {k: (x[y < 10], y[y < 10]) for k, (x, y) in train.items() if (y < 10).any()}
    return write_tff_sqlite(tmp_path / name, {"all_train": train, "all_test": test,
                                              "digits_only_train": digits})


def test_tff_sqlite_round_trip_and_subsets(tmp_path: Path, split) -> None:
    train, test = split
    db = _db(tmp_path, split)

    prep = _prep(tmp_path, name="femnist", path=str(db))
    tr = prep.splits == 0
    np.testing.assert_array_equal(prep.images[tr], _all(train)[0])
    np.testing.assert_array_equal(prep.labels[tr], _all(train)[1])
    np.testing.assert_array_equal(prep.images[~tr], _all(test)[0])
    assert prep.meta["format"] == "tff-sqlite"

    digits = _prep(tmp_path, name="femnist", path=str(db), subset="digits_only")
    assert (digits.labels < 10).all() and not (digits.splits == 1).any()

    with pytest.raises(DataError, match=r"set data.subset to one of \['all', 'digits_only'\]"):
        _prep(tmp_path, name="femnist", path=str(db), subset="letters")


def _protobuf_example_class():
    """tf.train.Example built from its .proto definition with the protobuf runtime."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="fp_example_test.proto", package="fptest",
                                           syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    for name, tp in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT),
                     ("Int64List", T.TYPE_INT64)):
        m = f.message_type.add(name=name)
        fld = m.field.add(name="value", number=1, type=tp, label=T.LABEL_REPEATED)
        if tp != T.TYPE_BYTES:
            fld.options.packed = True
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for i, (name, tp) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                    ("int64_list", "Int64List")), start=1):
        feat.field.add(name=name, number=i, type=T.TYPE_MESSAGE, type_name=f".fptest.{tp}",
                       label=T.LABEL_OPTIONAL, oneof_index=0)
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, type_name=".fptest.Feature",
                    label=T.LABEL_OPTIONAL)
    feats.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                    type_name=".fptest.Features.FeatureEntry")
    ex = f.message_type.add(name="Example")
    ex.field.add(name="features", number=1, type=T.TYPE_MESSAGE, type_name=".fptest.Features",
                 label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fptest.Example"))


def test_example_codec_matches_the_protobuf_runtime() -> None:
    Example = _protobuf_example_class()
    pixels = np.linspace(0, 1, 784, dtype=np.float32)

    msg = Example()
    msg.features.feature["pixels"].float_list.value.extend(pixels.tolist())
    msg.features.feature["label"].int64_list.value.append(37)
    msg.features.feature["neg"].int64_list.value.extend([-5, 2**40])
    msg.features.feature["name"].bytes_list.value.append(b"f0000_14")
    parsed = parse_example(msg.SerializeToString())

    np.testing.assert_array_equal(parsed["pixels"], pixels)
    assert parsed["label"].tolist() == [37] and parsed["neg"].tolist() == [-5, 2**40]
    assert parsed["name"] == [b"f0000_14"]

    back = Example.FromString(encode_example({"pixels": pixels, "label": np.array([37])}))
    assert list(back.features.feature["label"].int64_list.value) == [37]
    np.testing.assert_array_equal(np.array(back.features.feature["pixels"].float_list.value,
                                           dtype=np.float32), pixels)


def _sqlite_variant(tmp_path: Path, kind: str) -> Path:
    db = tmp_path / "emnist_all.sqlite"
    if kind == "not_sqlite":
        db.write_text("hello", encoding="utf-8")
        return db
    if kind == "lzma":
        import lzma

        db.write_bytes(lzma.compress(b"SQLite format 3\x00" + b"\x00" * 64))
        return db
    x = np.full((2, 28, 28), 255, dtype=np.uint8)
    write_tff_sqlite(db, {"all_train": {"w1": (x, np.array([3, 4]))}})
    con = sqlite3.connect(db)
    with con:
        blob = {"proto": b"\x0a\x05\xff\xff",
                "pixels": encode_example({"label": np.array([1]),
                                          "pixels": np.ones(783, np.float32)}),
                "label": encode_example({"label": np.array([62]),
                                         "pixels": np.ones(784, np.float32)}),
                "nan": encode_example({"label": np.array([1]),
                                       "pixels": np.full(784, np.nan, np.float32)}),
                "feature": encode_example({"pixels": np.ones(784, np.float32)})}.get(kind)
        if blob is not None:
            con.execute("UPDATE examples SET serialized_example_proto = ? WHERE rowid = 2",
                        (blob,))
        if kind == "null":  # a table without the NOT NULL constraint, holding a NULL
            con.execute("CREATE TABLE loose AS SELECT * FROM examples")
            con.execute("DROP TABLE examples")
            con.execute("ALTER TABLE loose RENAME TO examples")
            con.execute("UPDATE examples SET serialized_example_proto = NULL WHERE rowid = 2")
        if kind == "table":
            con.execute("DROP TABLE client_metadata")
        if kind == "empty":
            con.execute("INSERT INTO client_metadata VALUES ('w2', 'all_train', 0)")
        if kind == "count":
            con.execute("UPDATE client_metadata SET num_examples = 5")
    con.close()
    return db


@pytest.mark.parametrize(("kind", "fragments"), [
    ("not_sqlite", ["is not an SQLite database"]),
    ("lzma", ["LZMA-compressed", "decompress it first"]),
    ("table", ["lacks the table(s) ['client_metadata']"]),
    ("proto", ["client 'w1' (all_train)", "is not a tf.train.Example"]),
    ("null", ["client 'w1' (all_train)", "serialized_example_proto is NULL"]),
    ("pixels", ["'pixels' holds 783 values, expected 784"]),
    ("label", ["label 1 is 62, out of range"]),
    ("nan", ["non-finite pixel"]),
    ("feature", ["lacks feature(s) ['label']"]),
    ("empty", ["client 'w2' (all_train) has num_examples = 0", "empty client"]),
    ("count", ["client_metadata says 5 examples but table examples holds 2"]),
])
def test_malformed_tff_sqlite(tmp_path: Path, kind: str, fragments: list[str]) -> None:
    db = _sqlite_variant(tmp_path, kind)

    _raises(tmp_path, db, *fragments, name="femnist", path=str(db), format="tff-sqlite")


# ============================================================================ TFF HDF5


def test_tff_hdf5_round_trip(tmp_path: Path, split) -> None:
    pytest.importorskip("h5py")
    train, test = split
    d = tmp_path / "h5"
    write_tff_hdf5(d / "fed_emnist_train.h5", train)
    write_tff_hdf5(d / "fed_emnist_test.h5", test)

    prep = _prep(tmp_path, name="femnist", path=str(d))

    order = sorted(train)  # h5py lists groups by name
    assert prep.client_names[: len(order)] == order
    tr = prep.splits == 0
    np.testing.assert_array_equal(prep.images[tr], _all({k: train[k] for k in order})[0])
    assert (~tr).sum() == sum(len(y) for _, y in test.values())
    assert prep.meta["format"] == "tff-hdf5"


def _h5_variant(tmp_path: Path, kind: str) -> Path:
    import h5py

    path = tmp_path / "h5" / "fed_emnist_train.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "not_hdf5":
        path.write_bytes(b"not hdf5 at all")
        return path
    with h5py.File(path, "w") as f:
        if kind == "group":
            f.create_group("clients")
            return path
        g = f.create_group("examples").create_group("f0001_01")
        n = 0 if kind == "empty" else 3
        px = np.ones((n, 27 if kind == "shape" else 28, 28), np.float32)
        if kind == "nan":
            px[1, 3, 3] = np.nan
        g.create_dataset("pixels", data=px)
        g.create_dataset("label", data=np.array([1, 99, 2][:n] if kind == "label"
                                                else [1, 2, 3][:n], dtype=np.int32))
    return path


@pytest.mark.parametrize(("kind", "fragments"), [
    ("not_hdf5", ["is not an HDF5 file"]),
    ("group", ["lacks the group 'examples'"]),
    ("shape", ["client 'f0001_01'", "'pixels' has shape (3, 27, 28), expected [n, 28, 28]"]),
    ("empty", ["client 'f0001_01' has no samples (an empty client)"]),
    ("nan", ["non-finite pixel"]),
    ("label", ["label 1 is 99, out of range"]),
])
def test_malformed_tff_hdf5(tmp_path: Path, kind: str, fragments: list[str]) -> None:
    pytest.importorskip("h5py")
    path = _h5_variant(tmp_path, kind)

    _raises(tmp_path, path, *fragments, name="femnist", path=str(path))


# ============================================================================ Parquet


def test_parquet_femnist_round_trip_groups_interleaved_writers(tmp_path: Path, writers) -> None:
    pytest.importorskip("pyarrow")
    a = dict(list(writers.items())[:3])
    b = dict(list(writers.items())[3:])
    d = tmp_path / "femnist" / "data"
    write_parquet_femnist(d / "train-00000-of-00002.parquet", a)
    write_parquet_femnist(d / "train-00001-of-00002.parquet", {**b, **a})  # writers repeat

    prep = _prep(tmp_path, name="femnist", path=str(tmp_path / "femnist"))

    assert prep.client_names == list(writers)
    assert not (prep.splits == 1).any()  # flwrlabs/femnist has only a train split
    ids = prep.clients
    assert np.all(np.diff(ids) >= 0)  # the cache grouped each writer's samples together
    first = next(iter(writers))
    x0 = prep.images[ids == 0]
    np.testing.assert_array_equal(x0[: len(writers[first][1])].reshape(-1, 28, 28),
                                  writers[first][0])
    assert (ids == 0).sum() == 2 * len(writers[first][1])

    data = load_federated(_cfg(tmp_path, name="femnist", path=str(tmp_path / "femnist"),
                               partition="natural", num_clients=6, min_client_size=1), seed=0)
    assert sorted(c.name for c in data.clients) == sorted(writers)


def test_parquet_celeba_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(5)
    rows = [(c, rng.integers(0, 256, (218, 178, 3), dtype=np.uint8),
             {"Male": bool(i % 2), "Smiling": True}) for i, c in enumerate([4, 4, 9, 9, 9])]
    d = tmp_path / "celeba" / "img_align+identity+attr"
    write_parquet_celeba(d / "train-00000-of-00001.parquet", rows[:4])
    write_parquet_celeba(d / "test-00000-of-00001.parquet", rows[4:])
    write_parquet_celeba(d / "valid-00000-of-00001.parquet", rows[:1])  # not used

    prep = _prep(tmp_path, name="celeba", path=str(tmp_path / "celeba"))

    assert prep.images.shape == (5, 3, 84, 84)
    assert prep.labels.tolist() == [0, 1, 0, 1, 0]
    assert prep.splits.tolist() == [0, 0, 0, 0, 1]
    assert prep.client_names == ["4", "9"]


def _parquet_variant(tmp_path: Path, kind: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pq" / "train-00000-of-00001.parquet"
    x = np.full((2, 28, 28), 255, dtype=np.uint8)
    write_parquet_femnist(path, {"f0001_01": (x, np.array([1, 2]))})
    if kind == "not_parquet":
        path.write_bytes(b"PAR0 not parquet")
        return path
    t = pq.read_table(path)
    if kind == "column":
        t = t.drop_columns(["character"])
    elif kind == "label":
        t = t.set_column(t.schema.get_field_index("character"), "character",
                         pa.array([1, 70], type=pa.int64()))
    elif kind in ("size", "garbage"):
        from fedprune.data.synthetic import _png

        blob = _png(np.zeros((27, 28), np.uint8)) if kind == "size" else b"\x89PNG garbage"
        imgs = [{"bytes": blob, "path": None}, {"bytes": blob, "path": None}]
        t = t.set_column(0, "image", pa.array(imgs, type=t.schema.field("image").type))
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize(("kind", "fragments"), [
    ("not_parquet", ["is not a Parquet file"]),
    ("column", ["lacks the column(s) ['character'] of the flwrlabs/femnist layout"]),
    ("label", ["label 1 is 70, out of range"]),
    ("size", ["row 0: image is 28x27, expected 28x28"]),
    ("garbage", ["row 0: cannot be decoded as an image"]),
])
def test_malformed_parquet(tmp_path: Path, kind: str, fragments: list[str]) -> None:
    pytest.importorskip("pyarrow")
    path = _parquet_variant(tmp_path, kind)

    _raises(tmp_path, path, *fragments, name="femnist", path=str(path.parent))


# ============================================================================ IDX


@pytest.fixture(scope="module")
def mnist_like() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    train = (rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60) % 10)
    test = (rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10)
    return train, test


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, mnist_like, gz: bool) -> None:
    train, test = mnist_like
    d = write_idx(tmp_path / "fashion-mnist", train, test, gz=gz)

    data = load_federated(_cfg(tmp_path, name="fashion-mnist", path=str(d), num_clients=3,
                               min_client_size=2), seed=0)

    assert data.num_classes == 10 and tuple(data.input_shape) == (1, 28, 28)
    np.testing.assert_array_equal(data.test_x.numpy()[:, 0], test[0])  # the t10k files
    assert sum(len(c) for c in data.clients) == 60
    assert data.test_x.dtype == torch.uint8


def test_emnist_idx_is_turned_upright_and_uses_its_subset(tmp_path: Path, mnist_like) -> None:
    (x, y), _ = mnist_like
    d = write_idx(tmp_path / "emnist", (x.transpose(0, 2, 1), y + 1), prefix="emnist-letters-",
                  test=(x[:5].transpose(0, 2, 1), y[:5] + 1), test_name="test")
    write_idx(d, (x, y), prefix="emnist-digits-")

    prep = _prep(tmp_path, name="emnist", path=str(d), subset="letters")

    np.testing.assert_array_equal(prep.images[prep.splits == 0][:, 0], x)
    assert prep.meta["num_classes"] == 27  # letters: labels 1..26
    with pytest.raises(DataError, match="is not an EMNIST subset"):
        _prep(tmp_path, name="emnist", path=str(d), subset="nope")


def _idx_variant(tmp_path: Path, kind: str, mnist_like) -> Path:
    (x, y), _ = mnist_like
    d = write_idx(tmp_path / "mnist", (x[:10], y[:10]))
    img = d / "train-images-idx3-ubyte.gz"
    lab = d / "train-labels-idx1-ubyte.gz"
    if kind == "truncated_gz":
        img.write_bytes(img.read_bytes()[:-100])
        return img
    if kind == "truncated":
        img.write_bytes(gzip.compress(idx_bytes(x[:10])[:-28]))
        return img
    if kind == "magic":
        img.write_bytes(gzip.compress(b"\x01\x02" + idx_bytes(x[:10])[2:]))
        return img
    if kind == "count":
        lab.write_bytes(gzip.compress(idx_bytes(y[:9])))
        return lab
    if kind == "missing":
        lab.unlink()
        return d
    if kind == "label":
        lab.write_bytes(gzip.compress(idx_bytes(np.full(10, 10))))
        return lab
    if kind == "dtype":
        raw = bytearray(idx_bytes(x[:10]))
        raw[2] = 0x0D
        img.write_bytes(gzip.compress(bytes(raw)))
        return img
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "fragments"), [
    ("truncated_gz", ["is a damaged or truncated gzip file"]),
    ("truncated", ["is truncated: header 10x28x28 needs 7840 bytes of data, found 7812"]),
    ("magic", ["is not an IDX file"]),
    ("count", ["holds 9 labels for the 10 images"]),
    ("missing", ["has no matching labels file"]),
    ("label", ["label 0 is 10, out of range: expected 0..9"]),
    ("dtype", ["holds float values; fedprune reads unsigned-byte IDX files"]),
])
def test_malformed_idx(tmp_path: Path, kind: str, fragments: list[str], mnist_like) -> None:
    where = _idx_variant(tmp_path, kind, mnist_like)

    _raises(tmp_path, where, *fragments, name="mnist", path=str(tmp_path / "mnist"),
            num_clients=2, min_client_size=1)


# ============================================================================ hub (offline)


def test_hub_format_reads_what_flwr_datasets_returns(tmp_path: Path, writers,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """format=hub goes through flwr_datasets.FederatedDataset; a stand-in serves a local
    table, so no network is touched."""
    pytest.importorskip("pyarrow")
    import sys
    import types

    import pyarrow.parquet as pq

    path = write_parquet_femnist(tmp_path / "train.parquet", writers)
    calls = []

    class FakeSplit:
        def __init__(self, table) -> None:
            self.data = types.SimpleNamespace(table=table)

    class FakeFederatedDataset:
        def __init__(self, *, dataset: str, partitioners: dict, shuffle: bool) -> None:
            calls.append(dataset)

        def load_split(self, split: str) -> FakeSplit:
            if split != "train":
                raise ValueError(f"The given split: '{split}' is not present")
            return FakeSplit(pq.read_table(path))

    monkeypatch.setitem(sys.modules, "flwr_datasets",
                        types.SimpleNamespace(FederatedDataset=FakeFederatedDataset))

    prep = _prep(tmp_path, name="femnist", format="hub")

    assert calls == ["flwrlabs/femnist"]
    assert prep.client_names == list(writers) and prep.meta["source"]["path"] == \
        "hub:flwrlabs/femnist"
    assert prep.images.shape[0] == sum(len(y) for _, y in writers.values())
    assert _prep(tmp_path, name="femnist", format="hub").reused  # no second fetch
    assert calls == ["flwrlabs/femnist"]


def test_hub_fetch_failure_says_to_use_local_files(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    class Offline:
        def __init__(self, **kw) -> None:
            pass

        def load_split(self, split: str):
            raise ConnectionError("no route to huggingface.co")

    monkeypatch.setitem(sys.modules, "flwr_datasets",
                        types.SimpleNamespace(FederatedDataset=Offline))

    with pytest.raises(DataError, match="hub:flwrlabs/celeba: could not be fetched.*set "
                                        "data.path"):
        _prep(tmp_path, name="celeba", format="hub")
