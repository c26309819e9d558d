"""Wall time per round: the in-process loop vs the Flower app on Flower's engines.

    python benchmarks/flower_overhead.py                       # loop vs simulation engine (Ray)
    python benchmarks/flower_overhead.py --engines simulation deployment --rounds 6

One config (``--set key=value`` overrides it, as with ``fedprune run``) runs
1. in process (:func:`fedprune.federated.run_simulation`),
2. on Flower's simulation engine: ``flwr run`` on a ``flower-superlink --simulation``, Ray
   backend, one virtual SuperNode per partition (``--cpus-per-client`` CPUs each),
3. optionally on the deployment engine: a SuperLink and one ``flower-supernode`` process per
   partition on 127.0.0.1 (every ClientApp call is a fresh process there).

Reported per engine: **steady** seconds per round (from the ``seconds`` column of
``rounds.jsonl``: (last - first) / (rounds - 1), start-up excluded) and **end-to-end** seconds
per round (the whole command, Flower and Ray start-up included, divided by the rounds); then
the ratios engine / loop.  Both engines must give the same widths every round (checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fedprune.config import load_config
from fedprune.federated import run_simulation
from fedprune.flower.run_config import experiment_to_run_config
from fedprune.metrics import read_rounds

# the harness that starts (and reliably stops) Flower processes lives with the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from flower_harness import LocalFlower

DEFAULTS = [
    "threads=1", "data.num_clients=4", "model.widths=[16,32]", "train.local_epochs=2",
    "train.lr=0.02", "fed.rounds=10", "fed.clients_per_round=3", "fed.eval_every=5",
    "prune.start_round=2", "prune.max_prune_round=8", "prune.interval=2", "prune.k=0.5",
    "prune.max_fraction=0.3",
    # the ClientApps train one client at a time: so does the loop here, so that both give the
    # same accuracy and the timing compares the engines, not batched against per-client training
    "train.engine=per_client",
]


def _steady(rows: list[dict]) -> float:
    if len(rows) < 2:
        return float("nan")
    return (rows[-1]["seconds"] - rows[0]["seconds"]) / (len(rows) - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override the benchmark config (fedprune keys, snake_case)")
    ap.add_argument("--engines", nargs="+", default=["simulation"],
                    choices=["simulation", "deployment"])
    ap.add_argument("--cpus-per-client", type=int, default=1,
                    help="Ray CPUs per virtual SuperNode (simulation engine)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per Flower run")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    cfg = load_config(None, DEFAULTS + args.sets)
    n = cfg.data.num_clients
    print(f"config: {n} partitions, {cfg.fed.clients_per_round} per round, {cfg.fed.rounds} "
          f"rounds, {cfg.model.name} {cfg.model.widths}, {cfg.train.local_epochs} local "
          f"epoch(s), threads={cfg.threads}", flush=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedprune-flower-bench-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        loop = run_simulation(cfg, work / "loop")
        total = time.perf_counter() - t
        loop_rows = read_rounds(work / "loop")
        results["loop"] = {"steady_s_per_round": _steady(loop_rows),
                           "end_to_end_s_per_round": total / cfg.fed.rounds,
                           "accuracy": loop.summary["accuracy"]}
        rc = experiment_to_run_config(cfg)
        for engine in args.engines:
            out = work / engine / "out"
            with LocalFlower(work / engine) as lf:
                t = time.perf_counter()
                lf.start_superlink(simulation=engine == "simulation")
                run_config = {**rc, "out-dir": str(out), "round-timeout": 600.0}
                if engine == "simulation":
                    lf.run(run_config, timeout=args.timeout, federation_config={
                        "num-supernodes": n, "backend": "ray",
                        "client-resources-num-cpus": args.cpus_per_client})
                else:
                    for pid in range(n):
                        lf.start_supernode(pid, n)
                    lf.run(run_config, timeout=args.timeout)
                total = time.perf_counter() - t
            rows = read_rounds(out)
            if [r["widths"] for r in rows] != [r["widths"] for r in loop_rows]:
                print(f"WARNING: {engine}: the architecture sequence differs from the loop's",
                      file=sys.stderr)
            summary = json.loads((out / "summary.json").read_text())
            results[engine] = {"steady_s_per_round": _steady(rows),
                               "end_to_end_s_per_round": total / cfg.fed.rounds,
                               "accuracy": summary["accuracy"]}

    base = results["loop"]
    print(f"\n{'engine':<12} {'steady s/round':>15} {'end-to-end s/round':>19} {'accuracy':>9}")
    for name, r in results.items():
        print(f"{name:<12} {r['steady_s_per_round']:>15.3f} {r['end_to_end_s_per_round']:>19.3f} "
              f"{r['accuracy']:>9.4f}")
    for name, r in results.items():
        if name == "loop":
            continue
        r["ratio_steady"] = r["steady_s_per_round"] / base["steady_s_per_round"]
        r["ratio_end_to_end"] = r["end_to_end_s_per_round"] / base["end_to_end_s_per_round"]
        print(f"ratio {name}/loop: {r['ratio_steady']:.2f}x per round (steady), "
              f"{r['ratio_end_to_end']:.2f}x end to end")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
