"""LEAF's JSON files (FEMNIST and CelebA).

Each file is one object ``{"users": [...], "num_samples": [...], "user_data": {user: {"x":
[...], "y": [...]}}}`` (LEAF ``data/<dataset>/preprocess``).  FEMNIST's ``x`` holds flat lists
of 784 grey levels in [0, 1] (``1.0`` is the background); CelebA's ``x`` holds image file
names under ``img_align_celeba`` and ``y`` LEAF's ``TARGET_NAME`` attribute (``Smiling`` unless
changed), so fedprune reads the requested attribute (``Male`` by default) from
``list_attr_celeba.txt`` instead.

Folder layouts accepted for ``data.path`` (LEAF's own ``data/<dataset>/data`` folder works):
``train/*.json`` + ``test/*.json`` (LEAF's split output), ``all_data/*.json``, a folder of
``*.json`` or a single ``.json`` file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..registry import DatasetSpec
from . import Chunk, decode_image, float_pixels_to_u8, to_labels

CELEBA_SIZE = (84, 84)  # LEAF's models/celeba IMAGE_SIZE


def _jsons(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("*.json") if p.is_file()) if d.is_dir() else []


def leaf_files(root: Path) -> list[tuple[str, Path]]:
    """``(split, file)`` pairs under ``root``; ``split`` is ``train`` or ``test``."""
    if root.is_file():
        return [("train", root)]
    for base in (root, root / "data"):
        train = _jsons(base / "train")
        if train:
            return [("train", p) for p in train] + [("test", p) for p in _jsons(base / "test")]
    for d in (root, root / "all_data", root / "data" / "all_data"):
        if found := _jsons(d):
            return [("train", p) for p in found]
    raise DataError(root, "holds no LEAF JSON files: expected train/*.json and test/*.json, "
                          "all_data/*.json or *.json")


def decode_json(path: Path) -> Any:
    """Parse one JSON file (msgspec when installed: ~7x faster than the standard library)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file is missing") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        import msgspec
    except ImportError:
        pass
    else:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            pass  # re-parse below for a line/column message (and NaN, which msgspec rejects)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        end = "truncated" if exc.pos >= len(raw.rstrip()) else "malformed"
        raise DataError(path, f"is not valid JSON ({end} at line {exc.lineno} column "
                              f"{exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(path, "is not UTF-8 JSON text") from None


def _check_top(path: Path, obj: Any) -> tuple[list[str], list[int], dict]:
    if not isinstance(obj, dict):
        raise DataError(path, f"top level must be an object with users, num_samples, "
                              f"user_data; got {type(obj).__name__}")
    missing = [k for k in ("users", "user_data") if k not in obj]
    if missing:
        raise DataError(path, f"lacks the LEAF key(s) {missing} (expected users, num_samples, "
                              "user_data)")
    users, data = obj["users"], obj["user_data"]
    if not isinstance(users, list) or not all(isinstance(u, str | int) for u in users):
        raise DataError(path, "'users' must be a list of user ids")
    if not isinstance(data, dict):
        raise DataError(path, "'user_data' must be an object keyed by user id")
    nums = obj.get("num_samples")
    if nums is not None and (not isinstance(nums, list) or len(nums) != len(users)):
        raise DataError(path, f"'num_samples' must list one count per user ({len(users)} users)")
    return [str(u) for u in users], nums or [None] * len(users), data


def _femnist_pixels(path: Path, user: str, x: list) -> np.ndarray:
    what = f"user {user!r}"
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 784:
        for i, row in enumerate(x):
            if isinstance(row, str):
                raise DataError(path, f"{what}: sample {i} is the string {row[:40]!r}, not 784 "
                                      "pixel values (LEAF CelebA stores file names: use "
                                      "data.name=celeba)")
            if not isinstance(row, list):
                raise DataError(path, f"{what}: sample {i} is not a list of pixel values")
            if len(row) != 784:
                raise DataError(path, f"{what}: sample {i} has {len(row)} pixel values, "
                                      "expected 784 (28x28)")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row):
                raise DataError(path, f"{what}: sample {i} holds a value that is not a number")
        raise DataError(path, f"{what}: 'x' is not a list of 784-value pixel lists")
    return float_pixels_to_u8(arr, path, what).reshape(-1, 1, 28, 28)


def _celeba_attributes(attr_file: Path, attribute: str) -> dict[str, int]:
    try:
        lines = attr_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(attr_file, f"cannot be read: {exc.strerror or exc}") from None
    if len(lines) < 3:
        raise DataError(attr_file, "is too short for CelebA's list_attr_celeba.txt (count line, "
                                   "attribute names, one line per image)")
    names = lines[1].split()
    if attribute not in names:
        raise DataError(attr_file, f"has no attribute {attribute!r}; it has {', '.join(names)}")
    col = names.index(attribute) + 1
    out: dict[str, int] = {}
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or parts[col] not in ("1", "-1"):
            raise DataError(attr_file, f"line {n} is malformed: expected an image name and "
                                       f"{len(names)} values of 1 or -1")
        out[parts[0]] = 1 if parts[col] == "1" else 0
    return out


def celeba_image_dir(root: Path, image_dir: str) -> Path:
    if image_dir:
        d = Path(image_dir).expanduser()
        if not d.is_dir():
            raise DataError(d, "data.image_dir does not exist or is not a folder")
        return d
    base = root if root.is_dir() else root.parent
    cands = [base / "raw" / "img_align_celeba", base / "img_align_celeba",
             base / "data" / "raw" / "img_align_celeba", base.parent / "raw" / "img_align_celeba",
             base.parent / "img_align_celeba"]
    for d in cands:
        if d.is_dir():
            return d
    raise DataError(root, "LEAF CelebA needs its image folder img_align_celeba; none found at "
                          + ", ".join(str(c) for c in cands[:3]) + ": set data.image_dir")


def celeba_attr_file(image_dir: Path) -> Path | None:
    for d in (image_dir.parent, image_dir):
        if (p := d / "list_attr_celeba.txt").is_file():
            return p
    return None


def read_leaf(root: Path, spec: DatasetSpec, attribute: str = "Male",
              image_dir: str = "") -> Iterator[Chunk]:
    """Yield one chunk per user and split, in file order."""
    files = leaf_files(root)
    attrs: dict[str, int] | None = None
    images: Path | None = None
    if spec.name == "celeba":
        images = celeba_image_dir(root, image_dir)
        if attribute != "json":
            attr_file = celeba_attr_file(images)
            if attr_file is None:
                raise DataError(images.parent, "list_attr_celeba.txt is missing: LEAF's JSON "
                                f"labels are its TARGET_NAME (Smiling by default), not "
                                f"{attribute!r}; put list_attr_celeba.txt next to "
                                "img_align_celeba, or set data.attribute=json to use the "
                                "JSON's y labels")
            attrs = _celeba_attributes(attr_file, attribute)
    seen: dict[tuple[str, str], Path] = {}  # (split, user) -> the file that listed it
    for split, path in files:
        obj = decode_json(path)
        users, nums, data = _check_top(path, obj)
        del obj
        for user, n in zip(users, nums, strict=True):
            what = f"user {user!r}"
            first = seen.get((split, user))
            if first is not None:  # each of its samples would count twice
                where = "twice in 'users'" if first == path else f"also in {first}"
                raise DataError(path, f"{what} is listed {where} for the same split: a writer "
                                      "must be listed once (remove the duplicate)")
            seen[(split, user)] = path
            ud = data.get(user)
            if not isinstance(ud, dict) or "x" not in ud or "y" not in ud:
                raise DataError(path, f"{what} is listed in 'users' but has no "
                                      "{'x': [...], 'y': [...]} entry in 'user_data'")
            x, y = ud["x"], ud["y"]
            if not isinstance(x, list) or not isinstance(y, list):
                raise DataError(path, f"{what}: 'x' and 'y' must be lists")
            if len(x) != len(y):
                raise DataError(path, f"{what}: 'x' holds {len(x)} samples but 'y' {len(y)}")
            if n is not None and n != len(x):
                raise DataError(path, f"{what}: num_samples says {n} but 'x' holds {len(x)}")
            if not x:
                raise DataError(path, f"{what} has no samples (an empty client)")
            if spec.name == "femnist":
                pixels = _femnist_pixels(path, user, x)
                labels = to_labels(y, spec.num_classes, path, what)
            else:
                assert images is not None
                if not all(isinstance(v, str) for v in x):
                    raise DataError(path, f"{what}: CelebA 'x' must list image file names "
                                          "(FEMNIST's pixel lists need data.name=femnist)")
                pixels = np.stack([decode_image(images / name, CELEBA_SIZE, "RGB", images / name,
                                                f"{what} in {path.name}") for name in x])
                if attrs is None:
                    labels = to_labels(y, spec.num_classes, path, what)
                else:
                    missing = [name for name in x if name not in attrs]
                    if missing:
                        raise DataError(path, f"{what}: image {missing[0]!r} has no line in "
                                              "list_attr_celeba.txt")
                    labels = np.array([attrs[name] for name in x], dtype=np.int64)
            yield Chunk(pixels, labels, user, split)
        del data


def sniff_leaf(root: Path) -> str:
    """``femnist`` or ``celeba`` from the first bytes of the first JSON file."""
    _, first = leaf_files(root)[0]
    try:
        with open(first, "rb") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise DataError(first, f"cannot be read: {exc.strerror or exc}") from None
    i = text.find(b'"x"')
    if i < 0:
        return "femnist"  # undecided: reading the file will say what is wrong with it
    rest = text[i + 3 :].lstrip(b" \t\r\n:").lstrip(b" \t\r\n[")
    return "celeba" if rest.startswith(b'"') else "femnist"
