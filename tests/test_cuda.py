"""Training, evaluation and the Flower ClientApp on a CUDA GPU (marked ``cuda``).

Every test here skips, with the reason, where torch sees no CUDA GPU: they do not run on a
CPU-only machine and are not counted as passing there.  ``benchmarks/gpu_check.sh`` runs them
(``pytest -m cuda``) on a GPU machine.  What holds on CUDA: results agree with the CPU's up to
floating-point rounding (cuDNN picks its own reduction orders), not bit for bit; the device
plumbing on the CPU is tested in ``test_device.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from interrupt import Stop, stop_after

from fedprune.config import TrainConfig, from_dict
from fedprune.device import resolve_device
from fedprune.federated import run_simulation
from fedprune.federated.batched import BatchedTrainer, ClientJob
from fedprune.federated.client import evaluate, train_local
from fedprune.models import new_model
from fedprune.rundir import CHECKPOINT_FILE

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason=f"needs a CUDA GPU; torch {torch.__version__} sees none"),
]

TINY = {"threads": 1, "device": "cuda", "data": {"num_clients": 6},
        "model": {"widths": [8, 16]}, "train": {"local_epochs": 2},
        "fed": {"rounds": 4, "clients_per_round": 3, "eval_every": 1},
        "prune": {"enabled": False}}


def _cfg(**over):
    d = copy.deepcopy(TINY)
    for section, values in over.items():
        if isinstance(values, dict):
            d.setdefault(section, {}).update(values)
        else:
            d[section] = values
    return from_dict(d)


def _flat(state):
    return torch.cat([v.float().flatten() for v in state.values()])


def _clients(device, n_clients=3, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 28, 28, generator=g).to(device),
             torch.randint(0, 10, (n,), generator=g).to(device)) for _ in range(n_clients)]


def _train(device, precision, engine):
    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[6, 12], seed=0)
    cfg = TrainConfig(local_epochs=2, batch_size=16, precision=precision)
    state = copy.deepcopy(model.state_dict())
    clients = _clients(device)
    if engine == "batched":
        jobs = [ClientJob(x, y, torch.Generator().manual_seed(10 + i))
                for i, (x, y) in enumerate(clients)]
        return state, BatchedTrainer(model, cfg, device=device).train(state, jobs)
    out = []
    for i, (x, y) in enumerate(clients):
        w = copy.deepcopy(model).to(device)
        w.load_state_dict(state)
        out.append(train_local(w, x, y, cfg, torch.Generator().manual_seed(10 + i)))
    return state, out


def test_auto_and_cuda_resolve_to_the_current_gpu():
    assert resolve_device("auto") == resolve_device("cuda") == torch.device(
        "cuda", torch.cuda.current_device())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("engine", ["batched", "per_client"])
def test_training_on_the_gpu_agrees_with_the_cpu(precision, engine):
    gpu = resolve_device("cuda")
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip(f"{torch.cuda.get_device_name(gpu)} has no native bfloat16")
    start, on_gpu = _train(gpu, precision, engine)
    _, on_cpu = _train(torch.device("cpu"), "fp32", "per_client")
    w0 = _flat(start)
    for (s_gpu, n, m_gpu), (s_cpu, _, m_cpu) in zip(on_gpu, on_cpu, strict=True):
        assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in s_gpu.values())
        u, v = _flat(s_gpu) - w0, _flat(s_cpu) - w0
        cos = float(u @ v / (u.norm() * v.norm()))
        if precision == "fp32":
            assert float((u - v).norm() / v.norm()) < 1e-3
        else:
            assert cos > 0.9
        assert math.isclose(m_gpu["train_loss"], m_cpu["train_loss"], rel_tol=0.01)
        assert n == 40


def test_evaluation_on_the_gpu_equals_the_cpu():
    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[6, 12], seed=0)
    (x, y), = _clients(torch.device("cpu"), n_clients=1, n=200)
    acc_cpu, loss_cpu = evaluate(model, x, y)
    acc_gpu, loss_gpu = evaluate(model, x, y, device=resolve_device("cuda"))
    assert abs(acc_gpu - acc_cpu) <= 1 / 200 and math.isclose(loss_gpu, loss_cpu, rel_tol=1e-4)
    assert next(model.parameters()).device.type == "cpu"  # the model itself stays


@pytest.mark.parametrize("engine", ["batched", "per_client"])
def test_a_run_on_the_gpu_matches_the_cpu_run_to_rounding(tmp_path, engine):
    gpu = run_simulation(_cfg(train={"engine": engine}), tmp_path / "gpu")
    cpu = run_simulation(_cfg(device="cpu", train={"engine": engine}), tmp_path / "cpu")
    a, b = _flat(gpu.model.state_dict()), _flat(cpu.model.state_dict())
    assert float((a - b).norm() / b.norm()) < 1e-3
    assert abs(gpu.summary["accuracy"] - cpu.summary["accuracy"]) < 0.02
    ckpt = torch.load(tmp_path / "gpu" / CHECKPOINT_FILE, weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_the_gpu_learn_like_float32(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bfloat16 on this GPU")
    ref = run_simulation(_cfg(), tmp_path / "fp32").summary["accuracy"]
    got = run_simulation(_cfg(train={"precision": precision}), tmp_path / precision)
    assert abs(got.summary["accuracy"] - ref) < 0.05


def test_a_gpu_run_resumes_to_within_rounding(tmp_path):
    cfg = _cfg()
    ref = run_simulation(cfg, tmp_path / "full")
    with pytest.raises(Stop):
        run_simulation(cfg, tmp_path / "cut", on_round=stop_after(2))
    res = run_simulation(cfg, tmp_path / "cut", resume=True)
    a, b = _flat(ref.model.state_dict()), _flat(res.model.state_dict())
    assert float((a - b).norm() / b.norm()) < 1e-3


def test_the_clientapp_trains_on_its_node_configs_gpu(tmp_path):
    pytest.importorskip("flwr")
    from fedprune.flower.client_app import client_app
    from fedprune.flower.grid import LocalGrid
    from fedprune.flower.run_config import experiment_to_run_config
    from fedprune.flower.server_app import run_server

    cfg = _cfg(device="cpu", train={"engine": "per_client"})  # the server's own machine: CPU
    nodes = [{"partition-id": i, "num-partitions": 6, "device": "cuda"} for i in range(6)]
    summary = run_server(LocalGrid(client_app, nodes), {**experiment_to_run_config(cfg),
                                                        "out-dir": str(tmp_path / "fl")})
    cpu = run_simulation(cfg, tmp_path / "cpu")
    assert abs(summary["accuracy"] - cpu.summary["accuracy"]) < 0.02
    on_gpu = [d for d in client_app.runtime.devices() if d.device.type == "cuda"]
    assert on_gpu and on_gpu[0].get(0, "x").device.type == "cuda"  # the nodes trained there
