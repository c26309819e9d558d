"""Per-round records of a federated run, written durably to a run directory.

Layout of ``run_dir``:

* ``rounds.jsonl``: one JSON object per line, one line per round (appended and
  fsync'ed so a crash loses at most the line being written);
* ``summary.json`` and ``config.json``: written atomically (temporary file in
  the same directory, flush, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "ROUNDS_FILE", "SUMMARY_FILE", "Recorder", "RoundRecord", "read_rounds"]

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
        """Return the record as one line of JSON (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


def atomic_write_json(path: Path, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (tmp file in same dir + os.replace)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, **dump_kwargs)
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
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

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


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Read ``run_dir/rounds.jsonl`` back as a list of dicts (blank lines skipped).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a malformed line, naming the file and the 1-based line number.
    """
    path = Path(run_dir) / ROUNDS_FILE
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                # a non-object line is malformed input, reported like bad JSON
                raise ValueError(f"{path}: line {lineno}: expected a JSON object")  # noqa: TRY004
            rows.append(row)
    return rows
