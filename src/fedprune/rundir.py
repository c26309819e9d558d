"""The run directory: its file names, its state, its checkpoint, and reading a finished run.

Every engine writes the same files (docs/run-files.md): ``config.json``, ``rounds.jsonl``,
``summary.json`` (its presence means the run finished), ``checkpoint.pt`` (after every
round), ``latency.json`` (``fedprune bench-latency --save``) and PNG plots.  Everything that
reads or writes them by name goes through :class:`RunDir`.  Whether a run may start in a
folder, or continue the run there, is decided once for every engine by :meth:`RunDir.open`
(:mod:`fedprune.runpolicy`); the checkpoint's format is :mod:`fedprune.checkpoint`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from torch import nn

from .checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    read_checkpoint,
    rebuild,
    save_checkpoint,
    spec_of,
)
from .config_parse import ENGINE_KEY, ENGINES
from .metrics.recorder import (
    CONFIG_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    Recorder,
    atomic_write_json,
    read_rounds,
)
from .models import ModelSpec
from .runpolicy import Engine, OpenedRun, RunDirRefused, open_run

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "LATENCY_FILE", "ROUNDS_FILE", "SUMMARY_FILE",
           "OpenedRun", "RunDir", "RunDirBusy", "RunDirRefused", "RunLock", "RunState",
           "load_checkpoint", "save_checkpoint"]

LATENCY_FILE = "latency.json"
LOCK_FILE = ".lock"  # held (flock) by the process writing the run; holds its pid
# what an interrupted run leaves that a fresh start must clear (temporary files included)
RUN_FILES = (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, CHECKPOINT_FILE)

RunState = Literal["fresh", "resumable", "finished"]


class RunDirBusy(ValueError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive ``flock`` on a run directory's lock file, held until :meth:`release`
    (or the process ends: the system drops it then, so a killed run never leaves a stale
    lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirBusy(f"{path.parent} is in use by another fedprune process{who}: "
                             "wait for it to finish, or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunDir:
    """One run directory (it need not exist yet)."""

    def __init__(self, path: Path | str, *, allow_unverified: bool = False) -> None:
        self.path = Path(path)
        # read a checkpoint that carries no checksum (--allow-unverified-checkpoint)
        self.allow_unverified = bool(allow_unverified)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ file names

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def rounds_file(self) -> Path:
        return self.path / ROUNDS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def latency_file(self) -> Path:
        return self.path / LATENCY_FILE

    def lock(self) -> RunLock:
        """Take the directory's exclusive lock (creating the directory): one writer at a
        time.  :class:`RunDirBusy`, at once, while another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock(self.path / LOCK_FILE)

    def stale_files(self) -> list[Path]:
        """The run files (and their temporary files) present, for a clean restart.

        Temporary files are ``NAME.tmp`` (rounds, checkpoint) and ``.NAME.*.tmp`` (the
        atomic JSON writes of config, summary and latency).
        """
        if not self.path.is_dir():
            return []
        found = [self.path / n for f in RUN_FILES for n in (f, f + ".tmp")
                 if (self.path / n).exists()]
        for name in (*RUN_FILES, LATENCY_FILE):
            found += sorted(self.path.glob(f".{name}.*tmp"))
        return found

    def can_start_new_run(self) -> bool:
        """Whether a new run may start here: the folder is absent, empty, or holds only what
        a run stopped before its first checkpoint leaves (``config.json``, temporary files:
        :meth:`stale_files`, which :meth:`open` removes).  Anything else -- a run with a
        checkpoint, a finished run, other files -- is never touched."""
        if not self.path.exists():
            return True
        if (not self.path.is_dir() or self.state() != "fresh"
                or self.checkpoint_file.exists()):  # a checkpoint is never a leftover
            return False
        stale = set(self.stale_files())
        return all(entry in stale or entry.name == LOCK_FILE for entry in self.path.iterdir())

    def stopped_before_first_checkpoint(self) -> bool:
        """Whether the folder holds a run killed before its first checkpoint (its
        ``config.json`` and leftovers only): resuming it starts it again from round 1."""
        return (self.state() == "fresh" and self.config_file.is_file()
                and self.can_start_new_run())

    def written_by(self) -> str | None:
        """``"flower"`` or ``"in-process"``: the engine that wrote this run, as its
        ``config.json`` records it; for a run written before the engine was recorded, told
        from its round records (the Flower app's carry ``failures``).  None when neither
        says."""
        try:
            engine = self.read_config_dict().get(ENGINE_KEY) if self.config_file.is_file() else None
        except ValueError:
            engine = None
        if engine in ENGINES:
            return engine
        if not self.rounds_file.is_file():
            return None
        rows = read_rounds(self.path, torn_tail=True)
        if not rows:
            return None
        return "flower" if "failures" in rows[0] else "in-process"

    def open(self, cfg, *, resume: bool, engine: Engine) -> OpenedRun:  # noqa: ANN001
        """The one policy for starting or resuming a run here (:func:`~fedprune.runpolicy.
        open_run`): decide, take the lock, clear a killed run's leftovers; refusals are
        :class:`~fedprune.runpolicy.RunDirRefused`."""
        return open_run(self, cfg, resume=resume, engine=engine)

    # ------------------------------------------------------------------ state

    def state(self) -> RunState:
        """``finished`` (``summary.json``), ``resumable`` (config and checkpoint), else
        ``fresh`` (absent, empty, or killed before its first checkpoint)."""
        if self.summary_file.is_file():
            return "finished"
        if self.checkpoint_file.is_file() and self.config_file.is_file():
            return "resumable"
        return "fresh"

    # ------------------------------------------------------------------ reading

    def read_config_dict(self) -> dict[str, Any]:
        """``config.json`` as written (a dict); ``ValueError`` naming the file if unreadable."""
        return _read_json(self.config_file)

    def read_config(self):  # noqa: ANN201 - ExperimentConfig (imported lazily: no cycle)
        from .config import from_dict

        return from_dict(self.read_config_dict())

    def config_differences(self, cfg) -> list[tuple[str, Any, Any]]:  # noqa: ANN001
        """``(dotted key, stored value, cfg's value)`` wherever ``config.json`` and the
        configuration ``cfg`` differ, compared by *resolved* values: the stored file is parsed
        into the configuration tree and written out again, so a setting added since it was
        written takes its default there.  ``ValueError`` if it cannot be read or no longer
        parses."""
        stored = _plain(self.read_config().to_dict())
        current = _plain(cfg.to_dict())
        out: list[tuple[str, Any, Any]] = []

        def walk(a: Any, b: Any, key: str) -> None:
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            elif a != b:
                out.append((key, a, b))

        walk(stored, current, "")
        return out

    def read_summary(self) -> dict[str, Any]:
        return _read_json(self.summary_file)

    def read_rounds(self) -> list[dict[str, Any]]:
        return read_rounds(self.path)

    def _allow(self, allow_unverified: bool | None) -> bool:
        return self.allow_unverified if allow_unverified is None else allow_unverified

    def rounds_done(self, *, allow_unverified: bool | None = None) -> int:
        """The last round the checkpoint holds (read without rebuilding its model).
        ``allow_unverified``: see :func:`~fedprune.checkpoint.read_checkpoint`."""
        return int(read_checkpoint(self.checkpoint_file,
                                   allow_unverified=self._allow(allow_unverified))["round"])

    def recorder(self) -> Recorder:
        return Recorder(self.path)

    # ------------------------------------------------------------------ checkpoint

    def save_checkpoint(self, spec: ModelSpec, model: nn.Module, rnd: int,
                        state: dict[str, Any] | None = None,
                        snapshot: dict[str, Any] | None = None) -> None:
        save_checkpoint(self.checkpoint_file, spec, model, rnd, state, snapshot)

    def load_checkpoint(self, with_state: bool = False, *,  # noqa: ANN201 - see load_checkpoint
                        allow_unverified: bool | None = None):
        return load_checkpoint(self.checkpoint_file, with_state,
                               allow_unverified=self._allow(allow_unverified))

    def load_resume_point(self, expected: ModelSpec | None = None, *,  # noqa: ANN201
                          allow_unverified: bool | None = None):
        """What a resumed run continues from, read in one go: ``load_checkpoint(...,
        with_state=True)`` plus budget mode's snapshot of the model before an unjudged cut
        (``None`` when the checkpoint holds none); returns ``(spec, model, round, state,
        snapshot)``.

        The checkpoint must belong to the run's ``config.json`` (the same model and widths)
        and, where ``expected`` (the spec of the model the resumed configuration builds) is
        given, to its data too (classes, input channels and size): a checkpoint and a
        configuration of different runs are refused before any model is built.
        """
        ckpt = read_checkpoint(self.checkpoint_file, allow_unverified=self._allow(allow_unverified))
        self.check_belongs(spec_of(self.checkpoint_file, ckpt), expected)
        return (*rebuild(self.checkpoint_file, ckpt, with_state=True),
                ckpt.get("budget_snapshot"))

    def check_belongs(self, spec: ModelSpec, expected: ModelSpec | None = None) -> None:
        """``ValueError`` (one line) where the checkpoint's ``spec`` disagrees with the run's
        ``config.json`` (``model.name``, ``model.widths``) or with ``expected``."""
        model = self.read_config().model
        config = self.config_file.name
        found = [("model.name", spec.name, model.name, config),
                 ("model.widths", spec.widths,
                  None if model.widths is None else list(model.widths), config)]
        if expected is not None:
            found += [(key, getattr(spec, key), getattr(expected, key),
                       "the configuration resumed, with its data,")
                      for key in ("name", "num_classes", "in_channels", "image_size")]
        for key, held, said, where in found:
            if held != said:
                raise ValueError(
                    f"cannot resume {self.path}: {self.checkpoint_file.name} holds a model "
                    f"with {key} {held!r:.60} but {where} gives {said!r:.60}: they are not "
                    f"of the same run; restore the run's own {config} and "
                    f"{self.checkpoint_file.name}, or start a new run")

    def truncate_rounds(self, last_round: int) -> list[dict[str, Any]]:
        """Keep the round records up to ``last_round`` (those after it are redone on resume)."""
        rows = [r for r in read_rounds(self.path, torn_tail=True) if r["round"] <= last_round]
        path = self.rounds_file
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return rows

    # ------------------------------------------------------------------ latency, listing

    def read_latency(self) -> dict[str, Any] | None:
        """``latency.json`` where the run's latency was measured, else ``None``."""
        return _read_json(self.latency_file) if self.latency_file.is_file() else None

    def write_latency(self, record: dict[str, Any]) -> Path:
        """Atomically write ``latency.json`` (temporary file, then rename); return its path."""
        atomic_write_json(self.latency_file, record, indent=2)
        return self.latency_file

    def has_rounds(self) -> bool:
        """Whether ``rounds.jsonl`` exists (the run got as far as writing a round)."""
        return self.rounds_file.is_file()

    @classmethod
    def below(cls, directory: Path | str, limit: int = 3, depth: int = 4) -> list[RunDir]:
        """Up to ``limit`` run directories (holding ``rounds.jsonl``) at most ``depth``
        levels below ``directory``, the shallowest first (a ``fedprune reproduce`` folder
        holds its runs 4 levels down)."""
        found: list[Path] = []
        for level in range(1, depth + 1):
            pattern = "/".join(["*"] * level + [ROUNDS_FILE])
            found += sorted(p.parent for p in Path(directory).glob(pattern))
            if len(found) >= limit:
                break
        return [cls(p) for p in found[:limit]]


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as JSON gives it back (tuples as lists, sorted keys): comparable."""
    return json.loads(json.dumps(values, sort_keys=True))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return out
