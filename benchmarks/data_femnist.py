"""FEMNIST-sized LEAF data: time to prepare the cache, startup to the first round, peak memory.

Generates LEAF's FEMNIST layout at full size (3,400 writers, 671,585 train and 77,483 test
28x28 images, TFF's counts; 100 writers per JSON file as LEAF's data_to_json.py writes them,
pixels as ``v / 255`` floats) in a temporary folder, then measures, each in a fresh process:

1. ``fedprune data prepare DIR``: reading the JSON into the memory-mapped cache (wall time,
   peak RSS);
2. a run as ``fedprune run`` makes it, through the library's public calls
   (``load_config``, ``fedprune.data.load_federated``, ``run_simulation`` with an
   ``on_round`` callback), with ``data.partition=natural`` over all 3,400 writers: seconds
   from launching the process until the imports are done, until the federated data are
   loaded, and until the first round has finished, plus the process's peak RSS (2 rounds of
   10 clients, 1 local epoch; the last round evaluates the full 77,483-image test set);
3. the same with ``data.partition=dirichlet`` over 3,400 clients (one gathered copy);

then deletes the JSON and the cache (unless ``--keep``).  Targets: the first round has
finished within 10 s of launch once the cache exists, and peak memory stays under 3 GB.

    python benchmarks/data_femnist.py [--scale 1.0] [--workdir /tmp] [--keep]
    python benchmarks/data_femnist.py --quick       # 10 writers, 1 round: a few seconds

Images are drawn from a pool of 62 x 64 distinct synthetic glyphs (white background, dark
strokes, ~19% ink pixels like FEMNIST), so the text has FEMNIST's size and number mix; the
content is not real handwriting.  ``--scale`` shrinks everything (e.g. 0.1) for a quick look;
if the disk lacks room for the full JSON the script scales down itself and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedprune.rundir import RunDir

WRITERS, TRAIN, TEST = 3_400, 671_585, 77_483
PER_FILE = 100  # LEAF's MAX_WRITERS per JSON file
BYTES_PER_IMAGE = 6_600  # measured average of the generated text per image, with margin


def sizes(n_writers: int, total: int, rng: np.random.Generator, floor: int) -> np.ndarray:
    w = rng.lognormal(0.0, 0.5, n_writers)
    out = np.maximum(floor, np.floor(w / w.sum() * total)).astype(np.int64)
    diff = total - int(out.sum())
    while diff:
        i = rng.integers(n_writers)
        if diff > 0:
            out[i] += 1
            diff -= 1
        elif out[i] > floor:
            out[i] -= 1
            diff += 1
    return out


def glyph_pool(rng: np.random.Generator, variants: int = 64) -> list[list[str]]:
    """``pool[label][k]``: the JSON text of one image, ``[1.0, 0.5019607843137255, ...]``."""
    reps = [repr(v / 255) for v in range(256)]
    pool = []
    for c in range(62):
        texts = []
        for _ in range(variants):
            img = np.full((28, 28), 255, dtype=np.uint8)
            r, col = 4 + c % 20, 4 + c // 3 % 20
            img[r : r + 3, 3:25] = rng.integers(0, 200, (3, 22))
            img[3:25, col : col + 3] = rng.integers(0, 200, (22, 3))
            extra = rng.choice(784, 40, replace=False)
            img.reshape(-1)[extra] = rng.integers(0, 255, 40)
            texts.append("[" + ", ".join(reps[v] for v in img.reshape(-1)) + "]")
        pool.append(texts)
    return pool


def write_split(folder: Path, names: list[str], counts: np.ndarray, pool: list[list[str]],
                rng: np.random.Generator) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in range(0, len(names), PER_FILE):
        users = names[f : f + PER_FILE]
        ns = [int(n) for n in counts[f : f + PER_FILE]]
        path = folder / f"all_data_{f // PER_FILE}_niid_0_keep_0_{folder.name}_9.json"
        with open(path, "w") as out:
            out.write('{"users": ' + json.dumps(users) + ', "num_samples": ' + json.dumps(ns)
                      + ', "user_data": {')
            for j, (u, n) in enumerate(zip(users, ns, strict=True)):
                labels = rng.integers(0, 62, n)
                variants = rng.integers(0, len(pool[0]), n)
                xs = ", ".join(pool[c][k] for c, k in zip(labels, variants, strict=True))
                out.write((", " if j else "") + f'"{u}": {{"x": [{xs}], "y": '
                          + json.dumps(labels.tolist()) + "}")
            out.write("}}")
        total += path.stat().st_size
    return total


# A run as ``fedprune run`` makes it, through the library's public calls, with probes printing
# when the imports are done, when the federated data are loaded and when the first round has
# finished; times are seconds since the parent launched the process.  Arguments: the run
# directory, then ``key=value`` settings.
PROBE = """
import os, sys, time
T0 = float(os.environ["BENCH_T0"])
def say(name):
    print(f"PROBE {name} {time.time() - T0:.3f}", file=sys.stderr, flush=True)
import torch
from fedprune import load_config, run_simulation
from fedprune.data import load_federated
say("imported")
cfg = load_config(None, sys.argv[2:])
if cfg.threads:
    torch.set_num_threads(cfg.threads)
data = load_federated(cfg.data, cfg.seed)
say("data_loaded")
def on_round(record):
    if not getattr(on_round, "seen", False):
        on_round.seen = True
        say("first_round_done")
run_simulation(cfg, sys.argv[1], on_round=on_round, data=data)
"""

def run_measured(cmd: list[str], env: dict, logs: Path) -> dict:
    """Run ``cmd``: wall time, the child's own peak RSS (``wait4``) and its PROBE lines."""
    env = {**env, "BENCH_T0": repr(time.time())}
    logs.mkdir(parents=True, exist_ok=True)
    out_f, err_f = logs / "stdout.txt", logs / "stderr.txt"
    t0 = time.perf_counter()
    with open(out_f, "wb") as out, open(err_f, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = err_f.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{text[-3000:]}")
    probes = {ln.split()[1]: float(ln.split()[2]) for ln in text.splitlines()
              if ln.startswith("PROBE ")}
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "probes": probes, "stdout": out_f.read_text()}


QUICK_SCALE = 0.003  # --quick: 10 writers, 2,015 train and 232 test images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full size")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each run (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a few seconds: --scale {QUICK_SCALE} (10 writers) and 1 round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--keep", action="store_true", help="keep the JSON and the cache")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.rounds = QUICK_SCALE, 1
    if args.rounds < 1 or not 0 < args.scale <= 1:
        ap.error("--rounds must be >= 1 and --scale in (0, 1]")
    return args


def run(args: argparse.Namespace) -> dict:
    """Generate the data, measure preparing it and the two runs; print and return the figures."""
    scale = args.scale
    free = shutil.disk_usage(args.workdir).free
    need = (TRAIN + TEST) * scale * (BYTES_PER_IMAGE + 784) * 1.1
    if need > free:
        scale = scale * free / need * 0.9
        print(f"NOTE: {free / 1e9:.1f} GB free under {args.workdir}; scaled to {scale:.3f} "
              "of FEMNIST's size so the JSON fits")
    n_writers = max(10, round(WRITERS * scale))
    rng = np.random.default_rng(args.seed)
    train_n = sizes(n_writers, round(TRAIN * scale), rng, floor=1)
    test_n = sizes(n_writers, round(TEST * scale), rng, floor=1)
    names = [f"f{i:04d}_{i % 100:02d}" for i in range(n_writers)]
    clients = min(10, n_writers)

    work = Path(tempfile.mkdtemp(prefix="fedprune-femnist-", dir=args.workdir))
    leaf, cache = work / "leaf", work / "cache"
    env = {**os.environ, "FEDPRUNE_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    fed = [sys.executable, "-m", "fedprune"]
    try:
        t = time.perf_counter()
        pool = glyph_pool(rng)
        json_bytes = write_split(leaf / "train", names, train_n, pool, rng)
        json_bytes += write_split(leaf / "test", names, test_n, pool, rng)
        gen_s = time.perf_counter() - t
        print(f"generated LEAF JSON: {n_writers} writers, {int(train_n.sum())} train + "
              f"{int(test_n.sum())} test images, {json_bytes / 1e9:.2f} GB in "
              f"{len(list(leaf.rglob('*.json')))} files ({gen_s:.0f} s) under {leaf}")

        prep = run_measured([*fed, "data", "prepare", str(leaf)], env, work / "logs-prepare")
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        try:
            import msgspec  # noqa: F401

            parser = "msgspec"
        except ImportError:
            parser = "json (standard library; install msgspec for ~7x faster parsing)"
        print(f"prepare cache:        {prep['wall_s']:.1f} s wall, peak RSS "
              f"{prep['peak_rss_mb']} MB, cache {cache_bytes / 1e6:.0f} MB (JSON parser: "
              f"{parser})")

        results = {}
        for label, extra in (
            ("natural", ["data.partition=natural", f"data.num_clients={n_writers}",
                         "data.min_client_size=1"]),
            ("dirichlet", ["data.partition=dirichlet", f"data.num_clients={n_writers}",
                           "data.min_client_size=1", "data.alpha=0.5"]),
        ):
            out = work / f"run-{label}"
            cmd = [sys.executable, "-c", PROBE, str(out), "data.name=femnist",
                   f"data.path={leaf}", *extra, f"fed.rounds={args.rounds}",
                   f"fed.eval_every={args.rounds}", f"fed.clients_per_round={clients}",
                   "train.local_epochs=1", "prune.enabled=false", f"threads={args.threads}"]
            r = run_measured(cmd, env, work / f"logs-{label}")
            p = r["probes"]
            rounds = RunDir(out).read_rounds()
            r["rounds"], r["accuracy"] = len(rounds), rounds[-1]["accuracy"]
            results[label] = r
            print(f"run ({label:9}):     first round done {p['first_round_done']:.2f} s "
                  f"after launch (imports done {p['imported']:.2f} s, data loaded "
                  f"{p['data_loaded']:.2f} s); {args.rounds} round"
                  f"{'s' if args.rounds > 1 else ''} of {clients} clients + evaluating "
                  f"{int(test_n.sum())} test images: {r['wall_s']:.1f} s (accuracy "
                  f"{r['accuracy']:.3f}); peak RSS {r['peak_rss_mb']} MB")
        ok = all(r["probes"]["first_round_done"] < 10 and r["peak_rss_mb"] < 3072
                 for r in results.values())
        figures = {
            "writers": n_writers, "train_images": int(train_n.sum()),
            "test_images": int(test_n.sum()), "json_gb": round(json_bytes / 1e9, 2),
            "cache_mb": round(cache_bytes / 1e6), "prepare_s": prep["wall_s"],
            "prepare_peak_rss_mb": prep["peak_rss_mb"], "rounds": args.rounds,
            **{f"{k}_first_round_done_s": v["probes"]["first_round_done"]
               for k, v in results.items()},
            **{f"{k}_data_load_s": round(v["probes"]["data_loaded"] - v["probes"]["imported"], 2)
               for k, v in results.items()},
            **{f"{k}_peak_rss_mb": v["peak_rss_mb"] for k, v in results.items()},
            **{f"{k}_accuracy": v["accuracy"] for k, v in results.items()},
            "targets_met": ok, "scale": round(scale, 4),
        }
        print(json.dumps(figures, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
