"""A probe's runs of the automatic method beside dense FedAvg with the same seeds, per setting.

A probe is the ``auto`` suite's runs of the automatic method with one setting changed, made
with ``fedprune run`` into ``PROBES/<dataset>/<model>/seed<k>``; dense FedAvg's runs of the
same seeds are read from an ``auto`` suite folder (``RECORDS/<dataset>/<model>/dense/
seed<k>``; kept records will do).  For each run: where the method cut, to what widths, its
accuracy against dense's, and its bytes and client FLOPs over dense FedAvg's beside the bars
of the ``auto`` suite (the final model's share of dense's parameters, of its FLOPs, plus 0.15);
then each setting's means.  With ``--baseline METHOD``, the same seeds' runs of that method
in ``RECORDS`` (e.g. ``auto``, the method as the suite ran it) are shown beside.

Usage: ``python scripts/probe_table.py PROBES RECORDS [--baseline auto]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any


def _summary(run: Path) -> dict[str, Any] | None:
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def rows(probes: Path, records: Path, baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per finished probe run that has a dense run of the same seed."""
    out = []
    for summary in sorted(probes.glob("*/*/seed*/summary.json")):
        run = summary.parent
        setting = f"{run.parent.parent.name}/{run.parent.name}"
        s = _summary(run)
        dense = _summary(records / setting / "dense" / run.name)
        if s is None or dense is None:
            continue
        nested = s.get("nested") or {}
        share_p = s["params_final"] / s["params_initial"]
        share_f = s["flops_final"] / s["flops_initial"]
        row = {"setting": setting, "seed": run.name, "accuracy": s["accuracy"],
               "delta": 100 * (s["accuracy"] - dense["accuracy"]), "flops_cut": 1 - share_f,
               "cut_round": nested.get("cut_round"),
               "widths": list((nested.get("widths") or {}).values()),
               "bytes": s["bytes_total"] / s["bytes_total_dense"], "bytes_bar": share_p + 0.15,
               "client_flops": s["client_flops_total"] / s["client_flops_total_dense"],
               "client_flops_bar": share_f + 0.15, "peak": s["client_flops_peak"]}
        base = _summary(records / setting / baseline / run.name) if baseline else None
        if base is not None:
            row["baseline_cut"] = 1 - base["flops_final"] / base["flops_initial"]
            row["baseline_delta"] = 100 * (base["accuracy"] - dense["accuracy"])
        out.append(row)
    return out


def render(table: list[dict[str, Any]], baseline: str | None = None) -> str:
    head = ("| setting | seed | cut round | widths | FLOPs cut | Δ vs dense (points) "
            "| bytes / dense (bar) | client FLOPs / dense (bar) | peak |")
    if baseline:
        head += f" {baseline}: FLOPs cut, Δ |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        line = (f"| {r['setting']} | {r['seed']} | {r['cut_round']} | {r['widths']} | "
                f"{100 * r['flops_cut']:.1f} % | {r['delta']:+.2f} | {r['bytes']:.3f} "
                f"({r['bytes_bar']:.3f}) | {r['client_flops']:.3f} "
                f"({r['client_flops_bar']:.3f}) | {r['peak']:.2f} |")
        if baseline:
            line += (f" {100 * r['baseline_cut']:.1f} %, {r['baseline_delta']:+.2f} |"
                     if "baseline_cut" in r else " |")
        lines.append(line)
    lines += ["", ("| setting | seeds | mean FLOPs cut | mean Δ vs dense | worst Δ "
              "| bytes within bar | client FLOPs within bar |"), "|---|---|---|---|---|---|---|"]
    for setting in dict.fromkeys(r["setting"] for r in table):
        rs = [r for r in table if r["setting"] == setting]
        lines.append(
            f"| {setting} | {len(rs)} | {100 * mean(r['flops_cut'] for r in rs):.1f} % | "
            f"{mean(r['delta'] for r in rs):+.2f} | {min(r['delta'] for r in rs):+.2f} | "
            f"{sum(r['bytes'] <= r['bytes_bar'] for r in rs)} of {len(rs)} | "
            f"{sum(r['client_flops'] <= r['client_flops_bar'] for r in rs)} of {len(rs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probes", type=Path, help="PROBES/<dataset>/<model>/seed<k> run folders")
    ap.add_argument("records", type=Path, help="an auto suite folder (dense runs)")
    ap.add_argument("--baseline", help="a method of RECORDS to show beside (e.g. auto)")
    a = ap.parse_args(argv)
    table = rows(a.probes, a.records, a.baseline)
    if not table:
        print(f"probe_table: no finished run in {a.probes} with a dense run of the same seed "
              f"in {a.records}", file=sys.stderr)
        return 2
    sys.stdout.write(render(table, a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
