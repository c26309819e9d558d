"""Short reference runs whose results must not change when the code is restructured.

Each scenario runs a real experiment and returns its *fingerprint*: every ``summary.json``
figure and every ``rounds.jsonl`` field except wall times, plus a SHA-256 of the final
weights (read back from ``checkpoint.pt``).  ``tests/golden/<cpu vendor>/<name>.json``
holds the fingerprints recorded from a known-good tree on that kind of CPU (float32 kernels
round differently on Intel and AMD processors: ``GenuineIntel`` was recorded on an Intel
Xeon, ``AuthenticAMD`` on an AMD EPYC, from the same tree); ``tests/test_golden.py``
compares, bit for bit, against the recordings of the CPU it runs on (an unknown vendor: the
Intel ones).

Record them anew (only when a change of results is intended, and say so in the commit), or
for a new kind of CPU from a known-good tree; or only the scenarios named:

    python tests/golden_runs.py --write [SCENARIO ...]

A recording is compared where its CPU's vendor runs the tests.  The scenarios of the nested
automatic method (``default``, ``flower-auto``, ``ratio-aligned``, ``resumed-default``)
were added later: recorded on an AMD EPYC first, then on an Intel Xeon (with AMX) from a tree
that runs them alike (the same decisions; ``flower-auto``'s final accuracy differs in the
third decimal between the two, as float32 kernels do).  Since ordered dropout per batch and
the pooled decision became the default, ``default``, ``flower-auto`` and ``resumed-default``
are recorded on AMD EPYC only (an Intel machine compares the other scenarios until it
records them with ``--write default flower-auto resumed-default``); they were recorded again
when the pooled decision came to weight each judgement by its precision (the same decisions,
other pooled figures in the records).  When the direction screen (``fed.min_cosine``) and the
trimmed paired costs (``prune.trim_fraction``) became the default, the scenarios recorded on
both kinds of CPU were given the earlier settings explicitly (``EARLIER``: the same runs, whose
messages carry two more settings: AMD re-recorded, the Intel recordings' bytes shifted by the
same amounts, the shift that turns the previous AMD recordings into the new ones exactly), and
``default``, ``flower-auto`` and ``resumed-default`` (AMD only) recorded with the new defaults.
When the norm bound's default became 2 (``fed.clip_factor``), ``EARLIER`` took the earlier 3
(its messages carry the same settings as before: the recordings stand), and ``default`` and
``resumed-default`` (AMD only) were recorded again with the new default (``flower-auto`` ran
as recorded).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...), or ``unknown``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def golden_dir(vendor: str | None = None, writing: bool = False) -> Path:
    """The recordings of ``vendor``'s CPUs (default: this machine's); reading, the Intel
    ones where that vendor has none."""
    path = HERE / "golden" / (vendor or cpu_vendor())
    return path if writing or path.is_dir() else HERE / "golden" / "GenuineIntel"


GOLDEN_DIR = golden_dir()
VOLATILE = {"seconds"}
FORMAT = 2  # what a recording written now holds (fingerprint)  # wall times: the only figures that may differ between two runs

SHORT = ["fed.rounds=12", "train.local_epochs=1"]  # the default digits run, shortened
# the boundary rule and the fixed ratio as they were the defaults: no validation split
NO_VAL = ["data.val_fraction=0.0"]
FLOWER = ["data.num_clients=4", "fed.clients_per_round=3"]
# the aggregation and the paired costs as they were before the direction screen, the
# trimmed costs and the norm bound of 2 became the default: the scenarios recorded on both
# kinds of CPU run them
EARLIER = ["fed.min_cosine=-1", "prune.trim_fraction=0", "fed.clip_factor=3"]
SCENARIOS: dict[str, list[str]] = {
    # fedprune's default: the automatic method, nested widths searched in flight
    "default": SHORT,
    # the earlier automatic method (the default before nested widths)
    "auto-paired": SHORT + EARLIER + ["prune.method=auto-paired"],
    "boundary": SHORT + EARLIER + NO_VAL + ["prune.method=boundary"],
    "budget": SHORT + EARLIER + ["budget.params_fraction=0.3", "data.val_fraction=0.2",
                                 "budget.guard_recovery_rounds=1"],
    "ratio": SHORT + EARLIER + NO_VAL + ["prune.method=ratio", "prune.ratio=0.3",
                                         "prune.round_to=1"],
    # the fixed ratio on hardware multiples (prune.round_to's default, 16)
    "ratio-aligned": SHORT + EARLIER + NO_VAL + ["prune.method=ratio", "prune.ratio=0.3"],
    "flower": SHORT + EARLIER + FLOWER + ["budget.params_fraction=0.3",
                                          "data.val_fraction=0.2",
                                          "budget.guard_recovery_rounds=1",
                                          "budget.guard_clients=3"],
    # the automatic method through the Flower app: nested widths in the messages, and a
    # tolerance wide enough that it cuts within the 12 rounds
    "flower-auto": SHORT + FLOWER + ["data.val_fraction=0.2", "prune.val_clients=3",
                                     "prune.max_accuracy_drop=0.1"],
    # the earlier automatic method through the Flower app: candidate and reference
    "flower-auto-paired": SHORT + EARLIER + FLOWER + ["data.val_fraction=0.2",
                                                      "prune.val_clients=3",
                                                      "prune.method=auto-paired"],
}
# killed after round 7, then resumed
RESUME_AFTER = {"resumed": ("auto-paired", 7), "resumed-default": ("default", 7)}


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def fingerprint(run_dir: Path) -> dict[str, Any]:
    from fedprune.rundir import CHECKPOINT_FILE, load_checkpoint

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in
            (run_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines()]
    _, model, rnd = load_checkpoint(run_dir / CHECKPOINT_FILE)
    return {
        # 2: every byte the meter counts, client compute included (format 1, the earlier
        # recordings: the weights and the architecture only, no client compute)
        "format": FORMAT,
        # config (and the Flower app's settings) hold the run's own path
        "summary": {k: v for k, v in summary.items() if k not in VOLATILE | {"config", "flower"}},
        "rounds": [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows],
        "checkpoint_round": rnd,
        "weights_sha256": weights_sha256(model.state_dict()),
    }


def wire_texts(cfg: Any) -> dict[str, int]:
    """Bytes of the texts every train message carries that the recordings did not count:
    the experiment config, and the dense model's spec (for the dense-equivalent traffic)."""
    from fedprune.data import load_federated
    from fedprune.models import new_model

    data = load_federated(cfg.data, cfg.seed)
    c, h, _ = data.input_shape
    _, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                        image_size=h, widths=cfg.model.widths, seed=cfg.seed)
    return {"experiment": len(cfg.to_json().encode()), "dense_spec": len(spec.to_json().encode()),
            "clients_per_round": cfg.fed.clients_per_round}


def run_scenario(name: str, out: Path) -> dict[str, Any]:
    """Run scenario ``name`` into ``out`` (a new folder) and return its fingerprint, with
    :func:`wire_texts` under ``"wire"``."""
    from fedprune.config import load_config
    from fedprune.federated import run_simulation

    if name in RESUME_AFTER:
        from interrupt import Stop, stop_after

        base, after = RESUME_AFTER[name]
        cfg = load_config(None, SCENARIOS[base])
        try:
            run_simulation(cfg, out, on_round=stop_after(after))
        except Stop:
            pass
        run_simulation(cfg, out, resume=True)
        return {**fingerprint(out), "wire": wire_texts(cfg)}
    cfg = load_config(None, SCENARIOS[name])
    if name.startswith("flower"):
        from fedprune.flower.client_app import client_app
        from fedprune.flower.grid import LocalGrid
        from fedprune.flower.run_config import experiment_to_run_config, parse_run_config
        from fedprune.flower.server_app import run_server

        n = cfg.data.num_clients
        grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": n}
                                      for i in range(n)])
        run_config = experiment_to_run_config(cfg)
        run_server(grid, {**run_config, "out-dir": str(out), "plots": False})
        cfg = parse_run_config(run_config)[0]  # the experiment as the ServerApp sends it
    else:
        run_simulation(cfg, out)
    return {**fingerprint(out), "wire": wire_texts(cfg)}


NAMES = [*SCENARIOS, *RESUME_AFTER]


def main(argv: list[str]) -> int:
    import tempfile

    if not argv or argv[0] != "--write" or any(n not in NAMES for n in argv[1:]):
        print(__doc__)
        return 2
    sys.path.insert(0, str(HERE))
    out_dir = golden_dir(writing=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in argv[1:] or NAMES:
            fp = run_scenario(name, Path(tmp) / name)
            del fp["wire"]
            (out_dir / f"{name}.json").write_text(json.dumps(fp, indent=1, sort_keys=True)
                                                      + "\n", encoding="utf-8")
            print(f"{name}: {fp['summary']['params_final']} params, accuracy "
                  f"{fp['summary']['accuracy']:.4f}, weights {fp['weights_sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
