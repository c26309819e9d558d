"""The prepared-data cache: one memory-mapped uint8 array plus small per-sample index arrays.

A source is read once (the slow part: parsing JSON, protobufs, images) into a folder::

    <cache_dir>/<name>-<format>-<key>/
        images.u8      uint8 [N, C, H, W], raw (np.memmap), train samples grouped by client
        labels.npy     int64 [N]
        clients.npy    int32 [N]   index into clients.json
        splits.npy     uint8 [N]   0 = train, 1 = test
        clients.json   client ids (writer, celebrity) in first-seen order
        meta.json      shape, classes, mean/std, source path, options and file fingerprints

``<key>`` hashes the source path, format and content options.  ``meta.json`` is written last
and the folder is renamed into place, so a half-built cache is never opened.  On every open
the source files are stat-ed again (size and modification time); if any changed, appeared
or disappeared, the cache no longer matches its source and :class:`DataError` says so
(``data.cache=rebuild`` prepares it again).  ``meta.json`` holds the SHA-256 of every other
file and of itself (``meta_sha256``), and each of its fields is checked before it is used:
a changed byte anywhere is refused as damage, not trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .formats import Source

logger = logging.getLogger(__name__)

# 2: meta.json holds the SHA-256 of every array file; 3: and of itself (META_DIGEST_KEY)
CACHE_VERSION = 3
META_DIGEST_KEY = "meta_sha256"
SPLITS = {"train": 0, "test": 1}
_REORDER_BLOCK = 65_536


def default_cache_dir() -> Path:
    """``$FEDPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedprune``, else ``~/.cache/fedprune``."""
    if env := os.environ.get("FEDPRUNE_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fedprune"


@dataclass
class Prepared:
    """An opened cache (or the same arrays in memory when ``data.cache=off``)."""

    images: np.ndarray  # uint8 [N, C, H, W]; a read-only-on-disk memmap when cached
    labels: np.ndarray  # int64 [N]
    clients: np.ndarray  # int32 [N]
    splits: np.ndarray  # uint8 [N]
    client_names: list[str]
    meta: dict[str, Any]
    directory: Path | None
    reused: bool
    seconds: float


def _source_key(source: Source) -> dict[str, Any]:
    return {"name": source.spec.name, "format": source.fmt, "path": source.label,
            "options": dict(sorted(source.options.items()))}


def cache_dir_for(source: Source, root: Path) -> Path:
    digest = hashlib.sha256(json.dumps(_source_key(source), sort_keys=True).encode()).hexdigest()
    return root / f"{source.spec.name}-{source.fmt}-{digest[:12]}"


def fingerprint(files: list[Path]) -> list[list[Any]]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            raise DataError(f, "file is missing") from None
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def _stale_reason(old: list[list[Any]], new: list[list[Any]]) -> str | None:
    before = {f: (s, m) for f, s, m in old}
    after = {f: (s, m) for f, s, m in new}
    for f in sorted(before.keys() - after.keys()):
        return f"{f} is gone"
    for f in sorted(after.keys() - before.keys()):
        return f"{f} is new"
    for f in sorted(before):
        (s0, m0), (s1, m1) = before[f], after[f]
        if s0 != s1:
            return f"{f} changed size ({s0} -> {s1} bytes)"
        if m0 != m1:
            return f"{f} was modified after the cache was built"
    return None


# ----------------------------------------------------------------------------- building


class _Sink:
    """Collects chunks, either appended to a file or kept in memory."""

    def __init__(self, shape: tuple[int, int, int], images_file: Path | None) -> None:
        self.shape = shape
        self.file = open(images_file, "wb") if images_file is not None else None  # noqa: SIM115
        self.parts: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.clients: list[np.ndarray] = []
        self.splits: list[np.ndarray] = []
        self.names: dict[str, int] = {}
        self.hist = np.zeros((shape[0], 256), dtype=np.int64)  # train pixel histogram
        self.n = 0

    def add(self, chunk: Any) -> None:
        x = np.ascontiguousarray(chunk.x, dtype=np.uint8)
        n = x.shape[0]
        assert x.shape[1:] == self.shape, (x.shape, self.shape)
        assert chunk.y.shape == (n,)
        if isinstance(chunk.clients, str):
            cid = self.names.setdefault(chunk.clients, len(self.names))
            ids = np.full(n, cid, dtype=np.int32)
        else:
            arr = np.asarray(chunk.clients).astype(str)
            uniq, first, inv = np.unique(arr, return_index=True, return_inverse=True)
            for u in uniq[np.argsort(first)].tolist():  # ids in first-seen order
                self.names.setdefault(u, len(self.names))
            lut = np.array([self.names[u] for u in uniq.tolist()], dtype=np.int32)
            ids = lut[inv.reshape(-1)]
        split = SPLITS[chunk.split]
        if self.file is not None:
            self.file.write(x.data)
        else:
            self.parts.append(x)
        self.labels.append(chunk.y.astype(np.int64, copy=False))
        self.clients.append(ids)
        self.splits.append(np.full(n, split, dtype=np.uint8))
        if split == 0:
            for c in range(self.shape[0]):
                self.hist[c] += np.bincount(x[:, c].reshape(-1), minlength=256)
        self.n += n

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _mean_std(hist: np.ndarray) -> tuple[list[float], list[float]]:
    v = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for h in hist:
        total = h.sum()
        m = float((h * v).sum() / total)
        var = float((h * v * v).sum() / total - m * m)
        means.append(round(m, 6))
        stds.append(round(max(var, 1e-12) ** 0.5, 6) or 1.0)
    return means, stds


def _collect(source: Source, images_file: Path | None) -> tuple[_Sink, dict[str, Any]]:
    shape = source.spec.shape
    sink = _Sink(shape, images_file)
    try:
        for chunk in source.chunks():
            sink.add(chunk)
    finally:
        sink.close()
    if sink.n == 0:
        raise DataError(source.label, "holds no samples")
    splits = np.concatenate(sink.splits)
    if not (splits == 0).any():
        raise DataError(source.label, "holds no training samples")
    mean, std = _mean_std(sink.hist)
    meta = {
        "version": CACHE_VERSION, "source": _source_key(source), "name": source.spec.name,
        "format": source.fmt, "shape": list(shape), "num_samples": sink.n,
        "num_classes": source.spec.num_classes, "mean": mean, "std": std,
        "has_test": bool((splits == 1).any()), "natural": source.spec.natural,
    }
    return sink, meta


def _order(clients: np.ndarray, splits: np.ndarray) -> np.ndarray | None:
    """Stable order putting train first, grouped by client; ``None`` if already so."""
    key = np.where(splits == 0, clients.astype(np.int64), np.iinfo(np.int32).max + 1)
    if np.all(key[1:] >= key[:-1]):
        return None
    return np.argsort(key, kind="stable")


def build(source: Source, root: Path) -> Prepared:
    """Read ``source`` into a new cache folder under ``root`` and open it."""
    t0 = time.perf_counter()
    dest = cache_dir_for(source, root)
    root.mkdir(parents=True, exist_ok=True)
    files = fingerprint(source.files)
    tmp = root / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sink, meta = _collect(source, tmp / "images.u8")
        labels = np.concatenate(sink.labels)
        clients = np.concatenate(sink.clients)
        splits = np.concatenate(sink.splits)
        order = _order(clients, splits)
        if order is not None:  # the source did not keep each client's samples together
            shape = (sink.n, *source.spec.shape)
            src = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="r", shape=shape)
            dst = np.memmap(tmp / "images.sorted", dtype=np.uint8, mode="w+", shape=shape)
            for s in range(0, sink.n, _REORDER_BLOCK):
                dst[s : s + _REORDER_BLOCK] = src[order[s : s + _REORDER_BLOCK]]
            dst.flush()
            del src, dst
            os.replace(tmp / "images.sorted", tmp / "images.u8")
            labels, clients, splits = labels[order], clients[order], splits[order]
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "clients.npy", clients)
        np.save(tmp / "splits.npy", splits)
        (tmp / "clients.json").write_text(json.dumps(list(sink.names)), encoding="utf-8")
        meta["sha256"] = {name: _sha256(tmp / name) for name in CHECKED_FILES}
        meta["files"] = files
        meta["seconds_to_build"] = round(time.perf_counter() - t0, 3)
        meta[META_DIGEST_KEY] = _meta_digest(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        old = None
        if dest.exists():  # moved aside in one rename, so the folder is never half-deleted
            old = root / f".{dest.name}.old-{os.getpid()}"
            try:
                os.replace(dest, old)
            except OSError:
                old = None
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out = open_cache(dest, source)
    out.reused, out.seconds = False, time.perf_counter() - t0
    logger.info("prepared %s in %.1f s: %s", source.label, out.seconds, dest)
    return out


def in_memory(source: Source) -> Prepared:
    """The same arrays as a cache, built in memory (``data.cache=off``)."""
    t0 = time.perf_counter()
    sink, meta = _collect(source, None)
    labels = np.concatenate(sink.labels)
    clients = np.concatenate(sink.clients)
    splits = np.concatenate(sink.splits)
    images = np.concatenate(sink.parts)
    order = _order(clients, splits)
    if order is not None:
        images, labels, clients, splits = images[order], labels[order], clients[order], \
            splits[order]
    return Prepared(images, labels, clients, splits, list(sink.names), meta, None, False,
                    time.perf_counter() - t0)


# ----------------------------------------------------------------------------- opening


# the cache's files whose SHA-256 meta.json holds, checked on every open: a changed byte in
# the images or a shuffled label is refused rather than trained on
CHECKED_FILES = ("images.u8", "labels.npy", "clients.npy", "splits.npy", "clients.json")


class OutdatedCache(DataError):
    """A cache written by another fedprune version (``data.cache = auto`` rebuilds it)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _redo(d: Path) -> str:
    return f"; delete {d} or set data.cache=rebuild to prepare it again"


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of ``meta`` without its own digest, as canonical JSON (sorted keys, no
    spaces): the same for the dict written and the dict read back."""
    rest = {k: v for k, v in meta.items() if k != META_DIGEST_KEY}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


# the bounds of meta.json's numbers (those of a model spec: fedprune.models.spec.LIMITS)
_MAX_CHANNELS, _MAX_SIDE, _MAX_CLASSES = 64, 4096, 100_000


def _is_int(v: Any, lo: int, hi: int | None = None) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool) and v >= lo
            and (hi is None or v <= hi))


def _is_fraction(v: Any, lo: float) -> bool:
    """A number in ``[lo, 1]`` (pixel statistics, grey levels scaled to [0, 1])."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= 1


def _meta_problem(meta: dict[str, Any]) -> tuple[str, str] | None:
    """``(field, what it must be)`` for the first field of ``meta.json`` that is missing or
    not what a cache holds, else ``None``."""
    for key in ("name", "format"):
        if not isinstance(meta.get(key), str):
            return key, "must be a string"
    src = meta.get("source")
    if not (isinstance(src, dict) and isinstance(src.get("path"), str)
            and isinstance(src.get("options", {}), dict)):
        return "source", "must be an object with the source's path"
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and _is_int(shape[0], 1, _MAX_CHANNELS)
            and all(_is_int(x, 1, _MAX_SIDE) for x in shape[1:])):
        return "shape", (f"must be [channels, height, width], at most [{_MAX_CHANNELS}, "
                         f"{_MAX_SIDE}, {_MAX_SIDE}]")
    if not _is_int(meta.get("num_samples"), 1):
        return "num_samples", "must be an integer >= 1"
    if not _is_int(meta.get("num_classes"), 1, _MAX_CLASSES):
        return "num_classes", f"must be an integer from 1 to {_MAX_CLASSES:,}"
    for key, lo, span in (("mean", 0.0, "0 to 1"), ("std", 1e-12, "above 0, up to 1")):
        v = meta.get(key)
        if not (isinstance(v, list) and len(v) == shape[0]
                and all(_is_fraction(x, lo) for x in v)):
            return key, f"must list one number per channel ({shape[0]}), each from {span}"
    for key in ("has_test", "natural"):
        if not isinstance(meta.get(key), bool):
            return key, "must be true or false"
    files = meta.get("files")
    if not (isinstance(files, list) and all(
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)
            and _is_int(f[1], 0) and _is_int(f[2], 0) for f in files)):
        return "files", "must list [path, size, modification time] of each source file"
    sums = meta.get("sha256")
    if not (isinstance(sums, dict) and set(sums) == set(CHECKED_FILES)
            and all(isinstance(v, str) for v in sums.values())):
        return "sha256", "must hold the checksums of the cache's files"
    return None


def _read_meta(d: Path) -> dict[str, Any]:
    """``meta.json`` of cache ``d``, checked against its own SHA-256 and field by field:
    :class:`OutdatedCache` for another version's cache, :class:`DataError` naming the file
    (and field) for a damaged one."""
    where = d / "meta.json"
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(d, "is not a complete fedprune cache (meta.json is missing or "
                           "unreadable)" + _redo(d)) from None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        raise OutdatedCache(d, "was written by another fedprune version" + _redo(d))
    stored = meta.get(META_DIGEST_KEY)
    if not isinstance(stored, str):
        raise DataError(where, f"carries no {META_DIGEST_KEY} (its own checksum): it cannot "
                               "be verified, so the cache counts as damaged" + _redo(d))
    if stored != _meta_digest(meta):
        raise DataError(where, "has changed since the cache was built (its SHA-256 differs "
                               f"from its {META_DIGEST_KEY}): it is damaged" + _redo(d))
    problem = _meta_problem(meta)
    if problem is not None:
        key, must = problem
        raise DataError(where, f"{key} {must}, got {meta.get(key)!r:.60}: the cache is "
                               "damaged" + _redo(d))
    return meta


def open_cache(d: Path, source: Source | None) -> Prepared:
    """Open cache folder ``d``; with ``source``, check that it still matches it."""
    t0 = time.perf_counter()
    meta = _read_meta(d)
    if source is not None:
        if meta.get("source") != _source_key(source):
            raise DataError(d, "was built from another source or other settings" + _redo(d))
        reason = _stale_reason(meta.get("files", []), fingerprint(source.files))
        if reason:
            raise DataError(d, f"no longer matches its source: {reason}" + _redo(d))
    n = meta["num_samples"]
    shape = (n, *meta["shape"])
    img_file = d / "images.u8"
    expected = int(np.prod(shape, dtype=np.int64))
    try:
        size = img_file.stat().st_size
    except FileNotFoundError:
        raise DataError(img_file, "is missing from the cache" + _redo(d)) from None
    if size != expected:
        raise DataError(img_file, f"is {'truncated' if size < expected else 'too long'}: "
                                  f"expected {expected} bytes, found {size}" + _redo(d))
    arrays = {}
    for name, dtype in (("labels", np.int64), ("clients", np.int32), ("splits", np.uint8)):
        try:
            a = np.load(d / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(d / f"{name}.npy", f"cannot be read ({exc})" + _redo(d)) from None
        if a.shape != (n,) or a.dtype != dtype:
            raise DataError(d / f"{name}.npy", f"holds {a.dtype} {a.shape}, expected {n} "
                                               f"{np.dtype(dtype)} values" + _redo(d))
        arrays[name] = a
    try:
        names = json.loads((d / "clients.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(d / "clients.json", "is missing or unreadable" + _redo(d)) from None
    sums = meta["sha256"]
    for name in CHECKED_FILES:
        try:
            digest = _sha256(d / name)
        except OSError as exc:
            raise DataError(d / name, f"is missing or unreadable ({exc.strerror or exc})"
                            + _redo(d)) from None
        if digest != sums[name]:
            raise DataError(d / name, "has changed since the cache was built (its SHA-256 "
                                      "differs from meta.json's): it is damaged" + _redo(d))
    # what the arrays hold must fit meta.json (labels index the model's outputs)
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise DataError(d / "clients.json", "does not hold a list of client ids" + _redo(d))
    for name, top, what in (("labels", meta["num_classes"], "num_classes in meta.json"),
                            ("clients", len(names), "the ids in clients.json"),
                            ("splits", len(SPLITS), "train and test")):
        a = arrays[name]
        if a.size and (int(a.min()) < 0 or int(a.max()) >= top):
            raise DataError(d / f"{name}.npy", f"holds values outside 0..{top - 1} ({what}): "
                                               "the cache is damaged" + _redo(d))
    # copy-on-write: torch gets a writable view without a copy, and nothing goes back to disk
    images = np.memmap(img_file, dtype=np.uint8, mode="c", shape=shape)
    return Prepared(images, arrays["labels"], arrays["clients"], arrays["splits"], names, meta,
                    d, True, time.perf_counter() - t0)


def prepare(source: Source, root: Path | None, mode: str = "auto") -> Prepared:
    """Open the cache of ``source`` (``auto``), build it if missing, or rebuild it."""
    if mode == "off":
        return in_memory(source)
    root = root or default_cache_dir()
    d = cache_dir_for(source, root)
    if mode == "auto" and d.exists():
        for attempt in range(3):
            try:
                return open_cache(d, source)
            except OutdatedCache:
                logger.info("%s was prepared by another fedprune version: preparing it again",
                            d)
                break
            except DataError:
                # another process may be putting a rebuilt cache in place right now
                if attempt == 2 or not _being_replaced(root, d):
                    raise
                time.sleep(1.0)
            if not d.exists():
                break
    return build(source, root)


def _being_replaced(root: Path, d: Path) -> bool:
    """Whether a build of ``d`` by another process is under way or just finished."""
    return any(root.glob(f".{d.name}.tmp-*")) or any(root.glob(f".{d.name}.old-*"))
