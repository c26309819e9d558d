"""The ``fedprune reproduce`` command (called from the CLI), with its progress display.

    fedprune reproduce --suite quick               # runs/quick/..., report runs/quick/report.md
    fedprune reproduce --suite quick --out runs/quick [--jobs 2] [--report FILE.md]
    fedprune reproduce --suite quick --report-only --report docs/results/quick.md
    fedprune reproduce --suite quick --data fashion-mnist=/data/fashion-mnist
    fedprune reproduce --suite paper --data femnist=/data/femnist --data celeba=/data/celeba
    fedprune reproduce --suite quick --plan      # list runs and their state
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from .catalog import SUITES, get_suite
from .methods import METHODS
from .progress import RunEvent, TimeLeft, format_left
from .runner import record_report_seconds, run_plan, run_state
from .suites import Plan, plan_suite


def add_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser(
        "reproduce",
        help="run a suite of methods x settings x seeds and write the Markdown report",
        description="Run every (dataset, model, method, seed) of a suite into "
                    "OUT/<dataset>/<model>/<method>/seed<k>/ (finished runs are skipped, "
                    "killed ones resumed), then write the report with tables and plots.")
    rp.add_argument("--suite", choices=tuple(SUITES), required=True)
    rp.add_argument("--out", type=Path, default=None,
                    help="folder of the suite's run folders (default runs/SUITE)")
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
                    help="files of a dataset the suite reads: femnist, celeba (paper suite; "
                         "or $FEDPRUNE_FEMNIST, $FEDPRUNE_CELEBA), fashion-mnist (quick and "
                         "budget suites; default /usr/share/datasets/fashion-mnist, or "
                         "$FEDPRUNE_FASHION_MNIST)")
    rp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of every run alike (not prune.* or seed)")
    rp.add_argument("--report", type=Path, default=None,
                    help="Markdown report to write (default OUT/report.md); its plots go "
                         "beside it, to the folder of the same name without .md")
    rp.add_argument("--notes", type=Path, default=None,
                    help="a Markdown file appended to the report under 'Notes'")
    what = rp.add_mutually_exclusive_group()
    what.add_argument("--report-only", action="store_true",
                      help="write the report from the run folders, run nothing")
    what.add_argument("--no-report", action="store_true", help="run, but write no report")
    what.add_argument("--plan", action="store_true", help="list the runs and their state")
    rp.add_argument("--no-progress", action="store_true",
                    help="no progress bar: a line per finished run with the time left (also "
                         "when stderr is not a terminal)")


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


class ProgressView:
    """Shows a suite's :class:`RunEvent` stream: a bar, or a line per finished run.

    Bar (``bar=True``, on ``bar_file``): one step per run, the runs under way and the estimated
    time left as its postfix; failed runs are written above it.  Lines (on ``stream``):
    ``run 5/36 done (digits/cnn_femnist/dense/seed0, ran in 41 s), about 9 min left``.
    ``clock`` gives the time the estimate runs on (:class:`TimeLeft`).
    """

    def __init__(self, *, bar: bool, stream: TextIO | None = None,
                 bar_file: TextIO | None = None, clock=time.monotonic) -> None:
        self.use_bar = bar
        self.stream = stream if stream is not None else sys.stdout
        self.bar_file = bar_file if bar_file is not None else sys.stderr
        self.clock = clock
        self.left: TimeLeft | None = None
        self.bar = None

    def __call__(self, ev: RunEvent) -> None:
        if ev.kind == "begin":
            self.left = TimeLeft(ev.tasks, ev.jobs)
            if self.use_bar and ev.tasks:
                from tqdm import tqdm

                self.bar = tqdm(total=len(ev.tasks), unit="run", file=self.bar_file,
                                dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/"
                                "{total_fmt} runs [{elapsed}{postfix}]")
                self._refresh()
            return
        if self.left is None:
            raise RuntimeError(f"a {ev.kind!r} event before 'begin'")
        now = self.clock()
        if ev.kind == "start":
            self.left.start(ev.task.run, now)
        elif ev.kind == "done":
            r = ev.result
            self.left.finish(ev.task.run, r["seconds"], r["ok"])
            line = self.done_line(ev, now)
            if self.bar is not None:
                if not r["ok"]:
                    self.bar.write(line, file=self.bar_file)
                self.bar.update(1)
            else:
                print(line, file=self.stream, flush=True)
        if self.bar is not None:
            self._refresh()

    def done_line(self, ev: RunEvent, now: float) -> str:
        r, left = ev.result, self.left
        what = {"fresh": "ran", "resume": "resumed", "done": "latency timed"}[ev.task.state]
        if r["ok"]:
            head = f"run {left.done}/{left.total} done ({ev.task.run}, {what} in " \
                   f"{r['seconds']:.0f} s)"
        else:
            head = f"run {left.done}/{left.total} FAILED ({ev.task.run}: {r['error']})"
        if left.done == left.total:
            return head
        return f"{head}, {format_left(left.seconds_left(now))}"

    def postfix(self) -> str:
        left = self.left
        if left.done == left.total:
            return "all done"
        eta = format_left(left.seconds_left(self.clock()))
        return f"{eta}; running {', '.join(left.running)}" if left.running else eta

    def _refresh(self) -> None:
        self.bar.set_postfix_str(self.postfix(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_reproduce(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .report import rerender, write_report

    if args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    suite = get_suite(args.suite)
    out = args.out if args.out is not None else Path("runs") / suite.name

    def make_plan() -> Plan:
        return plan_suite(suite, out, seeds=args.seeds, sets=args.sets,
                          data_paths=_data_paths(args.data), methods=args.methods,
                          datasets=args.datasets, models=args.models)

    plan = make_plan()
    if not plan.runs:
        reasons = "; ".join(why for _, why in plan.skipped_settings)
        raise ValueError(f"suite {suite.name}: nothing to run ({reasons})")
    if args.plan:
        for run in plan.runs:
            print(f"{run_state(run):<7} {run.run_dir}")
        for setting, method, seed, why in plan.deferred:
            print(f"later   {out / setting.dataset / setting.model / method.name}/seed{seed} "
                  f"({why})")
        for setting, why in plan.skipped_settings:
            print(f"skipped {setting.title}: {why}")
        return 0
    failed = 0
    if not args.report_only:
        for setting, why in plan.skipped_settings:
            print(f"skipped {setting.title}: {why}", flush=True)
        view = ProgressView(bar=not args.no_progress and sys.stderr.isatty())

        def show(ev: RunEvent) -> None:
            if ev.kind == "begin":
                st = ev.states
                print(f"suite {suite.name} in {out}: {len(plan.runs)} runs, {st['done']} "
                      f"finished, {st['resume']} to resume, {st['fresh']} to start; "
                      f"{ev.jobs} in parallel", flush=True)
            view(ev)

        # SIGTERM stops the workers like Ctrl-C does; unfinished runs resume on the next call
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        called = argv if argv is not None else sys.argv[1:]
        try:
            outcome = run_plan(plan, jobs=args.jobs, progress=show, argv=called)
            if plan.deferred and not outcome.failed:
                # the runs that waited for another run's outcome (its size from scratch)
                plan = make_plan()
                later = run_plan(plan, jobs=args.jobs, progress=show, argv=called)
                outcome = type(outcome)(outcome.executed + later.executed, outcome.states,
                                        outcome.seconds + later.seconds)
        except KeyboardInterrupt:
            view.close()
            print(f"interrupted: run the same command again to resume the unfinished runs "
                  f"under {out}", file=sys.stderr)
            return 130
        finally:
            view.close()
            signal.signal(signal.SIGTERM, previous)
        failed = len(outcome.failed)
        for r in outcome.failed:
            print(f"--- {r['run_dir']} failed:\n{r['trace']}", file=sys.stderr)
        print(f"suite {suite.name}: {len(outcome.executed)} runs executed in "
              f"{outcome.seconds / 60:.1f} min ({failed} failed)", flush=True)
    if not args.no_report:
        report = args.report or (out / "report.md")
        t0 = time.perf_counter()
        write_report(plan, report, args.notes)
        if not args.report_only:
            record_report_seconds(out, time.perf_counter() - t0)
            rerender(plan, report, args.notes)  # with the report's own time in the wall time
        print(f"report: {report}")
    return 1 if failed else 0
