"""Simulation speed: client updates per second and seconds per round, three ways.

    python benchmarks/sim_speed.py                       # about 6 minutes on 2 cores
    python benchmarks/sim_speed.py --widths 32,64 6,12 --reps 3 --no-flower
    python benchmarks/sim_speed.py --device cuda --precisions fp32 bf16 fp16 --no-flower

The work: CNN-FEMNIST (62 classes, 28x28), 50 clients x 200 samples x 5 local epochs, batch
32, Adam (fedprune's defaults), one round = every client trains once from the same global
weights.  The data are FEMNIST-format LEAF JSON files written here (50 writers with 200
training images each), read through fedprune's FEMNIST reader, so all three engines train on
the very same tensors.  For each model width (the initial [32, 64] and pruned widths):

(a) **plain** -- the textbook per-client PyTorch loop: for each client, load the global
    weights, build an Adam optimizer, and run ``randperm`` mini-batches through the model;
(b) **fast** -- fedprune's batched engine (:class:`fedprune.federated.batched.BatchedTrainer`,
    ``train.engine = "batched"``), the default of ``fedprune run`` for plain CNNs;
(c) **flower** -- the same round through fedprune's Flower app on Flower's simulation engine
    (Ray; ``--cpus-per-client`` CPUs per virtual client; each ClientApp trains one client with
    ``threads`` = that many torch threads).  Seconds per round are the steady state (the
    ``seconds`` column of its ``rounds.jsonl``, first round excluded, as start-up).

(b) runs in each of ``--precisions`` (``train.precision``: fp32, and bf16 autocast, which
this machine's AVX-512 BF16 runs about twice as fast in matrix products), and all of (a) and
(b) run on ``--device`` (``cpu`` by default; ``cuda`` on a GPU machine).  (a) is always
float32: it is the baseline a user would write.

(a) and each (b) alternate, ``--reps`` times each, on the same machine in the same process;
the medians are reported, with the ratios of the medians.  The **fraction of matmul peak** is
training FLOPs per second (3 x the forward FLOPs of one sample, x samples x epochs) divided by
the median FLOP/s of a 2048x2048 fp32 ``torch.mm`` measured here with the same thread count
(on the same device); the bf16 ``torch.mm`` peak is printed beside it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.config import load_config
from fedprune.data import load_federated
from fedprune.data.synthetic import femnist_clients, write_leaf_femnist
from fedprune.data.transform import to_float_batch
from fedprune.device import DeviceError, check_precision, resolve_device, to_device, use_threads
from fedprune.federated.batched import BatchedTrainer, ClientJob
from fedprune.metrics import count_macs, read_rounds
from fedprune.models import new_model
from fedprune.seeds import batch_order as client_generator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(threads: int, device: torch.device | None = None, n: int = 2048,
                reps: int = 15, dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of an n x n ``torch.mm`` in ``dtype`` (2 n^3 FLOPs per product)."""
    device = device or torch.device("cpu")
    torch.set_num_threads(threads)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def write_data(root: Path, clients: int, samples: int, seed: int) -> Path:
    """LEAF FEMNIST JSON: ``clients`` writers with ``samples`` training images each."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    while len(train) < clients:
        for cid, (x, y) in femnist_clients(clients, rng, mean_size=samples + 40,
                                           prefix=f"w{len(train)}_").items():
            if len(y) >= samples + 10 and len(train) < clients:
                train[cid] = (x[:samples], y[:samples])
                test[cid] = (x[samples : samples + 10], y[samples : samples + 10])
    return write_leaf_femnist(root, train, test)


def plain_round(model, state, clients, cfg, seed: int, rnd: int, transform=None) -> None:
    """(a) The textbook per-client loop, float32, on the device of ``clients``' tensors."""
    device = clients[0][0].device
    worker = copy.deepcopy(model).to(device)
    tc = cfg.train
    for cid, (xu, y) in enumerate(clients):
        worker.load_state_dict(state)
        opt = torch.optim.Adam(worker.parameters(), lr=tc.lr)
        x = to_float_batch(transform, xu)  # the cache holds uint8 pixels: float once per client
        gen = client_generator(seed, rnd, cid)
        n = len(y)
        for _ in range(tc.local_epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            for s in range(0, n, tc.batch_size):
                idx = perm[s : s + tc.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(worker(x[idx]), y[idx]).backward()
                opt.step()
    _sync(device)


def fast_round(trainer, state, clients, seed: int, rnd: int, transform=None) -> None:
    """(b) fedprune's batched engine."""
    jobs = [ClientJob(x, y, client_generator(seed, rnd, cid), transform)
            for cid, (x, y) in enumerate(clients)]
    trainer.train(state, jobs)
    _sync(trainer.device)


def flower_round_seconds(cfg_sets: list[str], rounds: int, cpus: int, workdir: Path) -> float:
    """(c) Steady seconds per round of the Flower app on the simulation engine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # flower_harness
    from flower_harness import LocalFlower

    from fedprune.flower.run_config import experiment_to_run_config

    cfg = load_config(None, [*cfg_sets, f"threads={cpus}", f"fed.rounds={rounds}",
                             f"fed.eval_every={rounds}"])
    out = workdir / "out"
    with LocalFlower(workdir) as lf:
        lf.start_superlink(simulation=True)
        lf.run({**experiment_to_run_config(cfg), "out-dir": str(out), "round-timeout": 1200.0},
               timeout=3000, federation_config={"num-supernodes": cfg.data.num_clients,
                                                "backend": "ray",
                                                "client-resources-num-cpus": cpus})
    rows = read_rounds(out)
    return (rows[-1]["seconds"] - rows[0]["seconds"]) / (len(rows) - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", nargs="+", default=["32,64", "17,43", "6,12"],
                    help="CNN-FEMNIST conv widths to measure (the first is the initial width)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="rounds of (a) and of each (b) per width")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for (a) and (b)")
    ap.add_argument("--device", default="cpu", help="device of (a) and (b): cpu, cuda, auto, ...")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                    choices=["fp32", "bf16", "fp16"], help="train.precision of (b)")
    ap.add_argument("--no-flower", action="store_true", help="skip (c)")
    ap.add_argument("--flower-rounds", type=int, default=3,
                    help="rounds per Flower run (the first is start-up and not counted)")
    ap.add_argument("--cpus-per-client", type=int, default=1,
                    help="Ray CPUs (and torch threads) per Flower virtual client")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    try:
        device = resolve_device(args.device)
        for p in args.precisions:
            check_precision(device, p)
    except DeviceError as exc:
        print(f"sim_speed: {exc}", file=sys.stderr)
        return 2
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())

    peak = matmul_peak(args.threads, device)
    peak16 = (matmul_peak(args.threads, device, dtype=torch.bfloat16)
              if "bf16" in args.precisions else None)
    print(f"device: {device} ({name}); matmul peak (2048x2048 torch.mm, {args.threads} "
          f"threads): fp32 {peak / 1e9:.1f} GFLOP/s"
          + (f", bf16 {peak16 / 1e9:.1f} GFLOP/s ({peak16 / peak:.2f}x)" if peak16 else ""),
          flush=True)
    results: dict[str, dict] = {"device": str(device), "device_name": name,
                                "threads": args.threads, "peak_flops": peak,
                                "peak_flops_bf16": peak16, "widths": {}}
    with tempfile.TemporaryDirectory(prefix="fedprune-sim-speed-") as tmp:
        root = write_data(Path(tmp) / "femnist", args.clients, args.samples, seed=0)
        base = ["data.name=femnist", f"data.path={root}", "data.partition=natural",
                f"data.num_clients={args.clients}", f"data.cache_dir={Path(tmp) / 'cache'}",
                "data.max_test_samples=200", f"fed.clients_per_round={args.clients}",
                f"train.local_epochs={args.epochs}", "prune.enabled=false"]
        cfg = load_config(None, [*base, f"threads={args.threads}"])
        data = load_federated(cfg.data, cfg.seed)
        sizes = {len(cd.y) for cd in data.clients}
        print(f"data: {len(data.clients)} clients x {sizes} samples, {data.num_classes} "
              f"classes, {args.epochs} local epochs, batch {cfg.train.batch_size}", flush=True)
        clients = [(to_device(cd.x, device), to_device(cd.y, device)) for cd in data.clients]
        use_threads(cfg)
        tf = data.transform  # the cache's pixels are uint8
        for wtxt in args.widths:
            widths = [int(v) for v in wtxt.split(",")]
            model, spec = new_model("cnn_femnist", num_classes=data.num_classes, in_channels=1,
                                    image_size=28, widths=widths, seed=0)
            state = copy.deepcopy(model.state_dict())
            macs = count_macs(model, spec.example_input())
            samples = sum(len(cd.y) for cd in data.clients) * args.epochs
            train_flops = 3 * 2 * macs * samples
            trainers = {p: BatchedTrainer(model, dataclasses.replace(cfg.train, precision=p),
                                          device=device) for p in args.precisions}
            plain_round(model, state, clients, cfg, cfg.seed, 0, tf)  # warm-up: kernels, ...
            for tr in trainers.values():
                fast_round(tr, state, clients, cfg.seed, 0, tf)
            times: dict[str, list[float]] = {"plain": [], **{f"fast-{p}": [] for p in trainers}}
            for rep in range(args.reps):
                t = time.perf_counter()
                plain_round(model, state, clients, cfg, cfg.seed, rep + 1, tf)
                times["plain"].append(time.perf_counter() - t)
                for p, tr in trainers.items():
                    t = time.perf_counter()
                    fast_round(tr, state, clients, cfg.seed, rep + 1, tf)
                    times[f"fast-{p}"].append(time.perf_counter() - t)
            row: dict = {"macs": macs, "train_flops_per_round": train_flops,
                         "seconds": times}
            for key, ts in times.items():
                med = statistics.median(ts)
                row[key] = {"s_per_round": med, "updates_per_s": len(data.clients) / med,
                            "peak_fraction": train_flops / med / peak}
            if not args.no_flower:
                fl = flower_round_seconds([*base, f"model.widths=[{wtxt}]"], args.flower_rounds,
                                          args.cpus_per_client, Path(tmp) / f"flower-{wtxt}")
                row["flower"] = {"s_per_round": fl, "updates_per_s": len(data.clients) / fl,
                                 "peak_fraction": train_flops / fl / peak}
            ratios = {f"fast-{p}_vs_plain": row["plain"]["s_per_round"]
                      / row[f"fast-{p}"]["s_per_round"] for p in trainers}
            for p in trainers:
                if p != "fp32" and "fp32" in trainers:
                    ratios[f"fast-{p}_vs_fast-fp32"] = (row["fast-fp32"]["s_per_round"]
                                                        / row[f"fast-{p}"]["s_per_round"])
                if "flower" in row:
                    ratios[f"fast-{p}_vs_flower"] = (row["flower"]["s_per_round"]
                                                     / row[f"fast-{p}"]["s_per_round"])
            row["ratios"] = ratios
            results["widths"][wtxt] = row
            print(f"\nwidths [{wtxt}]: forward {2 * macs / 1e6:.2f} MFLOP/sample, "
                  f"{train_flops / 1e12:.3f} TFLOP per round", flush=True)
            print(f"  {'engine':<8} {'precision':<9} {'device':<8} {'s/round':>8} "
                  f"{'updates/s':>10} {'GFLOP/s':>8} {'of peak':>8}")
            columns = [("plain", "plain", "fp32", str(device))]
            columns += [(f"fast-{p}", "fast", p, str(device)) for p in trainers]
            columns += [("flower", "flower", "fp32", "cpu")] if "flower" in row else []
            for key, engine, prec, dev in columns:
                r = row[key]
                print(f"  {engine:<8} {prec:<9} {dev:<8} {r['s_per_round']:>8.2f} "
                      f"{r['updates_per_s']:>10.1f} "
                      f"{train_flops / r['s_per_round'] / 1e9:>8.1f} "
                      f"{100 * r['peak_fraction']:>7.1f}%")
            print("  " + "; ".join(f"{k.replace('_vs_', ' vs ')}: {v:.2f}x"
                                   for k, v in ratios.items()))
            print("  all reps: " + ", ".join(f"{k} {[round(v, 2) for v in ts]}"
                                             for k, ts in times.items()), flush=True)
    results["seconds"] = time.perf_counter() - t_start
    print(f"\nbenchmark wall time: {results['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
