"""Reproduce the paper's tables beside baselines: suites of runs, resumable, and their report.

``fedprune reproduce --suite quick`` (run folders and ``report.md`` under ``runs/quick/``)
"""

from .catalog import SUITES, Suite, get_suite
from .methods import METHODS, Method, Setting, Window
from .progress import RunEvent, TaskInfo, TimeLeft, format_left
from .report import write_report
from .runner import measure_latency, run_plan, run_state
from .suites import Plan, PlannedRun, plan_suite

__all__ = [
    "METHODS",
    "SUITES",
    "Method",
    "Plan",
    "PlannedRun",
    "RunEvent",
    "Setting",
    "Suite",
    "TaskInfo",
    "TimeLeft",
    "Window",
    "format_left",
    "get_suite",
    "measure_latency",
    "plan_suite",
    "run_plan",
    "run_state",
    "write_report",
]
