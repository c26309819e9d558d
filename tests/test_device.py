"""The ``device`` and ``train.precision`` settings, and ``fed.payload_dtype``, on the CPU.

Tests that need a CUDA GPU are in ``test_cuda.py`` (marked ``cuda``; they skip, saying so,
where torch sees no GPU).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from interrupt import Stop, stop_after

from fedprune.cli import main
from fedprune.config import ConfigError, TrainConfig, from_dict, load_config
from fedprune.data.transform import PixelTransform
from fedprune.device import (
    DeviceData,
    DeviceError,
    LossScaler,
    check_precision,
    precision_context,
    resolve_device,
    to_device,
    use_threads,
)
from fedprune.federated import run_simulation
from fedprune.federated.batched import BatchedTrainer, ClientJob
from fedprune.federated.client import evaluate, train_local
from fedprune.federated.loop import make_trainer
from fedprune.federated.meter import NUMBER_BYTES
from fedprune.federated.wire import decode, encode, round_trip
from fedprune.metrics import read_rounds
from fedprune.models import new_model

TINY = {"threads": 1, "data": {"num_clients": 6}, "model": {"widths": [4, 8]},
        "train": {"local_epochs": 1}, "fed": {"rounds": 4, "clients_per_round": 3,
                                              "eval_every": 1},
        "prune": {"method": "boundary", "start_round": 2, "max_prune_round": 3, "interval": 1,
                  "k": 0.5, "max_fraction": 0.5}}


def _cfg(**over):
    d = copy.deepcopy(TINY)
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            d.setdefault(section, {})[name] = value
        else:
            d[section] = value
    return from_dict(d)


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


# ----------------------------------------------------------------------------- device names


def test_explicit_cpu_and_auto_without_a_gpu_resolve_to_the_cpu(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_takes_the_gpu_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"torch sees 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_a_device_that_is_not_here_is_a_clear_error(no_cuda, name):
    with pytest.raises(DeviceError) as err:
        resolve_device(name)
    text = str(err.value)
    assert f"device = {name!r}" in text and "device = 'cpu'" in text
    if name.startswith("cuda"):
        assert ("has no CUDA support" in text) or ("no CUDA GPU is visible" in text)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:0:1", ""])
def test_a_device_name_that_is_no_device_is_refused_by_the_config(name):
    with pytest.raises(ConfigError, match=r"device = .* is out of range"):
        load_config(None, [f"device={name}"])


def test_fp16_needs_cuda_and_unknown_precisions_are_refused():
    with pytest.raises(DeviceError, match="'fp16' needs a CUDA device.*use 'bf16'"):
        check_precision(torch.device("cpu"), "fp16")
    check_precision(torch.device("cpu"), "bf16")
    check_precision(torch.device("cpu"), "fp32")
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])


def test_the_cli_says_in_one_line_that_cuda_is_not_here(no_cuda, tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path / "run"), "--no-progress", "--set", "device=cuda",
               "--set", "fed.rounds=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "device = 'cuda' but" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "rounds.jsonl").exists()  # refused before any round


def test_the_loop_refuses_fp16_on_the_cpu_before_any_work(tmp_path):
    with pytest.raises(DeviceError, match="fp16"):
        run_simulation(_cfg(train__precision="fp16"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- data moved once


def test_client_data_move_to_the_device_once_beside_their_transform():
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    tf = PixelTransform.of([0.5], [0.25])
    moved = to_device(x, torch.device("meta"))
    assert moved.device.type == "meta" and moved.dtype == torch.uint8
    assert to_device(x, torch.device("cpu")) is x  # already there: the tensor itself

    client = SimpleNamespace(x=x, y=torch.zeros(5, dtype=torch.int64), val_x=None, val_y=None)
    data = SimpleNamespace(clients=[client], transform=tf)
    on_meta = DeviceData(data, torch.device("meta"))
    first = on_meta.get(0, "x")
    assert first.device.type == "meta" and on_meta.get(0, "x") is first  # moved once
    assert on_meta.get(0, "val_x") is None
    assert on_meta.transform is tf  # the data's, not the tensor's
    on_cpu = DeviceData(data, torch.device("cpu"))
    assert on_cpu.get(0, "x") is x


def test_use_threads_sets_the_configured_count_and_zero_leaves_it():
    before = torch.get_num_threads()
    try:
        use_threads(_cfg(threads=1))
        assert torch.get_num_threads() == 1
        use_threads(_cfg(threads=2))
        assert torch.get_num_threads() == 2
        use_threads(_cfg(threads=0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_engines_train_on_the_configured_device(no_cuda):
    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[4, 8], seed=0)
    cfg = _cfg(device="auto")
    trainer = make_trainer(model, cfg)
    assert isinstance(trainer, BatchedTrainer) and trainer.device == torch.device("cpu")
    per = make_trainer(model, _cfg(device="cpu", train__engine="per_client"))
    assert next(per.worker.parameters()).device == torch.device("cpu")


# ----------------------------------------------------------------------------- precision


def _clients(n_clients=3, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for _ in range(n_clients)]


def _train_both(precision: str, optimizer: str = "adam"):
    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[6, 12], seed=0)
    cfg = TrainConfig(local_epochs=2, batch_size=16, precision=precision, optimizer=optimizer,
                      lr=3e-3 if optimizer == "adam" else 0.05)
    state = copy.deepcopy(model.state_dict())
    clients = _clients()
    per = []
    for i, (x, y) in enumerate(clients):
        w = copy.deepcopy(model)
        w.load_state_dict(state)
        per.append(train_local(w, x, y, cfg, torch.Generator().manual_seed(10 + i)))
    jobs = [ClientJob(x, y, torch.Generator().manual_seed(10 + i))
            for i, (x, y) in enumerate(clients)]
    bat = BatchedTrainer(model, cfg).train(state, jobs)
    return state, per, bat


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-12)) for k in a)


def _cosine_of_updates(a: dict, b: dict, start: dict) -> float:
    """Cosine between two clients' updates (trained weights minus the start)."""
    u = torch.cat([(a[k] - start[k]).flatten() for k in start])
    v = torch.cat([(b[k] - start[k]).flatten() for k in start])
    return float(u @ v / (u.norm() * v.norm()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_float32_weights_and_both_engines_agree(precision):
    # fp16 runs on CUDA only (check_precision); its arithmetic (autocast + loss scaling) runs
    # on the CPU too, which checks the scaling path of both engines without a GPU.
    state, per32, bat32 = _train_both("fp32")
    _, per16, bat16 = _train_both(precision)
    for (s_per, n_per, m_per), (s_bat, _, m_bat), (s32, _, m32) in zip(per16, bat16, per32,
                                                                         strict=True):
        assert all(v.dtype == torch.float32 and v.device.type == "cpu"
                   for v in (*s_per.values(), *s_bat.values()))
        # autocast is active: the result differs from float32 ...
        assert any(not torch.equal(s_per[k], s32[k]) for k in s32)
        # ... but it is the same training: the update points the same way, the loss agrees
        assert _cosine_of_updates(s_per, s32, state) > 0.9
        assert math.isclose(m_per["train_loss"], m32["train_loss"], rel_tol=0.01)
        # and the two engines compute the same mixed-precision training, up to rounding:
        # closer to each other than to float32, and within a bound set by the format.  On
        # the CPU fp16 autocast rounds differently in the batched engine's grouped kernels
        # (AMD EPYC: 5e-4 to 8e-3 between the engines, against 7e-3 to 0.39 from float32);
        # bf16 agrees to 2e-6 there.
        assert _max_rel(s_bat, s_per) < 0.5 * _max_rel(s_per, s32)
        assert _max_rel(s_bat, s_per) < {"bf16": 1e-3, "fp16": 2e-2}[precision]
        assert math.isclose(m_bat["train_loss"], m_per["train_loss"], rel_tol=1e-4)
        assert n_per == 40
    # float32 is unchanged by the precision plumbing: the engines still agree to rounding
    for (s_per, _, _), (s_bat, _, _) in zip(per32, bat32, strict=True):
        assert _max_rel(s_bat, s_per) < 1e-4


def test_autocast_is_off_in_fp32_and_on_in_bf16():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with precision_context(torch.device("cpu"), "fp32"):
        assert conv(x).dtype == torch.float32
    with precision_context(torch.device("cpu"), "bf16"):
        assert conv(x).dtype == torch.bfloat16


def test_evaluation_runs_in_float32_whatever_the_training_precision():
    model, _ = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                         widths=[4, 8], seed=0)
    (x, y), = _clients(1)
    acc, loss = evaluate(model, x, y)
    acc2, loss2 = evaluate(model, x, y, device=torch.device("cpu"))
    assert (acc, loss) == (acc2, loss2) and 0 <= acc <= 1 and loss > 0


# ----------------------------------------------------------------------------- loss scaling


def test_the_loss_scaler_skips_overflowing_steps_and_adapts_its_scale():
    sc = LossScaler(enabled=True, init_scale=8.0, growth_interval=2)
    loss = torch.tensor(2.0)
    assert float(sc.scaled(loss)) == 16.0
    g = [torch.tensor([8.0, 16.0])]
    assert sc.unscale(g) and torch.equal(g[0], torch.tensor([1.0, 2.0]))
    sc.update(True)
    assert sc.scale == 8.0
    sc.update(True)
    assert sc.scale == 16.0  # two finite steps in a row: doubled
    bad = [torch.tensor([float("inf"), 1.0])]
    assert not sc.unscale(bad)
    sc.update(False)
    assert sc.scale == 8.0  # an overflow: halved
    off = LossScaler(enabled=False)
    g = [torch.tensor([3.0])]
    assert off.scaled(loss) is loss and off.unscale(g) and float(g[0]) == 3.0


def test_an_overflow_at_every_step_skips_every_step_in_both_engines(monkeypatch):
    state, _, _ = _train_both("fp32")
    # an overflow at every step: the scale halves and no step is taken, in both engines
    seen: list[float] = []
    real_update = LossScaler.update

    def always_overflow(self, finite):
        seen.append(self.scale)
        real_update(self, False)

    monkeypatch.setattr(LossScaler, "update", always_overflow)
    monkeypatch.setattr(LossScaler, "unscale", lambda self, grads: False)
    _, per_skip, bat_skip = _train_both("fp16")
    for (s_per, _, _), (s_bat, _, _) in zip(per_skip, bat_skip, strict=True):
        assert all(torch.equal(s_per[k], state[k]) for k in state)  # no step was taken
        assert all(torch.equal(s_bat[k], state[k]) for k in state)
    assert seen[:3] == [2.0**16, 2.0**15, 2.0**14]


# ----------------------------------------------------------------------------- payload dtype


def test_bf16_payload_encodes_to_int16_bit_patterns_and_back():
    state = {"w": torch.tensor([1.0, -2.5, 3.14159, 1e-3]), "n": torch.tensor(7)}
    wire = encode(state, "bfloat16")
    assert wire["w"].dtype == torch.int16 and wire["n"].dtype == torch.int64
    back = decode(wire, "bfloat16", state)
    assert back["w"].dtype == torch.float32 and torch.equal(back["n"], state["n"])
    assert torch.equal(back["w"], state["w"].to(torch.bfloat16).float())
    assert torch.equal(round_trip(state, "bfloat16")["w"], back["w"])
    assert encode(state, "float32")["w"] is state["w"]
    with pytest.raises(ValueError, match="arrived as torch.float32"):
        decode(state, "bfloat16", state)


def test_a_bf16_payload_run_halves_the_weights_bytes_and_keeps_its_model_on_bf16_values(
        tmp_path):
    cfg32, cfg16 = _cfg(), _cfg(fed={**TINY["fed"], "payload_dtype": "bfloat16"})
    run_simulation(cfg32, tmp_path / "f32")
    b16 = run_simulation(cfg16, tmp_path / "b16")
    r32, r16 = read_rounds(tmp_path / "f32")[0], read_rounds(tmp_path / "b16")[0]
    assert r32["widths"] == r16["widths"] == {"features.0": 4, "features.3": 8}  # dense
    # the weights halve both ways; the texts and numbers beside them stay
    up_extra = 3 * 4 * NUMBER_BYTES  # three replies, four metrics each
    assert (r16["bytes_up"] - up_extra) * 2 == r32["bytes_up"] - up_extra
    texts = r32["bytes_down"] - (r32["bytes_up"] - up_extra)  # spec, config, 3 numbers
    longer = len(cfg16.to_json()) - len(cfg32.to_json())  # "bfloat16" for "float32"
    assert texts > 0 and r16["bytes_down"] == r16["bytes_up"] - up_extra + texts + 3 * longer
    for v in b16.model.state_dict().values():  # the model is what travels
        if v.is_floating_point():
            assert torch.equal(v, v.to(torch.bfloat16).float())
    # it learns like float32 (digits, widths [8, 16], 5 rounds of 3 local epochs)
    learn = {"fed": {**TINY["fed"], "rounds": 5}, "model": {"widths": [8, 16]},
             "train": {"local_epochs": 3}, "prune": {"enabled": False}}
    acc32 = run_simulation(from_dict({**TINY, **learn})).summary["accuracy"]
    acc16 = run_simulation(from_dict({**TINY, **learn, "fed": {
        **learn["fed"], "payload_dtype": "bfloat16"}})).summary["accuracy"]
    assert acc32 > 0.2 and abs(acc16 - acc32) < 0.05


@pytest.mark.parametrize("over", [{"fed": {**TINY["fed"], "payload_dtype": "bfloat16"}},
                                  {"train": {**TINY["train"], "precision": "bf16"}}],
                         ids=["bf16-payload", "bf16-training"])
def test_bf16_runs_resume_bit_identically_on_the_cpu(tmp_path, over):
    cfg = from_dict({**TINY, **over})
    ref = run_simulation(cfg, tmp_path / "full")
    with pytest.raises(Stop):
        run_simulation(cfg, tmp_path / "cut", on_round=stop_after(2))
    res = run_simulation(cfg, tmp_path / "cut", resume=True)
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ref.summary["accuracy"] == res.summary["accuracy"]


def test_a_supernodes_node_config_device_wins_over_the_run_configs(no_cuda):
    pytest.importorskip("flwr")
    from flwr.app import Context, RecordDict

    from fedprune.flower.client_app import _device

    def ctx(**node):
        return Context(run_id=1, node_id=1, node_config={"partition-id": 0, **node},
                       state=RecordDict(), run_config={})

    cfg = _cfg(device="cpu")
    assert _device(ctx(), cfg) == torch.device("cpu")
    assert _device(ctx(device="auto"), cfg) == torch.device("cpu")
    with pytest.raises(DeviceError, match="device = 'cuda' but"):
        _device(ctx(device="cuda"), cfg)
    with pytest.raises(ValueError, match="node config device = 'gpu'"):
        _device(ctx(device="gpu"), cfg)
    with pytest.raises(DeviceError, match="fp16"):
        _device(ctx(), _cfg(device="cpu", train={**TINY["train"], "precision": "fp16"}))


def test_resume_may_continue_on_another_device_and_nothing_else_may_change(no_cuda, tmp_path,
                                                                           capsys):
    cfg = _cfg()
    with pytest.raises(Stop):
        run_simulation(cfg, tmp_path / "cut", on_round=stop_after(2))
    assert main(["run", "--resume", str(tmp_path / "cut"), "--set", "seed=3",
                 "--no-progress"]) == 2
    assert "only --set device=... may be given" in capsys.readouterr().err
    # "auto" is the CPU here: a real change of name, the same arithmetic
    assert main(["run", "--resume", str(tmp_path / "cut"), "--set", "device=auto",
                 "--no-progress"]) == 0
    ref = run_simulation(cfg, tmp_path / "full")
    got = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(got[k], v) for k, v in ref.model.state_dict().items())
    saved = (tmp_path / "cut" / "config.json").read_text()
    assert '"device": "cpu"' in saved  # the run's record keeps how it started
