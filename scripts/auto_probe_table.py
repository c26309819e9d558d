"""What the automatic method's own measurement says of one large cut, judged all along.

A probe run is the automatic method held to one candidate: a single cut of ``prune.step`` of
every layer's filters at round 30, trained beside the dense model and judged every 2 rounds
up to round 90 by paired federated validation (``prune.judgements = 30``;
``prune.max_accuracy_drop = 0``, so the cut is kept only if it does at least as well as the
dense model, cost plus 2 standard errors at most 0).  Its judgements are the cost the method
would see for that cut at each round.  This script prints them beside the test-accuracy gap
of the same cut made for good (the suite's one-shot fixed ratio) to dense FedAvg with the same
seeds, from an ``auto`` suite folder.

The probe runs (Fashion-MNIST, the ``auto`` suite's setting; S = 0, 1, 2)::

    fedprune run --out runs/auto-probe/inception-cut75/seedS --no-progress --set seed=S \\
      --set threads=1 --set data.name=fashion-mnist --set data.num_clients=100 \\
      --set data.alpha=0.5 --set data.max_test_samples=2000 --set train.local_epochs=1 \\
      --set fed.rounds=100 --set fed.clients_per_round=10 --set model.name=inception \\
      --set prune.method=auto-paired --set prune.start_round=30 --set prune.max_prune_round=90 \\
      --set prune.interval=2 --set prune.judgements=30 --set prune.max_accuracy_drop=0 \\
      --set prune.step=0.75 --set prune.min_step=0.75

and the same with ``prune.step=0.5``, ``prune.min_step=0.5`` and ``model.name=resnet7`` into
``runs/auto-probe/resnet7-cut50/seedS``, or ``model.name=cnn_femnist`` into
``runs/auto-probe/cnn_femnist-cut50/seedS``.

Usage: ``python scripts/auto_probe_table.py [--probes runs/auto-probe] [--suite runs/auto]``
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from fedprune.metrics import read_rounds
from fedprune.rundir import RunDir

# probe folder name -> (suite model folder, the suite's fixed ratio with the same cut)
PROBES = {"inception-cut75": ("inception", "ratio75"),
          "resnet7-cut50": ("resnet7", "ratio50"),
          "cnn_femnist-cut50": ("cnn_femnist", "ratio50")}
ROUNDS = (32, 36, 40, 46, 50, 56, 60, 66, 70, 76, 80, 86, 90)
FIT = (40, 60)  # the rounds a straight line is fitted through


def tries_of(run: Path) -> list[dict]:
    """The run's judgements as ``summary.json`` records them."""
    return RunDir(run).read_summary()["auto"]["tries"]


def judgements(tries: list[dict]) -> dict[int, tuple[float, float]]:
    """Cost and its standard error in points, by judgement round."""
    return {t["round"]: (100 * t["cost"], 100 * t["cost_se"]) for t in tries
            if t.get("cost") is not None and t.get("cost_se") is not None}


def loss_gaps(tries: list[dict]) -> dict[int, float]:
    """Candidate minus reference mean validation loss, by judgement round."""
    return {t["round"]: t["loss_candidate"] - t["loss_reference"] for t in tries
            if t.get("loss_candidate") is not None and t.get("loss_reference") is not None}


def test_accuracy(run: Path) -> dict[int, float]:
    """Test accuracy in points, by evaluated round."""
    return {row["round"]: 100 * row["accuracy"] for row in read_rounds(run)
            if row.get("accuracy") is not None}


def line_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=Path, default=Path("runs/auto-probe"))
    ap.add_argument("--suite", type=Path, default=Path("runs/auto"))
    ap.add_argument("--rounds", type=int, nargs="+", default=list(ROUNDS),
                    help="the judgement rounds to show")
    ap.add_argument("--fit", type=int, nargs=2, default=list(FIT), metavar=("FROM", "TO"),
                    help="fit a line through the judgements of these rounds and extrapolate "
                         "it to the run's last round")
    args = ap.parse_args()
    show(args.probes, args.suite, tuple(args.rounds), tuple(args.fit))


def show(probes: Path, suite: Path, rounds: tuple[int, ...], fit: tuple[int, int]) -> None:
    for probe, (model, ratio) in PROBES.items():
        seeds = sorted(p for p in (probes / probe).glob("seed*")
                       if (p / "summary.json").exists())
        if not seeds:
            continue
        print(f"\n## {probe}: the paired cost (points, s.e.) of the cut, by round\n")
        print("| seed | " + " | ".join(str(r) for r in rounds) + " | first round within "
              "1 point (cost + 2 s.e.) |")
        print("|---" * (len(rounds) + 2) + "|")
        tries = {s: tries_of(s) for s in seeds}
        configs = {s: RunDir(s).read_config() for s in seeds}
        per_round: dict[int, list[float]] = {}
        for s in seeds:
            j = judgements(tries[s])
            cells = []
            for r in rounds:
                if r in j:
                    cells.append(f"{j[r][0]:.2f} ({j[r][1]:.2f})")
                    per_round.setdefault(r, []).append(j[r][0])
                else:
                    cells.append("-")
            fits = [r for r, (c, se) in sorted(j.items()) if c + 2 * se <= 1.0]
            print(f"| {s.name} | " + " | ".join(cells) + f" | {fits[0] if fits else 'none'} |")
        kept = [(s.name, t["round"]) for s in seeds for t in tries[s]
                if t.get("decision") == "accept"]
        print("| mean | " + " | ".join(
            f"{statistics.fmean(per_round[r]):.2f}" if r in per_round else "-"
            for r in rounds) + " | |")
        for name, r in kept:  # a probe is meant to keep nothing: its later rows are not its cut
            print(f"\nwarning: {name} kept its cut at round {r}; its judgements after that are "
                  "of a later candidate")
        losses: dict[int, list[float]] = {}
        for s in seeds:
            for r, g in loss_gaps(tries[s]).items():
                losses.setdefault(r, []).append(g)
        print("\npaired validation loss, candidate minus reference, mean over the seeds: "
              + ", ".join(f"{r}: {statistics.fmean(losses[r]):.3f}" for r in rounds
                          if r in losses))
        # the same cut made for good (one-shot ratio at round 30) against dense, test set
        start = configs[seeds[0]].prune.start_round
        gaps: dict[int, list[float]] = {}
        for s in seeds:
            base = suite / "fashion-mnist" / model
            try:
                dense = test_accuracy(base / "dense" / s.name)
                cut = test_accuracy(base / ratio / s.name)
            except FileNotFoundError:
                continue
            for r in set(dense) & set(cut):
                gaps.setdefault(r, []).append(dense[r] - cut[r])
        if gaps:
            rows = sorted(r for r in gaps if r >= start and len(gaps[r]) == len(seeds))
            print(f"\n{ratio} (the same cut kept from round {start}), dense minus it on the test "
                  "set, mean over the seeds (points): "
                  + ", ".join(f"{r}: {statistics.fmean(gaps[r]):.2f}" for r in rows))
        # what a straight line through the fitted rounds predicts for the last round
        preds = []
        for s in seeds:
            last = configs[s].fed.rounds
            pts = [(r, c) for r, (c, _) in judgements(tries[s]).items()
                   if fit[0] <= r <= fit[1]]
            if len(pts) >= 3:
                slope, icept = line_fit(pts)
                preds.append((s.name, slope, icept + slope * last))
        if preds:
            print(f"\nline through the judgements of rounds {fit[0]}-{fit[1]}, extrapolated "
                  "to the last round: "
                  + "; ".join(f"{n}: slope {sl:+.3f}/round, {p:.2f} points" for n, sl, p
                              in preds)
                  + (f" (mean {statistics.fmean(p for _, _, p in preds):.2f})"
                     if all(math.isfinite(p) for _, _, p in preds) else ""))


if __name__ == "__main__":
    main()
