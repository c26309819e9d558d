"""Run a suite: independent runs in a process pool, finished runs skipped, killed runs resumed.

State of a run folder, from what is on disk:

* ``done``: ``summary.json`` exists (the run finished); it is not run again;
* ``resume``: a checkpoint but no summary (the run was killed): continued with
  ``run_simulation(..., resume=True)``, which ends bit-identical to an uninterrupted run;
* ``fresh``: nothing usable yet (absent, or killed before its first checkpoint).

A folder holding a run of another configuration is an error, never overwritten; the stored
``config.json`` is compared with the planned configuration by resolved values, so a setting
added since (absent there) counts with its default.  After a run, its latency ratio (initial
dense model vs final model, onnxruntime, 1 thread, batch 1, interleaved) is measured once and
cached in ``latency.json``.

Progress goes to a callback as :class:`~fedprune.reproduce.progress.RunEvent` objects (the
command line draws a bar or prints a line per run from them); per-run lines are also logged.

Each run holds an exclusive lock (``.lock``, ``flock``) while it trains, and a suite holds one
on ``OUT/.suite.lock``: a second invocation on the same folder, or a worker orphaned by a killed
suite and still finishing its run, can never write a run folder at the same time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..rundir import RunDir, RunDirBusy, RunLock
from .progress import RunEvent, TaskInfo
from .suites import Plan, PlannedRun

logger = logging.getLogger(__name__)

SUITE_LOG = "suite.json"

# RunDir.state() -> the suite's word for it
STATES = {"finished": "done", "resumable": "resume", "fresh": "fresh"}


def _differences(differences: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """``key: stored there, planned`` for the first few (dotted) keys that differ."""
    out = [f"{key}: {json.dumps(a)} there, {json.dumps(b)} planned" for key, a, b in differences]
    more = f" and {len(out) - limit} more" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


def check_same_config(run: PlannedRun) -> None:
    """Raise ``ValueError`` unless the run folder is empty of a configuration or holds the
    planned one.

    The stored ``config.json`` is compared by its *resolved* values (parsed into the
    configuration tree and written out again), so a setting added since the run was written
    takes its default there as in the plan; a stored file that no longer parses is an error.
    """
    rd = RunDir(run.run_dir)
    if not rd.config_file.exists():
        return
    try:
        differences = rd.config_differences(run.config)
    except ValueError as exc:  # unreadable JSON, or ConfigError: a key or value not valid now
        raise ValueError(
            f"{rd.path} holds a run whose configuration cannot be read ({exc}): choose another "
            "--out, or remove that folder") from None
    if differences:
        raise ValueError(
            f"{rd.path} holds a run of another configuration (its {rd.config_file.name} differs "
            f"from the suite's in {_differences(differences)}): choose another --out, or "
            "remove that folder")


def run_state(run: PlannedRun) -> str:
    """``done``, ``resume`` or ``fresh`` (see the module docstring); raises on a foreign run."""
    check_same_config(run)
    return STATES[RunDir(run.run_dir).state()]


def latency_needed(run: PlannedRun) -> bool:
    return not RunDir(run.run_dir).latency_file.exists()


def fraction_left(run: PlannedRun, state: str) -> float:
    """The share of the run's rounds still to train: 1 (fresh), 0 (done), else from
    ``rounds.jsonl`` (a resumed run continues after its last checkpointed round)."""
    if state == "fresh":
        return 1.0
    if state == "done":
        return 0.0
    try:
        recorded = len(RunDir(run.run_dir).read_rounds())
    except (OSError, ValueError):
        return 1.0
    rounds = max(1, run.config.fed.rounds)
    return min(1.0, max(0.0, 1.0 - recorded / rounds))


def measure_latency(run_dir: Path, *, dense: bool, runs: int, warmup: int) -> dict[str, Any]:
    """Median latency of the run's final model / its initial dense model; cached on disk."""
    rd = RunDir(run_dir)
    cached = rd.read_latency()
    if cached is not None:
        return cached
    if dense:
        # the final model has the initial model's architecture: the ratio is 1 by construction
        out: dict[str, Any] = {"ratio": 1.0, "timed": False,
                               "why": "dense FedAvg: final and initial architectures are equal"}
    else:
        from ..export import bench_onnx_latency, load_run, run_latency_record

        rm = load_run(run_dir)
        out = run_latency_record(bench_onnx_latency({"dense": rm.initial, "final": rm.final},
                                                    rm.spec.example_input(), runs=runs,
                                                    warmup=warmup))
    rd.write_latency(out)
    return out


@dataclass(frozen=True)
class Task:
    """What a worker does for one run (picklable)."""

    run_dir: str
    config: dict[str, Any]
    state: str  # fresh | resume | done (latency only)
    dense: bool
    latency_runs: int
    latency_warmup: int


def execute(task: Task) -> dict[str, Any]:
    """Train (or resume) one run, then cache its latency; in a worker process or inline."""

    from ..config import from_dict
    from ..federated import run_simulation

    t0, c0 = time.perf_counter(), time.process_time()
    run_dir = Path(task.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        rd = RunDir(run_dir)
        if task.state in ("fresh", "resume"):
            cfg = from_dict(task.config)
            if task.state == "fresh":  # a run killed before its first checkpoint
                with rd.lock():
                    for path in [*rd.stale_files(), rd.latency_file]:
                        path.unlink(missing_ok=True)
            run_simulation(cfg, run_dir, resume=task.state == "resume")  # holds the lock
        with rd.lock():
            measure_latency(run_dir, dense=task.dense, runs=task.latency_runs,
                            warmup=task.latency_warmup)
    except Exception as exc:  # noqa: BLE001 - reported per run, the suite goes on
        return {"run_dir": task.run_dir, "state": task.state, "ok": False,
                "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(),
                "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    return {"run_dir": task.run_dir, "state": task.state, "ok": True,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def machine_note() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


@dataclass
class SuiteOutcome:
    executed: list[dict[str, Any]]
    states: dict[str, int]  # state -> count before this invocation
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.executed if not r["ok"]]


def run_plan(
    plan: Plan,
    *,
    jobs: int = 2,
    progress: Callable[[RunEvent], None] | None = None,
    argv: list[str] | None = None,
) -> SuiteOutcome:
    """Execute every unfinished run of ``plan`` (longest first) and log the invocation.

    ``progress`` receives a :class:`RunEvent` when the runs are listed (``begin``), when each
    run starts and ends (``start``, ``done``) and, with ``jobs > 1``, every 15 s in between
    (``tick``); at most ``jobs`` runs are under way at any time.
    """
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    emit = progress or (lambda _ev: None)
    suite_in_out = read_suite_log(plan.out).get("suite")
    if suite_in_out not in (None, plan.suite.name):
        raise ValueError(f"{plan.out} holds suite {suite_in_out!r}, not {plan.suite.name!r}: "
                         "choose another --out")
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        suite_lock = RunLock(plan.out / ".suite.lock")
    except RunDirBusy:
        raise ValueError(f"{plan.out} is in use by another fedprune reproduce") from None
    with suite_lock:
        return _run_plan(plan, jobs, emit, argv)


def _run_plan(plan: Plan, jobs: int, emit: Callable[[RunEvent], None],
              argv: list[str] | None) -> SuiteOutcome:
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()
    states = {"done": 0, "resume": 0, "fresh": 0}
    todo: list[tuple[TaskInfo, Task]] = []
    for run in plan.runs:
        state = run_state(run)
        states[state] += 1
        if state == "done" and not latency_needed(run):
            continue
        info = TaskInfo(os.path.relpath(run.run_dir, plan.out), state,
                        run.cost * fraction_left(run, state))
        todo.append((info, Task(str(run.run_dir), run.config.to_dict(), state,
                                run.method.name == "dense", plan.suite.latency_runs,
                                plan.suite.latency_warmup)))
    # longest first (better packing over the workers); latency-only work last
    todo.sort(key=lambda t: -t[0].cost)
    infos = tuple(info for info, _ in todo)
    logger.info("suite %s: %d runs, %d finished, %d to resume, %d to start; %d in parallel",
                plan.suite.name, len(plan.runs), states["done"], states["resume"],
                states["fresh"], jobs)
    for setting, why in plan.skipped_settings:
        logger.info("skipped %s: %s", setting.title, why)
    emit(RunEvent("begin", infos, jobs, states=dict(states)))
    results: list[dict[str, Any]] = []
    loads: list[float] = [load_before[0]]  # 1-minute load average, sampled while running

    def finished(info: TaskInfo, result: dict[str, Any]) -> None:
        results.append(result)
        logger.info("%s", _line(result, len(results), len(todo), plan.out))
        emit(RunEvent("done", infos, jobs, task=info, result=result))

    if jobs <= 1 or len(todo) <= 1:
        for info, task in todo:
            emit(RunEvent("start", infos, jobs, task=info))
            result = execute(task)
            loads.append(os.getloadavg()[0])
            finished(info, result)
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init)
        try:
            queue = deque(todo)
            running: dict[Future, TaskInfo] = {}

            def hand_out() -> None:  # a run starts when a worker is free for it
                while queue and len(running) < jobs:
                    info, task = queue.popleft()
                    running[pool.submit(execute, task)] = info
                    emit(RunEvent("start", infos, jobs, task=info))

            hand_out()
            while running:
                done, _ = wait(running, timeout=15, return_when=FIRST_COMPLETED)
                loads.append(os.getloadavg()[0])
                if not done:
                    emit(RunEvent("tick", infos, jobs))
                    continue
                for f in done:
                    finished(running.pop(f), f.result())
                hand_out()
        except BaseException:
            # interrupted (Ctrl-C, SIGTERM): stop the workers now; their runs resume next time
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    seconds = time.perf_counter() - t0
    _log_invocation(plan, {
        "started": started, "seconds": seconds, "jobs": jobs, "argv": argv or sys.argv,
        "runs": len(plan.runs), "states_before": states, "executed": len(results),
        "cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in results),
        "failed": [r["run_dir"] for r in results if not r["ok"]],
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "loadavg_mean": sum(loads) / len(loads), "loadavg_max": max(loads),
        "machine": machine_note(),
    })
    return SuiteOutcome(results, states, seconds)


def _line(r: dict[str, Any], i: int, n: int, out: Path) -> str:
    rel = os.path.relpath(r["run_dir"], out)
    what = {"fresh": "ran", "resume": "resumed", "done": "timed"}[r["state"]]
    if r["ok"]:
        return f"[{i}/{n}] {what} {rel} in {r['seconds']:.0f} s"
    return f"[{i}/{n}] FAILED {rel}: {r['error']}"


def read_suite_log(out: Path) -> dict[str, Any]:
    path = Path(out) / SUITE_LOG
    if not path.exists():
        return {"invocations": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _log_invocation(plan: Plan, entry: dict[str, Any]) -> None:
    plan.out.mkdir(parents=True, exist_ok=True)
    log = read_suite_log(plan.out)
    log["suite"] = plan.suite.name
    log.setdefault("invocations", []).append(entry)
    path = plan.out / SUITE_LOG
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(log, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def record_report_seconds(out: Path, seconds: float) -> None:
    """Add the report step's time to the last invocation (so the wall time includes it)."""
    log = read_suite_log(out)
    if not log["invocations"]:
        return
    log["invocations"][-1]["report_seconds"] = seconds
    path = Path(out) / SUITE_LOG
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(log, indent=2), encoding="utf-8")
    os.replace(tmp, path)
