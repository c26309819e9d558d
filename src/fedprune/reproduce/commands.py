"""The ``fedprune reproduce`` command (called from the CLI).

    fedprune reproduce --suite quick --out runs/quick [--jobs 2] [--report FILE.md]
    fedprune reproduce --suite quick --out runs/quick --report-only --report docs/results/quick.md
    fedprune reproduce --suite paper --out runs/paper --data femnist=/data/femnist \\
        --data celeba=/data/celeba
    fedprune reproduce --suite quick --out runs/quick --plan      # list runs and their state
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from .runner import record_report_seconds, run_plan, run_state
from .suites import METHODS, SUITES, get_suite, plan_suite


def add_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser(
        "reproduce",
        help="run a suite of methods x settings x seeds and write the Markdown report",
        description="Run every (dataset, model, method, seed) of a suite into "
                    "OUT/<dataset>/<model>/<method>/seed<k>/ (finished runs are skipped, "
                    "killed ones resumed), then write the report with tables and plots.")
    rp.add_argument("--suite", choices=tuple(SUITES), required=True)
    rp.add_argument("--out", type=Path, required=True, help="folder of the suite's run folders")
    rp.add_argument("--jobs", type=int, default=2,
                    help="runs in parallel, each single-threaded (default 2)")
    rp.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="override the suite's seeds (default 0 1 2)")
    rp.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                    help="run only these of the suite's methods (" + ", ".join(METHODS) + ")")
    rp.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                    help="run only these of the suite's datasets")
    rp.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                    help="run only these of the suite's models")
    rp.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                    help="files of a dataset the suite needs (paper suite: femnist, celeba)")
    rp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of every run alike (not prune.* or seed)")
    rp.add_argument("--report", type=Path, default=None,
                    help="Markdown report to write (default OUT/report.md); its plots go to "
                         "the folder of the same name without .md")
    rp.add_argument("--notes", type=Path, default=None,
                    help="a Markdown file appended to the report under 'Notes'")
    what = rp.add_mutually_exclusive_group()
    what.add_argument("--report-only", action="store_true",
                      help="write the report from the run folders, run nothing")
    what.add_argument("--no-report", action="store_true", help="run, but write no report")
    what.add_argument("--plan", action="store_true", help="list the runs and their state")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _data_paths(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--data {item!r}: expected NAME=PATH, e.g. femnist=/data/femnist")
        name, path = item.split("=", 1)
        out[name.strip()] = path.strip()
    return out


def cmd_reproduce(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .report import rerender, write_report

    if args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    suite = get_suite(args.suite)
    plan = plan_suite(suite, args.out, seeds=args.seeds, sets=args.sets,
                      data_paths=_data_paths(args.data), methods=args.methods,
                      datasets=args.datasets, models=args.models)
    if not plan.runs:
        reasons = "; ".join(why for _, why in plan.skipped_settings)
        raise ValueError(f"suite {suite.name}: nothing to run ({reasons})")
    if args.plan:
        for run in plan.runs:
            print(f"{run_state(run):<7} {run.run_dir}")
        for setting, why in plan.skipped_settings:
            print(f"skipped {setting.title}: {why}")
        return 0
    failed = 0
    if not args.report_only:
        # SIGTERM stops the workers like Ctrl-C does; unfinished runs resume on the next call
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            outcome = run_plan(plan, jobs=args.jobs, progress=lambda m: print(m, flush=True),
                               argv=argv if argv is not None else sys.argv[1:])
        except KeyboardInterrupt:
            print(f"interrupted: run the same command again to resume the unfinished runs "
                  f"under {args.out}", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        failed = len(outcome.failed)
        for r in outcome.failed:
            print(f"--- {r['run_dir']} failed:\n{r['trace']}", file=sys.stderr)
        print(f"suite {suite.name}: {len(outcome.executed)} runs executed in "
              f"{outcome.seconds / 60:.1f} min ({failed} failed)", flush=True)
    if not args.no_report:
        report = args.report or (args.out / "report.md")
        t0 = time.perf_counter()
        write_report(plan, report, args.notes)
        if not args.report_only:
            record_report_seconds(args.out, time.perf_counter() - t0)
            rerender(plan, report, args.notes)  # with the report's own time in the wall time
        print(f"report: {report}")
    return 1 if failed else 0
