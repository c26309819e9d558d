"""When could a search have cut to a fixed ratio's size, and what would it have seen then?

The ``auto`` suite's bars ask the automatic method for the FLOPs cut of the largest fixed ratio
within 1 point of dense FedAvg, *and* for a run's bytes at most the final model's share of
dense's parameters plus 0.15.  A method that decides from what the clients measure must
cut early to meet the bytes bar, and can only cut when what it measures then allows it.  This
script puts the two side by side for one setting of an ``auto`` suite folder (run records,
``scripts/keep_records.py``), all figures measured in those runs:

* **bytes if the search cut to the fixed ratio's size at round R**: the automatic method's
  searching rounds (their mean bytes over the rounds before its first judgement, measured in
  its runs) up to R, then the fixed ratio's rounds after its cut (their mean bytes) to the
  end, over dense FedAvg's bytes with the same seed; without any judgement (a lower bound)
  and with the judgements a search makes at ``prune.interval`` from ``prune.start_round``
  (each costing what a judging round of the automatic method cost above a searching one);
* **what the method measured of that size** in flight: every judgement of the automatic
  runs, the cost of the width of the fixed ratio's size (same parameter count) against the
  full width on the clients' validation splits, with its standard error;
* **where the fixed ratio itself stood**: its test accuracy minus dense FedAvg's at each
  evaluated round after its cut (the same seeds), the model cut for good and trained alone.

Usage::

    python scripts/search_bound.py docs/results/records/auto fashion-mnist/inception \\
        [--fixed ratio75] [--auto auto] [--step 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any


def _rounds(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()
            if line.strip()]


def _bytes(r: dict[str, Any]) -> int:
    return int(r["bytes_down"]) + int(r["bytes_up"])


def _seeds(setting: Path, methods: tuple[str, ...]) -> list[str]:
    """Seeds with a finished run of every method."""
    names = None
    for m in methods:
        got = {p.parent.name for p in (setting / m).glob("seed*/summary.json")}
        names = got if names is None else names & got
    return sorted(names or (), key=lambda s: int(s[4:]))


def bound(records: Path, setting: str, fixed: str = "ratio75", auto: str = "auto",
          step: int = 0) -> dict[str, Any]:
    """The figures above, per seed and as means (``rows``: one per evaluated round)."""
    where = records / setting
    seeds = _seeds(where, ("dense", fixed, auto))
    if not seeds:
        raise ValueError(f"{where}: no seed with finished runs of dense, {fixed} and {auto}")
    cfg = json.loads((where / auto / seeds[0] / "config.json").read_text())
    start, interval = int(cfg["prune"]["start_round"]), int(cfg["prune"]["interval"])
    rounds_total = int(cfg["fed"]["rounds"])
    per_seed: dict[str, dict[str, Any]] = {}
    for s in seeds:
        dense, cut, searched = (_rounds(where / m / s) for m in ("dense", fixed, auto))
        dense_total = sum(_bytes(r) for r in dense)
        fsum = json.loads((where / fixed / s / "summary.json").read_text())
        cut_round = int(fsum.get("prune_stopped_round") or 0)
        size = int(fsum["params_final"])
        after = [_bytes(r) for r in cut if r["round"] > cut_round]
        searching = [_bytes(r) for r in searched if r["round"] < start]
        judging = [_bytes(r) for r in searched
                   if (r.get("nested") or {}).get("judged") is not None
                   and (r.get("nested") or {}).get("status") == "search"]
        costs = []
        for r in searched:
            j = (r.get("nested") or {}).get("judged")
            for w in (j or {}).get("widths", []):
                if int(w["params"]) == size and w.get("cost") is not None:
                    costs.append((int(j["round"]), 100 * w["cost"], 100 * (w["cost_se"] or 0)))
        acc_dense = {r["round"]: r["accuracy"] for r in dense if r.get("accuracy") is not None}
        acc_cut = {r["round"]: r["accuracy"] for r in cut if r.get("accuracy") is not None}
        per_seed[s] = {
            "dense_bytes": dense_total, "cut_round": cut_round,
            "share": size / int(fsum["params_initial"]), "flops_cut":
                1 - int(fsum["flops_final"]) / int(fsum["flops_initial"]),
            "search_round": mean(searching), "after_round": mean(after),
            "judgement_extra": (mean(judging) - mean(searching)) if judging else 0.0,
            "costs": costs,
            "gap": {k: 100 * (acc_cut[k] - acc_dense[k]) for k in acc_cut
                    if k in acc_dense and k > cut_round},
        }
    rows = []
    for rnd in range(start, rounds_total + 1, step or (5 if start % 5 == 0 else 1)):
        judgements = 1 + (rnd - start) // interval
        lb, wj, gaps = [], [], []
        for f in per_seed.values():
            base = rnd * f["search_round"] + (rounds_total - rnd) * f["after_round"]
            lb.append(base / f["dense_bytes"])
            wj.append((base + judgements * f["judgement_extra"]) / f["dense_bytes"])
            if rnd in f["gap"]:
                gaps.append(f["gap"][rnd])
        rows.append({"round": rnd, "bytes_no_judgement": mean(lb),
                     "bytes_with_judgements": mean(wj), "judgements": judgements,
                     "fixed_gap": mean(gaps) if len(gaps) == len(per_seed) else None})
    first = next(iter(per_seed.values()))
    return {"setting": setting, "fixed": fixed, "auto": auto, "seeds": seeds,
            "share": first["share"], "flops_cut": first["flops_cut"],
            "bytes_bar": first["share"] + 0.15, "per_seed": per_seed, "rows": rows}


def render(b: dict[str, Any]) -> str:
    out = [(f"{b['setting']}: {b['fixed']} (FLOPs cut {100 * b['flops_cut']:.1f} %, "
           f"{100 * b['share']:.1f} % of the parameters; bytes bar {b['bytes_bar']:.3f}); "
           f"seeds {', '.join(b['seeds'])}"), "",
           ("| cut at round | bytes / dense, no judgement | with the judgements "
           f"| {b['fixed']} test accuracy - dense (points) |"), "|---|---|---|---|"]
    for r in b["rows"]:
        gap = "" if r["fixed_gap"] is None else f"{r['fixed_gap']:+.2f}"
        out.append(f"| {r['round']} | {r['bytes_no_judgement']:.3f} | "
                   f"{r['bytes_with_judgements']:.3f} ({r['judgements']}) | {gap} |")
    out += ["", (f"In flight ({b['auto']}), the width of {b['fixed']}'s size against the full "
            "width, points (cost +- s.e.):")]
    for s, f in b["per_seed"].items():
        judged = ", ".join(f"round {r}: {c:.2f} +- {e:.2f}" for r, c, e in f["costs"])
        out.append(f"- {s}: {judged or 'not in the ladder'}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", type=Path, help="an auto suite folder (run records)")
    ap.add_argument("setting", help="DATASET/MODEL, e.g. fashion-mnist/inception")
    ap.add_argument("--fixed", default="ratio75", help="the fixed-ratio method (ratio75)")
    ap.add_argument("--auto", default="auto", help="the automatic method (auto)")
    ap.add_argument("--step", type=int, default=0,
                    help="rounds between rows (default 5, from prune.start_round)")
    a = ap.parse_args(argv)
    try:
        sys.stdout.write(render(bound(a.records, a.setting, a.fixed, a.auto, a.step)))
    except (OSError, ValueError, KeyError) as e:
        print(f"search_bound: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
