"""May a run write into this folder, or continue the run it holds: one policy, every engine.

:meth:`fedprune.rundir.RunDir.open` (that is, :func:`open_run`) decides, for the in-process
loop (``fedprune run``) and the Flower app alike:

* a new run goes into a new or empty folder; what a run killed before its first checkpoint
  left (its ``config.json``, temporary files) is cleared first; any other content is refused,
  never overwritten;
* ``resume`` continues a run with a checkpoint, written by the same engine, with the same
  configuration (compared by resolved values); a finished run, a folder holding no run and a
  run of the other engine are refused; a run killed before its first checkpoint starts again
  from round 1;
* the folder's lock is taken (one writer at a time) and held by the returned
  :class:`OpenedRun` until :meth:`OpenedRun.close`.

A new run's ``config.json`` records its engine beside the settings (``"engine"``, see
:data:`fedprune.config_parse.ENGINE_KEY`); runs written before it was recorded are told apart
by their round records (:meth:`~fedprune.rundir.RunDir.written_by`).  Refusals are
:class:`RunDirRefused` (a :class:`~fedprune.config.ConfigError`), worded for the engine's own
front end: ``--out``/``--resume`` for the command line, ``out-dir``/``resume`` for Flower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .config import ConfigError, ExperimentConfig
from .config_parse import ENGINE_KEY
from .metrics.recorder import Recorder

if TYPE_CHECKING:
    from .rundir import RunDir, RunLock

logger = logging.getLogger(__name__)

__all__ = ["Engine", "OpenedRun", "RunDirRefused", "open_run"]

Engine = Literal["in-process", "flower"]
Reason = Literal["file", "not_empty", "finished", "no_run", "other_engine", "unreadable",
                 "differs"]

# each refusal, as each engine's front end words it
_WORDS: dict[str, dict[str, str]] = {
    "in-process": {
        "file": "{flag} {p} is a file, not a directory",
        "not_empty": "--out {p} exists and is not empty: choose a new directory (results are "
                     "never overwritten)",
        "finished": "cannot resume {p}: the run finished ({summary} is there)",
        "no_run": "cannot resume {p}: it holds no run (no {config}, and its {checkpoint} does "
                  "not exist): start one with --out {p}",
        "other_engine": "cannot resume {p}: it is a run of the Flower app; resume it there "
                        "(run config resume = true)",
        "unreadable": "cannot resume {p}: {why}",
        "differs": "cannot resume {p}: the configuration differs from {config_file} (section "
                   "{why}): resume with the run's own settings",
    },
    "flower": {
        "file": "out-dir {p} is a file, not a directory",
        "not_empty": "out-dir {p} exists and is not empty: choose a new directory (results are "
                     "never overwritten), or set resume = true to continue the run it holds",
        "finished": "resume = true but out-dir {p} cannot be resumed: it holds a finished run "
                    "({summary})",
        "no_run": "resume = true but out-dir {p} cannot be resumed: it holds no checkpoint of a "
                  "run (start it anew without resume)",
        "other_engine": "resume = true but out-dir {p} holds a run of the in-process loop: "
                        "resume it with fedprune run --resume {p}",
        "unreadable": "resume = true but {config_file} cannot be read: {why}",
        "differs": "resume = true but the run config differs from {config_file} (section "
                   "{why}): resume with the run's own settings",
    },
}


class RunDirRefused(ConfigError):
    """The folder does not fit what was asked (``reason`` says why)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class OpenedRun:
    """A run directory a run may now write: its lock is held until :meth:`close`.

    ``resume``: continue from the checkpoint (else a new run, whose ``config.json`` the
    server writes with :meth:`write_config`); ``restarted``: a run killed before its first
    checkpoint, started again from round 1; ``cfg``: the configuration given, or, when none
    was, the run's own (``config.json``).
    """

    run_dir: RunDir
    engine: Engine
    cfg: ExperimentConfig
    resume: bool
    restarted: bool
    lock: RunLock | None

    @property
    def path(self) -> Path:
        return self.run_dir.path

    def write_config(self, cfg: ExperimentConfig) -> Path:
        """Write a new run's ``config.json``: the settings of ``cfg`` and the engine."""
        return Recorder(self.path).write_config({**cfg.to_dict(), ENGINE_KEY: self.engine})

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> OpenedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(rd: RunDir, cfg: ExperimentConfig | None, *, resume: bool,
             engine: Engine) -> OpenedRun:
    """Decide whether ``engine`` may start a run in ``rd`` (or, with ``resume``, continue the
    run there), take its lock and clear a killed run's leftovers; see the module docstring.

    ``cfg`` is the run's configuration; with ``resume`` it may be ``None``: the run's own
    ``config.json`` is then used (and returned as :attr:`OpenedRun.cfg`).  Raises
    :class:`RunDirRefused`, or :class:`~fedprune.rundir.RunDirBusy` while another process
    writes the folder.
    """
    if engine not in _WORDS:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(_WORDS)}")
    if cfg is None and not resume:
        raise ValueError("a new run needs its configuration")
    _decide(rd, cfg, resume, engine)  # first without the lock: a refused folder gets no .lock
    lock = rd.lock()
    try:  # again under the lock: another process may have changed the folder meanwhile
        own_cfg, resumes = _decide(rd, cfg, resume, engine)
        restarted = resume and not resumes
        if restarted:
            logger.warning("%s holds a run stopped before its first checkpoint: it starts "
                           "again from round 1", rd.path)
        if not resumes:
            # a restarted run keeps its config.json until it writes it anew: a restart that
            # fails before then (data missing, no nodes) must not lose the run's settings
            for entry in rd.stale_files():
                if not (restarted and entry == rd.config_file):
                    entry.unlink()
    except BaseException:
        lock.release()
        raise
    return OpenedRun(rd, engine, own_cfg, resumes, restarted, lock)


def _decide(rd: RunDir, cfg: ExperimentConfig | None, resume: bool,
            engine: Engine) -> tuple[ExperimentConfig, bool]:
    """``(the run's configuration, whether it continues from the checkpoint)``, or the
    refusal."""
    if rd.path.exists() and not rd.path.is_dir():
        raise _refusal(rd, engine, "file", flag="--resume" if resume else "--out")
    if not resume:
        if not rd.can_start_new_run():
            raise _refusal(rd, engine, "not_empty")
        assert cfg is not None
        return cfg, False
    state = rd.state()
    if state == "finished":
        raise _refusal(rd, engine, "finished")
    if state == "fresh" and not rd.stopped_before_first_checkpoint():
        raise _refusal(rd, engine, "no_run")
    if rd.written_by() not in (None, engine):  # neither engine resumes (or restarts) the other's
        raise _refusal(rd, engine, "other_engine")
    if state == "fresh":
        return (cfg if cfg is not None else _own_config(rd, engine)), False
    if cfg is None:
        return _own_config(rd, engine), True
    try:  # compared by resolved values, as reproduce does
        differences = rd.config_differences(cfg)
    except ValueError as exc:
        raise _refusal(rd, engine, "unreadable", why=exc) from None
    if differences:
        sections = sorted({key.split(".")[0] for key, _, _ in differences})
        raise _refusal(rd, engine, "differs", why=", ".join(sections))
    return cfg, True


def _own_config(rd: RunDir, engine: Engine) -> ExperimentConfig:
    try:
        return rd.read_config()
    except ValueError as exc:
        raise _refusal(rd, engine, "unreadable", why=exc) from None


def _refusal(rd: RunDir, engine: Engine, reason: Reason, **more: object) -> RunDirRefused:
    text = _WORDS[engine][reason].format(
        p=rd.path, config=rd.config_file.name, config_file=rd.config_file,
        summary=rd.summary_file.name, checkpoint=rd.checkpoint_file.name, **more)
    return RunDirRefused(reason, text)
