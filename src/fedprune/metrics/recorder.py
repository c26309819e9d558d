"""Per-round records of a federated run, written durably to a run directory.

Layout of ``run_dir``:

* ``rounds.jsonl``: one JSON object per line, one line per round (appended and
  fsync'ed so a crash loses at most the line being written);
* ``summary.json`` and ``config.json``: written atomically (temporary file in
  the same directory, flush, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "ROUNDS_FILE", "SUMMARY_FILE", "Recorder", "RoundRecord", "finite_json",
           "read_rounds"]

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


@dataclass
class RoundRecord:
    """Metrics of one federated round.

    ``widths`` maps each prunable layer name to its current out channels;
    ``bytes_cumulative`` counts down- plus up-link bytes since the run start;
    ``clients`` is the number of replies aggregated; ``pruned`` tells whether
    a pruning step was accepted this round; ``seconds`` is wall time since the
    run start. ``extra`` is merged into the top level of the JSON line.
    """

    round: int
    accuracy: float | None
    loss: float | None
    params: int
    macs: int
    flops: int
    widths: dict[str, int]
    bytes_down: int
    bytes_up: int
    bytes_cumulative: int
    clients: int
    pruned: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the flat dict written to JSON (``extra`` merged in, not nested)."""
        data = asdict(self)
        extra = data.pop("extra")
        clashes = set(extra) & set(data)
        if clashes:
            raise ValueError(f"extra keys clash with RoundRecord fields: {sorted(clashes)}")
        data.update(extra)
        return data

    def to_json(self) -> str:
        """Return the record as one line of JSON (no trailing newline); NaN and infinite
        figures are written as null (JSON has neither)."""
        return json.dumps(finite_json(self.to_dict()), separators=(",", ":"), allow_nan=False)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in nested dicts, lists, tuples) replaced by
    None, so that it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (tmp file in same dir + os.replace)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(finite_json(obj), fh, allow_nan=False, **dump_kwargs)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


class Recorder:
    """Writes round records, the config and the summary of one run to ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rounds_path = self.run_dir / ROUNDS_FILE

    def append(self, record: RoundRecord) -> None:
        """Append ``record`` as one JSON line to ``rounds.jsonl``, flushed and fsync'ed."""
        line = record.to_json()
        with open(self.rounds_path, "a", encoding="utf-8") as fh:
            before = fh.tell()
            try:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            except OSError:  # a full disk: leave no partial line behind
                try:
                    os.truncate(self.rounds_path, before)
                except OSError:
                    pass
                raise

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Atomically write ``summary.json`` (indent=2, sorted keys, str() fallback); return path."""
        path = self.run_dir / SUMMARY_FILE
        atomic_write_json(path, summary, indent=2, sort_keys=True, default=str)
        return path

    def write_config(self, config_dict: dict[str, Any]) -> Path:
        """Atomically write ``config.json`` (indent=2, sorted keys, str() fallback); return path."""
        path = self.run_dir / CONFIG_FILE
        atomic_write_json(path, config_dict, indent=2, sort_keys=True, default=str)
        return path


def read_rounds(run_dir: Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """Read ``run_dir/rounds.jsonl`` back as a list of dicts (blank lines skipped).

    With ``torn_tail``, a malformed *last* line that lacks its newline -- the line a crash
    interrupted -- is dropped with a warning (resume redoes that round).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a malformed line, naming the file and the 1-based line number.
    """
    path = Path(run_dir) / ROUNDS_FILE
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and lineno == len(lines) and not line.endswith("\n"):
                logger.warning("%s: line %d was cut short by a crash; dropped", path, lineno)
                break
            raise ValueError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            # a non-object line is malformed input, reported like bad JSON
            raise ValueError(f"{path}: line {lineno}: expected a JSON object")  # noqa: TRY004
        rows.append(row)
    return rows
