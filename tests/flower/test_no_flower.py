"""The engine-neutral packages import, and a short in-process run works, without Flower.

A subprocess blocks every ``flwr`` import (a meta-path finder that raises
``ModuleNotFoundError``), imports each engine-neutral package and runs a tiny
:func:`fedprune.federated.run_simulation`; Flower code lives in :mod:`fedprune.flower` alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

ENGINE_NEUTRAL = ["fedprune", "fedprune.federated", "fedprune.data", "fedprune.pruning",
                  "fedprune.metrics", "fedprune.models", "fedprune.export", "fedprune.reproduce",
                  "fedprune.cli", "fedprune.seeds", "fedprune.rundir"]

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, sys

    class BlockFlower(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "flwr" or name.startswith("flwr."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, BlockFlower())
    for name in json.loads(sys.argv[1]):
        importlib.import_module(name)
    from fedprune.config import from_dict
    from fedprune.federated import run_simulation

    cfg = from_dict({"threads": 1, "data": {"num_clients": 4}, "model": {"widths": [4, 8]},
                     "train": {"local_epochs": 1},
                     "fed": {"rounds": 3, "clients_per_round": 2, "eval_every": 3},
                     "prune": {"start_round": 2, "max_prune_round": 3, "interval": 1}})
    res = run_simulation(cfg)
    flower_loaded = sorted(m for m in sys.modules if m == "flwr" or m.startswith("flwr."))
    try:
        import fedprune.flower.server_app  # noqa: F401
        blocked = False
    except ModuleNotFoundError:
        blocked = True
    print(json.dumps({"rounds": len(res.records), "accuracy": res.summary["accuracy"],
                      "flower_loaded": flower_loaded, "flower_app_blocked": blocked}))
""")


def test_engine_neutral_packages_and_a_run_need_no_flower():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(ENGINE_NEUTRAL)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rounds"] == 3
    assert 0.0 <= out["accuracy"] <= 1.0
    assert out["flower_loaded"] == []
    assert out["flower_app_blocked"]  # the block works: the Flower app itself needs flwr
