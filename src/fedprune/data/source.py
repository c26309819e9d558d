"""From the data config to a :class:`~fedprune.data.formats.Source`: which files, which reader."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .errors import DataError
from .formats import HDF5_MAGIC, PARQUET_MAGIC, SQLITE_MAGIC, XZ_MAGIC, Source, head
from .registry import spec_for


def detect_format(path: Path) -> str:
    """The on-disk format of ``path`` (a file or folder), from names and magic bytes."""
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.is_file():
        magic = head(path)
        if magic.startswith(SQLITE_MAGIC):
            return "tff-sqlite"
        if magic.startswith(HDF5_MAGIC):
            return "tff-hdf5"
        if magic.startswith(PARQUET_MAGIC):
            return "parquet"
        if magic.startswith(XZ_MAGIC) or path.suffix in (".lzma", ".xz"):
            raise DataError(path, "is compressed: decompress it first (e.g. `unlzma -k FILE`)")
        if path.suffix == ".json" or magic.lstrip()[:1] in (b"{", b"["):
            return "leaf"
        if "idx" in path.name:
            raise DataError(path, "IDX data needs data.path to be the folder holding the "
                                  "images and labels files")
        suffix = {".sqlite": "tff-sqlite", ".db": "tff-sqlite", ".h5": "tff-hdf5",
                  ".hdf5": "tff-hdf5", ".parquet": "parquet"}.get(path.suffix)
        if suffix:
            return suffix  # the reader explains what is wrong with the content
        raise DataError(path, "format not recognised: expected LEAF JSON, TFF SQLite or HDF5, "
                              "Parquet, or a folder of IDX files")
    names = [p.name for p in path.iterdir()]
    if any("-idx3-ubyte" in n for n in names):
        return "idx"
    if any(n.endswith((".sqlite", ".sqlite3", ".db")) for n in names):
        return "tff-sqlite"
    if any(n.endswith((".h5", ".hdf5")) for n in names):
        return "tff-hdf5"
    if next(path.rglob("*.parquet"), None) is not None:
        return "parquet"
    for d in (path, path / "train", path / "all_data", path / "data" / "train",
              path / "data" / "all_data"):
        if d.is_dir() and next(d.glob("*.json"), None) is not None:
            return "leaf"
    raise DataError(path, "holds no recognised dataset files: expected LEAF JSON (train/, "
                          "test/, all_data/), TFF .sqlite or .h5, .parquet, or IDX files")


def _single(path: Path, exts: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in exts)
    if len(found) != 1:
        raise DataError(path, f"expected one {what} file here, found "
                              f"{[p.name for p in found] or 'none'}: set data.path to the file")
    return found[0]


def guess_name(path: Path, fmt: str) -> str:
    """The dataset a path most likely holds (``fedprune data info PATH``)."""
    from .formats.leaf import sniff_leaf
    from .formats.parquet import sniff_parquet

    if fmt == "leaf":
        return sniff_leaf(path)
    if fmt == "parquet":
        return sniff_parquet(path)
    if fmt in ("tff-sqlite", "tff-hdf5"):
        return "femnist"
    names = " ".join(p.name for p in path.iterdir()) if path.is_dir() else path.name
    if "emnist-" in names:
        return "emnist"
    return "fashion-mnist" if "fashion" in str(path).lower() else "mnist"


def resolve_source(cfg: DataConfig) -> Source:
    """The files and reader for ``cfg`` (no data is read yet, except magic bytes)."""
    spec = spec_for(cfg.name, cfg.subset)
    if cfg.name == "digits":
        raise DataError(None, "digits is embedded and has no source files")
    fmt = cfg.format
    raw_path = cfg.path or spec.default_path
    if fmt != "hub" and not raw_path:
        hint = (f", or data.format=hub to fetch {spec.hub_id} through flwr-datasets (online)"
                if spec.hub_id else "")
        raise DataError(None, f"data.name={cfg.name} needs data.path: the local file or folder "
                              f"holding it ({'/'.join(spec.formats)}){hint}")
    if fmt == "hub":
        if not spec.hub_id:
            raise DataError(None, f"data.format=hub: {cfg.name} is not published for "
                                  "flwr-datasets; set data.path")
        from .formats.parquet import read_hub

        return Source(spec, "hub", None, [], {"attribute": cfg.attribute},
                      lambda: read_hub(spec, cfg.attribute), has_test=cfg.name == "celeba")
    path = Path(raw_path).expanduser()
    if not path.exists():
        extra = ""
        if cfg.name == "fashion-mnist" and not cfg.path:
            extra = " (install the Debian package: apt-get install dataset-fashion-mnist)"
        raise DataError(path, f"data.path does not exist{extra}")
    path = path.resolve()
    if not (path.is_file() or path.is_dir()):
        raise DataError(path, "data.path is neither a regular file nor a folder (a device, "
                              "FIFO or socket cannot be read as a dataset)")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in spec.formats:
        raise DataError(path, f"holds {fmt} data, which {cfg.name} is not read from (its "
                              f"formats: {', '.join(spec.formats)})")
    opts: dict[str, str] = {}
    if fmt == "leaf":
        from .formats.leaf import celeba_attr_file, celeba_image_dir, leaf_files, read_leaf

        pairs = leaf_files(path)
        files = [p for _, p in pairs]
        if cfg.name == "celeba":
            images = celeba_image_dir(path, cfg.image_dir)
            files.append(images)  # the folder's mtime changes when images are added or removed
            if cfg.attribute != "json" and (attr := celeba_attr_file(images)) is not None:
                files.append(attr)
            opts = {"attribute": cfg.attribute, "image_dir": str(images)}
        return Source(spec, fmt, path, files, opts,
                      lambda: read_leaf(path, spec, cfg.attribute, cfg.image_dir),
                      has_test=any(s == "test" for s, _ in pairs))
    if fmt == "tff-sqlite":
        from .formats.tff import read_sqlite, sqlite_splits

        db = _single(path, (".sqlite", ".sqlite3", ".db"), "SQLite")
        _, test = sqlite_splits(db, cfg.subset)
        return Source(spec, fmt, db, [db], {"subset": cfg.subset or "all"},
                      lambda: read_sqlite(db, spec, cfg.subset), has_test=test is not None)
    if fmt == "tff-hdf5":
        from .formats.tff import h5_files, read_hdf5

        pairs = h5_files(path, cfg.subset)
        return Source(spec, fmt, path, [p for _, p in pairs], {"subset": cfg.subset or "all"},
                      lambda: read_hdf5(path, spec, cfg.subset),
                      has_test=any(s == "test" for s, _ in pairs))
    if fmt == "parquet":
        from .formats.parquet import parquet_files, read_parquet

        pairs = parquet_files(path)
        opts = {"attribute": cfg.attribute} if cfg.name == "celeba" else {}
        return Source(spec, fmt, path, [p for _, p in pairs], opts,
                      lambda: read_parquet(path, spec, cfg.attribute),
                      has_test=any(s == "test" for s, _ in pairs))
    if fmt == "idx":
        from .formats.idx import idx_pairs, read_idx

        triples = idx_pairs(path, spec, cfg.subset)
        files = [p for _, a, b in triples for p in (a, b)]
        return Source(spec, fmt, path, files, {"subset": cfg.subset} if cfg.subset else {},
                      lambda: read_idx(path, spec, cfg.subset),
                      has_test=any(s == "test" for s, _, _ in triples))
    raise DataError(path, f"unknown data.format {fmt!r}")  # pragma: no cover - config checks

