"""Parquet as published on the Hugging Face Hub for flwr-datasets (and fetched through it).

``flwrlabs/femnist``: columns ``image`` (28x28 PNG), ``writer_id`` (string, e.g. ``f0000_14``),
``hsf_id`` (int) and ``character`` (class label 0..61: digits, then upper case, then lower
case, LEAF's order); one split, ``train``.

``flwrlabs/celeba`` (config ``img_align+identity+attr``): columns ``image`` (178x218 JPEG),
``celeb_id`` (int) and the 40 CelebA attributes as booleans (``Male``, ``Smiling``, ...);
splits ``train``, ``valid``, ``test``.  Images are resized to 84x84 RGB as LEAF does.

A Hugging Face ``Image`` column is a struct ``{bytes, path}``; a plain binary column works too.
The split of a file comes from its name or folder (``test``, ``valid``/``validation``, else
``train``); the ``valid`` split is not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DatasetSpec
from . import PARQUET_MAGIC, Chunk, decode_image, head, to_labels
from .leaf import CELEBA_SIZE

COLUMNS = {  # dataset -> (client id column, label column or None = data.attribute)
    "femnist": ("writer_id", "character"),
    "celeba": ("celeb_id", None),
}


def split_of(path: Path) -> str:
    for part in reversed(path.parts):
        low = part.lower()
        if low.startswith("test"):
            return "test"
        if low.startswith(("valid", "validation", "val-", "val_")):
            return "valid"
        if low.startswith("train"):
            return "train"
    return "train"


def parquet_files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(split_of(path), path)]
    if not path.is_dir():
        raise DataError(path, "does not exist")
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise DataError(path, "holds no .parquet files")
    out = [(split_of(p.relative_to(path)), p) for p in files]
    used = sorted(((s, p) for s, p in out if s != "valid"), key=lambda sp: (sp[0] != "train",
                                                                           str(sp[1])))
    if not any(s == "train" for s, _ in used):
        raise DataError(path, "holds no training-split .parquet file (names starting with "
                              "'train', or any name without test/valid)")
    return used


def _need(spec: DatasetSpec, attribute: str) -> tuple[str, str]:
    cid, label = COLUMNS[spec.name]
    return cid, label or attribute


def table_chunks(batches, spec: DatasetSpec, attribute: str, where: Path | str,
                 split: str) -> Iterator[Chunk]:
    """Chunks from record batches of a flwrlabs/* table (shared with the hub reader)."""
    import pyarrow as pa

    cid_col, label_col = _need(spec, attribute)
    row = 0
    for batch in batches:
        names = batch.schema.names
        missing = [c for c in ("image", cid_col, label_col) if c not in names]
        if missing:
            raise DataError(where, f"lacks the column(s) {missing} of the {spec.hub_id} layout "
                                   f"(has {names})")
        img = batch.column(names.index("image"))
        if pa.types.is_struct(img.type):
            img = img.field("bytes")
        blobs = img.to_pylist()
        ids = batch.column(names.index(cid_col)).to_pylist()
        raw = batch.column(names.index(label_col)).to_numpy(zero_copy_only=False)
        if spec.name == "celeba" and raw.dtype.kind in "iu" and raw.size and raw.min() < 0:
            raw = (raw > 0).astype(np.int64)  # -1/1 attribute coding
        labels = to_labels(raw, spec.num_classes, where, f"rows {row}..{row + len(ids) - 1}")
        xs = []
        for i, blob in enumerate(blobs):
            what = f"row {row + i}"
            if not isinstance(blob, bytes | bytearray) or not blob:
                raise DataError(where, f"{what}: the image holds no bytes")
            if ids[i] is None:
                raise DataError(where, f"{what}: {cid_col} is empty")
            if spec.name == "femnist":
                xs.append(decode_image(bytes(blob), None, "L", where, what))
            else:
                xs.append(decode_image(bytes(blob), CELEBA_SIZE, "RGB", where, what))
        if xs:
            yield Chunk(np.stack(xs), labels, np.asarray([str(v) for v in ids]), split)
        row += len(ids)


def read_parquet(path: Path, spec: DatasetSpec, attribute: str = "Male") -> Iterator[Chunk]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(path, "reading Parquet needs pyarrow: pip install 'fedprune[data]' "
                              "(or pip install pyarrow)") from None
    cid_col, label_col = _need(spec, attribute)
    for split, f in parquet_files(path):
        if head(f, 4) != PARQUET_MAGIC:
            raise DataError(f, "is not a Parquet file")
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f, f"cannot be read as Parquet ({exc})") from None
        missing = [c for c in ("image", cid_col, label_col) if c not in names]
        if missing:
            raise DataError(f, f"lacks the column(s) {missing} of the {spec.hub_id} layout "
                               f"(has {names})")
        try:
            yield from table_chunks(pf.iter_batches(batch_size=2048,
                                                    columns=["image", cid_col, label_col]),
                                    spec, attribute, f, split)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f, f"cannot be read as Parquet ({exc})") from None


def sniff_parquet(path: Path) -> str:
    import pyarrow.parquet as pq

    _, f = parquet_files(path)[0]
    try:
        names = pq.ParquetFile(f).schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise DataError(f, f"cannot be read as Parquet ({exc})") from None
    if "writer_id" in names:
        return "femnist"
    if "celeb_id" in names:
        return "celeba"
    raise DataError(f, f"has columns {names}: neither writer_id (flwrlabs/femnist) nor "
                       "celeb_id (flwrlabs/celeba)")


def read_hub(spec: DatasetSpec, attribute: str = "Male") -> Iterator[Chunk]:
    """Fetch ``spec.hub_id`` through flwr-datasets (needs the network the first time)."""
    import os

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    where = f"hub:{spec.hub_id}"
    try:
        from flwr_datasets import FederatedDataset
    except ImportError:
        raise DataError(where, "data.format=hub needs flwr-datasets: pip install "
                               "'fedprune[data]', or download the files and set data.path") \
            from None
    fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": 1}, shuffle=False)
    try:
        train = fds.load_split("train")
    except Exception as exc:  # noqa: BLE001 - network, hub or cache failures alike
        raise DataError(where, f"could not be fetched through flwr-datasets ({exc}); offline, "
                               "set data.path to local files") from None
    splits = [("train", train)]
    try:
        splits.append(("test", fds.load_split("test")))
    except ValueError:
        pass  # flwrlabs/femnist has only a train split
    for split, ds in splits:
        yield from table_chunks(ds.data.table.to_batches(max_chunksize=2048), spec, attribute,
                                where, split)
