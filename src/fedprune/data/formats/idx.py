"""IDX files (MNIST, Fashion-MNIST, EMNIST), raw or gzip-compressed.

An IDX file is ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the values;
fedprune reads type ``0x08`` (unsigned byte), which all three datasets use.  A folder holds
``train-images-idx3-ubyte``/``train-labels-idx1-ubyte`` and ``t10k-...`` (MNIST, Fashion-MNIST;
Debian's ``dataset-fashion-mnist`` installs them gzipped under
``/usr/share/datasets/fashion-mnist``) or ``emnist-<subset>-{train,test}-...`` (EMNIST, whose
images are stored transposed and are turned upright here).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import EMNIST_SUBSETS, DatasetSpec
from . import Chunk, to_labels

_PAT = re.compile(r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)-"
                  r"idx(?P<ndim>[13])-ubyte(?P<gz>\.gz)?$")
_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int",
          0x0D: "float", 0x0E: "double"}


def read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """One IDX file as a uint8 array, with every header field checked against the data.

    Only as many bytes as the header announces (plus one, to tell a longer file) are read,
    so a small gzip file that inflates to far more than its header says fails at once.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(path, "is not an IDX file (its first two bytes must be zero)")
            dtype, nd = head[2], head[3]
            if dtype != 0x08:
                name = _TYPES.get(dtype, f"unknown type 0x{dtype:02X}")
                raise DataError(path, f"holds {name} values; fedprune reads unsigned-byte IDX "
                                      "files")
            if nd != ndim:
                raise DataError(path, f"has {nd} dimensions, expected {ndim}")
            sizes = f.read(4 * nd)
            if len(sizes) < 4 * nd:
                raise DataError(path, "is truncated inside its header")
            dims = tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4", count=nd))
            expected = int(np.prod(dims, dtype=np.int64))
            shape = "x".join(map(str, dims))
            if path.suffix != ".gz":  # a raw file's size tells at once
                body = path.stat().st_size - 4 - 4 * nd
                if body != expected:
                    state = "truncated" if body < expected else "longer than its header says"
                    raise DataError(path, f"is {state}: header {shape} needs {expected} bytes "
                                          f"of data, found {body}")
            raw = f.read(expected)
            if len(raw) < expected:
                raise DataError(path, f"is truncated: header {shape} needs {expected} bytes of "
                                      f"data, found {len(raw)}")
            if f.read(1):
                raise DataError(path, f"is longer than its header says: header {shape} needs "
                                      f"{expected} bytes of data, and more follow")
    except FileNotFoundError:
        raise DataError(path, "file is missing") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(path, f"is a damaged or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read: {exc.strerror or exc}") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def idx_pairs(path: Path, spec: DatasetSpec, subset: str) -> list[tuple[str, Path, Path]]:
    """``(split, images, labels)`` for the train and test files in folder ``path``."""
    if not path.is_dir():
        raise DataError(path, "does not exist" if not path.exists() else
                              "IDX data needs a folder holding the images and labels files")
    found: dict[tuple[str, str, str], Path] = {}
    for p in sorted(path.iterdir()):
        m = _PAT.match(p.name)
        if m:
            split = "train" if m["split"] == "train" else "test"
            key = (m["prefix"], split, m["kind"])
            if key not in found or p.suffix != ".gz":  # prefer raw over gzip when both exist
                found[key] = p
    prefixes = sorted({k[0] for k in found})
    if spec.name == "emnist":
        subset = subset or "byclass"
        if subset not in EMNIST_SUBSETS:
            raise DataError(path, f"data.subset={subset!r} is not an EMNIST subset: choose one "
                                  f"of {list(EMNIST_SUBSETS)}")
        want = f"emnist-{subset}-"
    else:
        plain = [p for p in prefixes if not p.startswith("emnist-")]
        want = subset or ("" if "" in plain else (plain[0] if len(plain) == 1 else None))  # type: ignore[assignment]
    if want is None or (want, "train", "images") not in found:
        raise DataError(path, "holds no " + (f"{want}train-images-idx3-ubyte[.gz]" if want
                        is not None else "single set of train-images-idx3-ubyte[.gz]") +
                        (f"; file prefixes found: {prefixes} (set data.subset)" if prefixes
                         else ""))
    out = []
    for split in ("train", "test"):
        img, lab = found.get((want, split, "images")), found.get((want, split, "labels"))
        if img is None and lab is None and split == "test":
            continue
        if img is None or lab is None:
            have = img or lab
            kind = "labels" if lab is None else "images"
            raise DataError(path, f"{have.name if have else split} has no matching {kind} file "
                                  f"({want}{'t10k' if split == 'test' else split}-{kind}-"
                                  f"idx{1 if kind == 'labels' else 3}-ubyte[.gz] is missing)")
        out.append((split, img, lab))
    return out


def read_idx(path: Path, spec: DatasetSpec, subset: str = "") -> Iterator[Chunk]:
    for split, img_path, lab_path in idx_pairs(path, spec, subset):
        images = read_idx_file(img_path, 3)
        labels = read_idx_file(lab_path, 1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(lab_path, f"holds {labels.shape[0]} labels for the "
                                      f"{images.shape[0]} images of {img_path.name}")
        if images.shape[1:] != spec.shape[1:]:
            raise DataError(img_path, f"images are {images.shape[1]}x{images.shape[2]}, "
                                      f"expected {spec.shape[1]}x{spec.shape[2]}")
        if images.shape[0] == 0:
            raise DataError(img_path, "holds no images")
        if spec.name == "emnist":
            images = images.transpose(0, 2, 1)  # EMNIST's IDX images are stored transposed
        y = to_labels(labels, spec.num_classes, lab_path, f"{split} labels")
        step = 10_000
        for s in range(0, images.shape[0], step):
            yield Chunk(np.ascontiguousarray(images[s : s + step, None]), y[s : s + step],
                        "", split)
