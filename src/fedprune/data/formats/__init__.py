"""On-disk formats: each reader turns files into :class:`Chunk` s of uint8 images and labels.

A reader yields chunks in file order; the cache builder (``fedprune.data.cache``) writes them
to one memory-mapped array.  Every problem with the files is raised as
:class:`~fedprune.data.errors.DataError` naming the file and what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DatasetSpec

SQLITE_MAGIC = b"SQLite format 3\x00"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PARQUET_MAGIC = b"PAR1"
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass
class Chunk:
    """Consecutive samples of one split: ``x`` uint8 ``[n, C, H, W]``, ``y`` int64 ``[n]``.

    ``clients`` is one client id for the whole chunk or an array of ``n`` ids.
    """

    x: np.ndarray
    y: np.ndarray
    clients: str | np.ndarray
    split: str  # "train" or "test"


@dataclass
class Source:
    """A resolved dataset source: what to read, how, and which files it depends on."""

    spec: DatasetSpec
    fmt: str
    path: Path | None  # None when fetched from the hub
    files: list[Path]  # fingerprinted for cache invalidation
    options: dict[str, str] = field(default_factory=dict)  # settings that change the content
    reader: Callable[[], Iterator[Chunk]] | None = None
    has_test: bool = False  # whether the files carry a test split

    def chunks(self) -> Iterator[Chunk]:
        assert self.reader is not None
        return self.reader()

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else f"hub:{self.spec.hub_id}"


def head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise DataError(path, f"cannot be read: {exc.strerror or exc}") from None


def float_pixels_to_u8(arr: np.ndarray, where: Path | str, what: str) -> np.ndarray:
    """Grey levels in [0, 1] (LEAF, TFF) -> uint8; NaN or out-of-range values are errors."""
    finite = np.isfinite(arr)
    if not finite.all():
        i = np.argwhere(~finite)[0]
        pos = ", ".join(str(int(v)) for v in i[1:])
        raise DataError(where, f"{what}: sample {i[0]} has a non-finite pixel "
                               f"({arr[tuple(i)]}) at position {pos}")
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < -1e-6 or hi > 1 + 1e-6:
        bad = np.argwhere((arr < -1e-6) | (arr > 1 + 1e-6))[0]
        raise DataError(where, f"{what}: pixel values must lie in [0, 1]; sample {bad[0]} has "
                               f"{float(arr[tuple(bad)]):g}")
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_labels(values, num_classes: int, where: Path | str, what: str) -> np.ndarray:
    """Integer class labels in ``[0, num_classes)``; anything else is an error."""
    try:
        y = np.asarray(values)
    except (ValueError, TypeError):
        raise DataError(where, f"{what}: labels are not a flat list of numbers") from None
    if y.ndim != 1:
        raise DataError(where, f"{what}: labels must be a flat list, got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise DataError(where, f"{what}: labels must be numbers, got {y.dtype} values")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(where, f"{what}: label {i} is {y[i]!r}, not a whole number")
    y = y.astype(np.int64)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(where, f"{what}: label {i} is {int(y[i])}, out of range: expected "
                               f"0..{num_classes - 1} ({num_classes} classes)")
    return y


def decode_image(data: bytes | str | Path, size: tuple[int, int] | None, mode: str,
                 where: Path | str, what: str) -> np.ndarray:
    """Decode one image file or byte string to ``[C, H, W]`` uint8.

    ``size=None`` requires the image to be 28x28 already (FEMNIST); otherwise it is resized
    the way LEAF's CelebA model does (``img.resize(size).convert('RGB')``).
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(src) as img:
            if size is not None:
                img = img.resize(size)
            elif img.size != (28, 28):
                raise DataError(where, f"{what}: image is {img.size[0]}x{img.size[1]}, "
                                       "expected 28x28")
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(data if not isinstance(data, bytes) else where,
                        f"image file is missing ({what})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(where, f"{what}: cannot be decoded as an image ({exc})") from None
    if arr.ndim == 2:
        return arr[None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
