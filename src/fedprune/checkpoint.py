"""A run's checkpoint file (``checkpoint.pt``): written atomically, read without pickle.

The payload is ``{spec, state_dict, round, state}`` plus, in budget mode, a snapshot of the
model before an unjudged cut, and a SHA-256 of everything else (:func:`payload_digest`), so a
changed byte is refused on reading.  A checkpoint without its SHA-256 (written before
checksums, or edited and the checksum dropped) is refused too, unless the reader allows it
explicitly: ``allow_unverified=True`` (the command line's ``--allow-unverified-checkpoint``,
carried by :class:`~fedprune.rundir.RunDir`); :func:`read_checkpoint` alone decides.  :class:`~fedprune.rundir.RunDir` reads and writes it by name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "DIGEST_KEY", "load_checkpoint", "payload_digest",
           "read_checkpoint", "rebuild", "save_checkpoint", "spec_of"]

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(
    path: Path, spec: ModelSpec, model: nn.Module, rnd: int, state: dict[str, Any] | None = None,
    snapshot: dict[str, Any] | None = None,
) -> None:
    """Atomically write ``{spec, state_dict, round, state}`` (temp file, fsync, rename).

    ``spec`` and ``state`` (the server's counters and RNG state) are JSON text, so the file
    loads with ``torch.load(..., weights_only=True)``: no pickled objects.  ``snapshot``
    (budget mode: the model before a cut that the guard has not judged yet) is ``{spec JSON
    text, state_dict}``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"spec": spec.to_json(), "state_dict": model.state_dict(), "round": rnd,
               "state": json.dumps(state or {})}
    if snapshot is not None:
        payload["budget_snapshot"] = snapshot
    payload[DIGEST_KEY] = payload_digest(payload)
    try:
        with open(tmp, "wb") as fh:
            try:
                torch.save(payload, fh)
            except RuntimeError as exc:  # torch's writer words a failed write its own way
                raise _write_error(tmp, exc) from None
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial checkpoint behind
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(path: Path, exc: RuntimeError) -> OSError:
    """The ``OSError`` behind a failed ``torch.save`` (torch reports a short write as
    "unexpected pos"): ENOSPC when the disk has no room left, else EIO with torch's words."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"writing the checkpoint failed ({exc})", str(path))


# the checkpoint's own SHA-256 over everything else in it (see payload_digest)
DIGEST_KEY = "sha256"


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint payload (without its digest): every key, string and number,
    and every tensor's name, dtype, shape and bytes, in a fixed order -- so that a flipped
    bit anywhere in what the checkpoint holds changes it, while the file's container (a zip)
    may differ between torch versions."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, dict):
            h.update(b"{")
            for k in sorted(obj, key=str):
                if k == DIGEST_KEY:
                    continue
                h.update(repr(str(k)).encode())
                feed(obj[k])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for v in obj:
                feed(v)
            h.update(b"]")
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            # reshape: a 0-dim tensor of elements wider than one byte (BatchNorm's int64
            # num_batches_tracked) cannot be viewed as bytes; the shape is in the header above
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(obj).encode())

    feed(payload)
    return h.hexdigest()


def _check_finite(path: Path, obj: Any, where: str = "") -> None:
    """``ValueError`` naming the first weight (in nested mappings) that holds NaN or
    infinity."""
    if isinstance(obj, dict):
        for name, value in obj.items():
            _check_finite(path, value, f"{where}{name}" if not where else f"{where}/{name}")
    elif isinstance(obj, torch.Tensor) and obj.is_floating_point() and not bool(
            torch.isfinite(obj).all()):
        raise ValueError(f"checkpoint {path}: {where} holds NaN or infinite values (the run "
                         "diverged before this checkpoint was written); restart the run, for "
                         "example with a lower train.lr")


# the command line's permission to read a checkpoint without a checksum (fedprune run
# --resume, export, bench-latency), named in the refusal
ALLOW_FLAG = "--allow-unverified-checkpoint"
ALLOW_HELP = ("read a checkpoint that carries no checksum (written by fedprune before "
              "checksums, or edited): its contents are not verified")


def load_checkpoint(path: Path, with_state: bool = False, *,
                    allow_unverified: bool = False):  # noqa: ANN201
    """Rebuild the model of a checkpoint from its spec and load its weights (no pickle).

    Returns ``(spec, model, round)``, plus the server state dict when ``with_state``.
    ``allow_unverified``: see :func:`read_checkpoint`.
    """
    return rebuild(path, read_checkpoint(path, allow_unverified=allow_unverified), with_state)


def read_checkpoint(path: Path, *, allow_unverified: bool = False) -> dict[str, Any]:
    """The checkpoint's payload (``weights_only``: no pickled objects), checked for its keys.

    A checkpoint whose contents differ from its checksum is refused; one that carries no
    checksum is refused unless ``allow_unverified`` (the command line's
    ``--allow-unverified-checkpoint``), since nothing then shows that it was not edited.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise ValueError(f"checkpoint {path} cannot be read safely: {exc}") from None
    if not isinstance(ckpt, dict) or not {"spec", "state_dict", "round"} <= set(ckpt):
        raise ValueError(f"checkpoint {path} lacks spec, state_dict or round")
    _verify(path, ckpt, allow_unverified)
    rnd = ckpt["round"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise ValueError(f"checkpoint {path}: round must be an integer >= 0, got {rnd!r:.40}")
    if not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"checkpoint {path}: state_dict is not a mapping of weights")
    _check_finite(path, ckpt["state_dict"])
    _check_finite(path, ckpt.get("budget_snapshot"), "snapshot")
    return ckpt


def _verify(path: Path, ckpt: dict[str, Any], allow_unverified: bool) -> None:
    """The one decision on a checkpoint's checksum: it must be there (unless
    ``allow_unverified``) and match the contents."""
    stored = ckpt.get(DIGEST_KEY)
    if stored is None:
        if not allow_unverified:
            raise ValueError(f"checkpoint {path} carries no checksum (written by fedprune "
                             "before checksums, or edited and its checksum removed): its "
                             "contents cannot be verified, so it is refused; to read it "
                             f"anyway, at that risk, add {ALLOW_FLAG}")
        logger.warning("checkpoint %s carries no checksum (written by fedprune before "
                       "checksums, or edited): read without verifying its contents, as "
                       "%s allows", path, ALLOW_FLAG)
    elif stored != payload_digest(ckpt):
        raise ValueError(f"checkpoint {path} is damaged: its contents do not match the "
                         "checksum written with them (a changed byte on disk or in a copy); "
                         "restore it from a backup or restart the run")


def spec_of(path: Path, ckpt: dict[str, Any]) -> ModelSpec:
    """The model spec of a read checkpoint, every value checked against sane bounds before
    anything is built from it (:meth:`ModelSpec.from_json`); ``ValueError`` naming the file."""
    try:
        return ModelSpec.from_json(ckpt["spec"])
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None


def rebuild(path: Path, ckpt: dict[str, Any], with_state: bool):  # noqa: ANN202
    """``(spec, model, round)`` of a read checkpoint, plus its server state with
    ``with_state``."""
    from .models import build

    spec = spec_of(path, ckpt)
    model = build(spec)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit its architecture: {exc}") from None
    if not with_state:
        return spec, model, int(ckpt["round"])
    try:
        state = json.loads(ckpt.get("state", "{}"))
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint {path}: unreadable loop state ({exc})") from None
    if not state:
        raise ValueError(f"checkpoint {path} holds no loop state to resume from")
    return spec, model, int(ckpt["round"]), state
