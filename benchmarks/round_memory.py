"""Peak memory of one training round: the batched engine against the per-client engine.

    python benchmarks/round_memory.py                 # about 1 minute on 2 cores
    python benchmarks/round_memory.py --batch-sizes 32 20000 --clients 10

The work: one round of CNN-FEMNIST (62 classes, 28x28, full width [32, 64]) over FEMNIST-sized
clients (``--samples`` each, 227 by default: FEMNIST's 805,263 samples over 3,550 writers), one
local epoch, Adam -- fedprune's defaults -- at each ``--batch-sizes``.  Every measurement runs
in a fresh process, which reports its peak resident memory (``ru_maxrss``) after the round and
before it (setup: torch, the model, the clients' data); the figure is the difference, the
memory the round itself took.  The batched engine pads each step to the batch size only as
far as the largest client holds samples, so a batch size far beyond every client costs it no
more than one as large as the largest client.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _child(engine: str, batch_size: int, clients: int, samples: int) -> dict:
    import torch

    from fedprune.config import TrainConfig
    from fedprune.federated.batched import BatchedTrainer, ClientJob
    from fedprune.federated.client import PerClientTrainer
    from fedprune.models import new_model

    torch.set_num_threads(1)
    model, _ = new_model("cnn_femnist", num_classes=62, in_channels=1, image_size=28,
                         widths=[32, 64], seed=0)
    g = torch.Generator().manual_seed(0)
    jobs = [ClientJob(torch.randn(samples, 1, 28, 28, generator=g),
                      torch.randint(0, 62, (samples,), generator=g),
                      torch.Generator().manual_seed(i)) for i in range(clients)]
    cfg = TrainConfig(local_epochs=1, batch_size=batch_size)
    trainer = BatchedTrainer(model, cfg) if engine == "batched" else PerClientTrainer(model, cfg)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    trainer.train(model.state_dict(), jobs)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"round_mb": (after - before) / 1024, "peak_mb": after / 1024, "seconds": seconds}


def measure(engine: str, batch_size: int, clients: int, samples: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", engine, str(batch_size),
                          str(clients), str(samples)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 20000])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--samples", type=int, default=227)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        engine, bsz, clients, samples = args.child
        print(json.dumps(_child(engine, int(bsz), int(clients), int(samples))))
        return
    print(f"one round, CNN-FEMNIST [32, 64], {args.clients} clients x {args.samples} samples, "
          f"1 epoch; medians of {args.reps} fresh processes")
    print(f"{'engine':<11} {'batch':>6} {'round MB':>9} {'peak MB':>8} {'seconds':>8}")
    rows = {}
    for bsz in args.batch_sizes:
        for engine in ("batched", "per_client"):
            runs = [measure(engine, bsz, args.clients, args.samples) for _ in range(args.reps)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows[engine, bsz] = med
            print(f"{engine:<11} {bsz:>6} {med['round_mb']:>9.0f} {med['peak_mb']:>8.0f} "
                  f"{med['seconds']:>8.2f}")
    for bsz in args.batch_sizes:
        b, p = rows["batched", bsz], rows["per_client", bsz]
        print(f"batch {bsz}: batched / per-client peak memory {b['peak_mb'] / p['peak_mb']:.2f}x,"
              f" round memory {b['round_mb'] / max(p['round_mb'], 1):.2f}x")


if __name__ == "__main__":
    main()
