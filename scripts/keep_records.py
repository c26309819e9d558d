"""Keep a suite's run records beside its report, so that later invocations add to them.

A suite's report is written from its run folders alone (``summary.json``, ``rounds.jsonl``,
``latency.json``, checked against ``config.json``) and the folder's ``suite.json`` (the
invocations: commands, wall and CPU times, machines).  The folders also hold checkpoints
(the weights), which the report does not read.  This script copies what the report reads
from every *finished* run under ``SRC`` into the same place under ``DEST`` and appends
``SRC``'s invocations to ``DEST``'s ``suite.json``, so that records made on several machines
and days make one report::

    python scripts/keep_records.py runs/auto docs/results/records/auto
    fedprune reproduce --suite auto --out docs/results/records/auto --report-only ...

A run already kept is left as it is when its records are the same, and refused when they
differ (a run of the same name made again: remove the kept one first, on purpose).  Runs
that did not finish are not copied.

Usage: ``python scripts/keep_records.py SRC DEST``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

FILES = ("config.json", "summary.json", "rounds.jsonl", "latency.json")
SUITE_LOG = "suite.json"


def _atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def keep(src: Path, dest: Path) -> dict[str, int]:
    """Copy the finished runs' records of ``src`` into ``dest`` (see the module docstring);
    returns how many runs were ``copied``, found ``same`` and left ``unfinished``."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such suite folder")
    counts = {"copied": 0, "same": 0, "unfinished": 0}
    runs = sorted(p.parent for p in src.rglob("config.json"))
    for run in runs:
        rel = run.relative_to(src)
        if not (run / "summary.json").is_file():
            counts["unfinished"] += 1
            continue
        there = dest / rel
        present = [f for f in FILES if (run / f).is_file()]
        if (there / "summary.json").is_file():
            differ = [f for f in present
                      if not (there / f).is_file()
                      or (there / f).read_bytes() != (run / f).read_bytes()]
            if differ:
                raise ValueError(f"{there} already holds another run's records "
                                 f"({', '.join(differ)} differ): remove that folder first "
                                 "if it is to be replaced")
            counts["same"] += 1
            continue
        there.mkdir(parents=True, exist_ok=True)
        for f in present:  # summary.json last: its presence marks a kept run as complete
            if f != "summary.json":
                _atomic_copy(run / f, there / f)
        _atomic_copy(run / "summary.json", there / "summary.json")
        counts["copied"] += 1
    log_src = src / SUITE_LOG
    if log_src.is_file():
        theirs = json.loads(log_src.read_text(encoding="utf-8"))
        log_dest = dest / SUITE_LOG
        ours = (json.loads(log_dest.read_text(encoding="utf-8")) if log_dest.is_file()
                else {"suite": theirs.get("suite"), "invocations": []})
        if ours.get("suite") not in (None, theirs.get("suite")):
            raise ValueError(f"{log_dest} is the log of suite {ours.get('suite')!r}, "
                             f"{log_src} of {theirs.get('suite')!r}")
        seen = {json.dumps(i, sort_keys=True) for i in ours["invocations"]}
        ours["invocations"] += [i for i in theirs.get("invocations", [])
                                if json.dumps(i, sort_keys=True) not in seen]
        ours["invocations"].sort(key=lambda i: str(i.get("started", "")))
        dest.mkdir(parents=True, exist_ok=True)
        tmp = log_dest.with_name(log_dest.name + ".tmp")
        tmp.write_text(json.dumps(ours, indent=2), encoding="utf-8")
        os.replace(tmp, log_dest)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a suite folder (fedprune reproduce --out)")
    ap.add_argument("dest", type=Path, help="where its records are kept")
    a = ap.parse_args(argv)
    try:
        c = keep(a.src, a.dest)
    except (OSError, ValueError) as exc:
        print(f"keep_records: {exc}", file=sys.stderr)
        return 2
    print(f"{c['copied']} runs copied, {c['same']} already kept, {c['unfinished']} not "
          f"finished (left out) -> {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
