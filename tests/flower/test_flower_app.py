"""The Flower App without Flower processes: run config, transport, ClientApp, what travels.

The Flower transport runs on :class:`LocalGrid` (nodes = the ClientApp called in process), so these
tests take seconds; ``test_flower_deployment.py`` and ``test_flower_simulation.py`` run the
real SuperLink/SuperNode and simulation engines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
import tomllib

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")

from flower_harness import FLOWER_APP_DIR
from flwr.app import (
    ArrayRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.config import flatten_dict

from fedprune.config import ConfigError, from_dict
from fedprune.federated import run_simulation
from fedprune.federated.meter import NUMBER_BYTES
from fedprune.flower.client_app import client_app
from fedprune.flower.grid import LocalGrid
from fedprune.flower.run_config import (
    SNAKE_ALIASES,
    declared_run_config,
    default_run_config,
    experiment_to_run_config,
    format_run_config,
    parse_run_config,
)
from fedprune.flower.server_app import run_server
from fedprune.metrics import read_rounds
from fedprune.models import ModelSpec, build

TINY = {
    "threads": 1,
    "data": {"num_clients": 4},
    "model": {"widths": [4, 8]},
    "train": {"local_epochs": 1},
    "fed": {"rounds": 3, "clients_per_round": 3, "eval_every": 1},
    "prune": {"method": "boundary", "start_round": 1, "max_prune_round": 3, "interval": 1,
              "k": 0.5, "max_fraction": 0.5},
}


def _tiny(**flower):
    cfg = from_dict(TINY)
    return cfg, {**experiment_to_run_config(cfg), **flower}


@contextlib.contextmanager
def _captured_log():
    """Messages of fedprune's Flower transport logger (a child of Flower's, which does not
    propagate) and of the engine-neutral server's (shown through Flower's handler in the
    ServerApp)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logs = [logging.getLogger("flwr.fedprune"), logging.getLogger("fedprune")]
    for log in logs:
        log.addHandler(handler)
    try:
        yield lines
    finally:
        for log in logs:
            log.removeHandler(handler)


def _grid(n=4, **kw):
    return LocalGrid(client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)],
                     **kw)


# ----------------------------------------------------------------------------- run config


def test_app_pyproject_declares_every_setting_with_fedprunes_defaults():
    doc = tomllib.loads((FLOWER_APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedprune.flower.server_app:server_app",
                                 "clientapp": "fedprune.flower.client_app:client_app"}
    declared = flatten_dict(app["config"])
    expected = declared_run_config()
    missing, extra = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
    assert not missing and not extra, (
        f"flower/pyproject.toml [tool.flwr.app.config] is out of date: add {missing}, "
        f"remove {extra} (fedprune.flower.run_config.declared_run_config() lists them)")
    assert declared == expected
    kebab_keys = set(default_run_config())
    assert all("_" not in part for key in kebab_keys for part in key.split("."))  # kebab-case
    # every multi-word key also in snake_case, with the same default
    assert {k for k in declared if k not in kebab_keys} == set(SNAKE_ALIASES)
    assert all(declared[a] == declared[k] for a, k in SNAKE_ALIASES.items())
    assert SNAKE_ALIASES["fed.clients_per_round"] == "fed.clients-per-round"


def test_app_pyproject_is_a_valid_flower_app():
    from flwr.cli.config_utils import load_and_validate

    _, warnings = load_and_validate(FLOWER_APP_DIR / "pyproject.toml")
    assert warnings == []


def test_run_config_round_trips_every_setting():
    cfg = from_dict({**TINY, "seed": 7, "prune": {**TINY["prune"], "mode": "both"}})
    rc = experiment_to_run_config(cfg)
    assert rc["model.widths"] == "4,8" and rc["prune.max-fraction"] == 0.5
    back, settings = parse_run_config({**rc, "out-dir": "/x", "round-timeout": 5})
    assert back == cfg
    assert settings.out_dir == "/x" and settings.round_timeout == 5.0
    assert parse_run_config(default_run_config())[0] == from_dict({})  # "" widths = None


@pytest.mark.parametrize("over, message", [
    ({"prune.max-fraction": 2.0}, "prune.max-fraction"),
    ({"fed.clients-per-round": 50}, "fed.clients-per-round"),
    ({"prune.bogus": 1}, "unknown run-config key 'prune.bogus'"),
    ({"prune.max_fraction": 2.0}, "prune.max-fraction"),  # an alias: the error names the key
    ({"fed.clients-per-round": 3, "fed.clients_per_round": 4},
     "'fed.clients-per-round' = 3 and 'fed.clients_per_round' = 4 disagree"),
    ({"round-timeout": 0.0}, "round-timeout"),
    ({"min-nodes": "3"}, "min-nodes must be an integer"),
    ({"plots": 1}, "plots must be true or false"),
])
def test_bad_run_config_names_the_run_config_key(over, message):
    with pytest.raises(ConfigError, match=message):
        parse_run_config({**declared_run_config(), **over})


def test_snake_case_aliases_count_when_they_differ_from_the_default():
    # what Flower passes when the user writes --run-config "fed.clients_per_round=3 ..."
    rc = {**declared_run_config(), "fed.clients_per_round": 3, "prune.start_round": 2,
          "out_dir": "/x", "plots": False}
    cfg, settings = parse_run_config(rc)
    assert (cfg.fed.clients_per_round, cfg.prune.start_round) == (3, 2)
    assert settings.out_dir == "/x" and settings.plots is False
    # both spellings, same value: fine; kebab-case set, alias at its default: kebab wins
    cfg, _ = parse_run_config({**rc, "fed.clients-per-round": 3})
    assert cfg.fed.clients_per_round == 3
    cfg, _ = parse_run_config({**declared_run_config(), "fed.clients-per-round": 4})
    assert cfg.fed.clients_per_round == 4
    assert parse_run_config(declared_run_config()) == parse_run_config(default_run_config())


def test_config_file_then_run_config_keys_that_differ_from_the_defaults(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text("[prune]\nk = 2.0\nmode = 'both'\n[fed]\nrounds = 7\n", encoding="utf-8")
    rc = {**default_run_config(), "config-file": str(f), "fed.rounds": 9}
    cfg, _ = parse_run_config(rc)
    assert (cfg.prune.k, cfg.prune.mode, cfg.fed.rounds) == (2.0, "both", 9)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_run_config({**rc, "config-file": str(tmp_path / "nope.toml")})


def test_format_run_config_is_what_flwr_parses():
    from flwr.common.config import parse_config_args

    values = {"fed.rounds": 3, "prune.k": 0.5, "prune.enabled": False, "out-dir": "/a b/c",
              "model.widths": "4,8"}
    assert parse_config_args([format_run_config(values)]) == values


# ----------------------------------------------------------------------------- transport


@pytest.mark.parametrize("prune, model", [
    ({}, {}), ({"method": "ratio", "ratio": 0.3, "round_to": 1}, {}),
    ({"method": "auto-paired", "max_accuracy_drop": 1.0}, {}),
    # BatchNorm: running statistics and the 0-dim num_batches_tracked travel and checkpoint
    ({"method": "auto-paired", "max_accuracy_drop": 1.0},
     {"name": "tiny_resnet", "widths": [4, 8, 8]}),
    # nested widths, the default: each client trains its own width, with ordered dropout per
    # batch (the narrower widths travel as channels, each ClientApp derives its masks and
    # batch widths as the loop does); the widths validated in one query
    ({"method": "auto", "max_accuracy_drop": 1.0, "round_to": 2, "start_round": 2,
      "max_prune_round": 3}, {}),
    ({"method": "auto", "max_accuracy_drop": 1.0, "round_to": 2, "start_round": 2,
      "max_prune_round": 3}, {"name": "tiny_resnet", "widths": [4, 8, 8]}),
    # one width per client, every batch at it, and the agreeing decision
    ({"method": "auto", "max_accuracy_drop": 1.0, "round_to": 2, "start_round": 2,
      "max_prune_round": 3, "ordered_dropout": "client", "decide": "agree"}, {}),
    ({"method": "auto", "max_accuracy_drop": 1.0, "round_to": 2, "start_round": 2,
      "max_prune_round": 3, "ordered_dropout": "client", "decide": "agree"},
     {"name": "tiny_resnet", "widths": [4, 8, 8]}),
], ids=["boundary-rule", "ratio", "auto-paired", "auto-paired-batchnorm", "auto",
        "auto-batchnorm", "auto-client-agree", "auto-client-agree-batchnorm"])
def test_local_grid_run_matches_the_in_process_loop_exactly(tmp_path, prune, model):
    # ClientApps train one client each: compare with the loop's one-by-one engine, bit for bit
    # (the batched engine agrees to float rounding: tests/federated/test_batched.py).
    cfg = from_dict({**TINY, "prune": {**TINY["prune"], **prune},
                     "model": {**TINY["model"], **model},
                     "train": {**TINY.get("train", {}), "engine": "per_client"}})
    rc = {**experiment_to_run_config(cfg), "out-dir": str(tmp_path / "flower")}
    loop = run_simulation(cfg, tmp_path / "loop")
    summary = run_server(_grid(), rc)
    for key, value in loop.summary.items():
        if key != "seconds":
            assert summary[key] == value, key
    assert summary["replies_per_round"] == [3, 3, 3]
    # auto: candidates cut after rounds 1 and 2, each trained one round beside the model and
    # kept (any cost is within a drop of 1.0); the ClientApps trained both
    # auto: judged after rounds 2 and 3 (any cost is within a drop of 1.0), cut once
    assert summary["arch_version"] == summary["prune_steps"] == {
        "auto-paired": 2, "auto": 1}.get(prune.get("method"), 3)
    if prune.get("method") == "auto":
        assert summary["nested"]["cut_round"] in (2, 3)
        widths = summary["nested"]["ladder"]
        assert len(widths) >= 2 and list(summary["widths_final"].values()) != widths[-1]
    rows_loop, rows_fl = read_rounds(tmp_path / "loop"), read_rounds(tmp_path / "flower")
    for a, b in zip(rows_loop, rows_fl, strict=True):
        for key in a:
            if key != "seconds":
                assert b[key] == a[key], key
    on_disk = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert set(loop.summary) <= set(on_disk)
    assert on_disk["status"] == "completed" and "error" not in on_disk
    assert {p.name for p in (tmp_path / "flower").iterdir()} >= {
        "rounds.jsonl", "summary.json", "config.json", "checkpoint.pt",
        "accuracy.png", "params.png", "bytes.png"}  # the plots of `fedprune run`
    for png in ("accuracy.png", "params.png", "bytes.png"):
        assert (tmp_path / "flower" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_payloads_and_bf16_training_match_the_loop_and_halve_the_weights_bytes(tmp_path):
    # the weights travel as int16 bit patterns of bfloat16 (numpy has no bfloat16); the
    # ClientApp trains in bf16 autocast; the automatic method's trial models travel so too
    over = {"prune": {**TINY["prune"], "method": "auto", "max_accuracy_drop": 1.0},
            "train": {**TINY["train"], "engine": "per_client", "precision": "bf16"},
            "fed": {**TINY["fed"], "payload_dtype": "bfloat16"}}
    cfg = from_dict({**TINY, **over})
    loop = run_simulation(cfg, tmp_path / "loop")
    summary = run_server(_grid(), {**experiment_to_run_config(cfg),
                                   "out-dir": str(tmp_path / "flower")})
    for key, value in loop.summary.items():
        if key != "seconds":
            assert summary[key] == value, key
    rows_loop, rows_fl = read_rounds(tmp_path / "loop"), read_rounds(tmp_path / "flower")
    for a, b in zip(rows_loop, rows_fl, strict=True):
        for key in a:
            if key != "seconds":
                assert b[key] == a[key], key
    run_simulation(from_dict({**TINY, **over, "fed": TINY["fed"]}), tmp_path / "f32")
    rows32 = read_rounds(tmp_path / "f32")
    # the replies' weights halve; their four metrics (8 bytes each) stay
    metrics = rows_fl[0]["messages"]["train"] * 4 * NUMBER_BYTES
    assert (rows_fl[0]["bytes_up"] - metrics) * 2 == rows32[0]["bytes_up"] - metrics


def test_plots_false_writes_no_pngs(tmp_path):
    _, rc = _tiny(**{"out-dir": str(tmp_path), "plots": False, "fed.rounds": 1,
                     "prune.enabled": False})
    run_server(_grid(), rc)
    assert (tmp_path / "summary.json").is_file() and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("simulation, names", [
    (True, ["num-supernodes = 3", "data.num-clients = 4", "num-supernodes=4"]),
    (False, ["num-partitions = 3", "data.num-clients = 4", "num-partitions=4"]),
])
def test_nodes_with_another_partition_count_stop_the_run_before_round_1(simulation, names):
    # 3 nodes that split the data in 3, an experiment that splits it in 4 (the simulation
    # engine's num-supernodes vs data.num-clients): an error at once, not a 300 s wait
    _, rc = _tiny(**{"node-wait-timeout": 300.0})
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        run_server(grid, rc, simulation=simulation)
    assert time.monotonic() - t0 < 30
    for name in names:
        assert name in str(err.value)
    assert not any(m.metadata.message_type == MessageType.TRAIN for m in grid.sent)


def test_a_node_without_its_device_says_why_before_round_1_and_gets_no_work(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # min-nodes 3: the run goes on with the three nodes that can serve (no waiting for a fourth)
    _, rc = _tiny(**{"out-dir": str(tmp_path), "fed.rounds": 1, "min-nodes": 3})
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    nodes[3]["device"] = "cuda"  # this node's machine has no GPU
    grid = LocalGrid(client_app, nodes)
    with _captured_log() as lines:
        run_server(grid, rc)
    assert any("cannot serve this experiment" in line and "device = 'cuda' but" in line
               for line in lines)
    trained = {m.metadata.dst_node_id for m in grid.sent
               if m.metadata.message_type == MessageType.TRAIN}
    assert trained and 1003 not in trained  # node 3 (id 1003) got no work


def test_a_run_in_which_no_round_got_a_valid_reply_fails(tmp_path):
    _, rc = _tiny(**{"out-dir": str(tmp_path), "fed.rounds": 2})

    def fail_training(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return reply
        return Message(Error(code=0, reason="RuntimeError: out of memory"), reply_to=msg)

    with _captured_log() as lines, pytest.raises(RuntimeError, match="no round aggregated"):
        run_server(_grid(tamper=fail_training), rc)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "no round aggregated a valid reply (2 rounds, 6 failed" in summary["error"]
    assert summary["replies_per_round"] == [0, 0] and summary["failures_total"] == 6
    assert any("run failed" in line for line in lines)
    assert (tmp_path / "accuracy.png").is_file()  # the records and plots are still written


def test_no_node_that_can_serve_the_experiment_is_an_error():
    _, rc = _tiny(**{"node-wait-timeout": 0.5})
    grid = LocalGrid(client_app, [{"num-partitions": 4}])  # no partition-id
    with pytest.raises(RuntimeError, match="1 SuperNode.*none can serve.*partition-id"):
        run_server(grid, rc)


def test_out_dir_is_never_overwritten(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x").write_text("keep")
    _, rc = _tiny(**{"out-dir": str(tmp_path / "old")})
    with pytest.raises(ConfigError, match="not empty"):
        run_server(_grid(), rc)


def test_a_reply_without_its_arch_version_is_dropped(tmp_path):
    _, rc = _tiny(**{"fed.rounds": 1})

    def tamper(msg: Message, reply: Message) -> Message:
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        metrics = dict(reply.content.metric_records["metrics"])
        if msg.metadata.dst_node_id == 1000:
            del metrics["arch-version"]
        out = RecordDict({"arrays": reply.content.array_records["arrays"],
                          "metrics": MetricRecord(metrics)})
        return Message(out, reply_to=msg)

    run_server(_grid(tamper=tamper), {**rc, "out-dir": str(tmp_path)})
    (row,) = read_rounds(tmp_path)
    assert [(r["node"], r["reason"]) for r in row["rejected"]] == [
        (1000, "architecture version None, expected 0")]


def test_replies_with_a_stale_arch_version_or_wrong_shapes_are_dropped_and_counted(tmp_path):
    _, rc = _tiny()

    def tamper(msg: Message, reply: Message) -> Message:
        node = msg.metadata.dst_node_id
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        content = reply.content
        metrics = dict(content.metric_records["metrics"])
        arrays = content.array_records["arrays"]
        if node == 1000 and metrics["arch-version"] >= 1:  # claims the previous architecture
            metrics["arch-version"] -= 1
        elif node == 1001 and metrics["arch-version"] >= 1:  # unpruned shapes
            state = arrays.to_torch_state_dict()
            key = next(iter(state))
            state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
            arrays = ArrayRecord.from_torch_state_dict(state)
        out = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(out, reply_to=msg)

    with _captured_log() as lines:
        summary = run_server(_grid(tamper=tamper), {**rc, "out-dir": str(tmp_path)})
    rows = read_rounds(tmp_path)
    rejected = [r for row in rows for r in row["rejected"]]
    assert {r["partition"] for r in rejected} == {0, 1}
    assert all("version" in r["reason"] for r in rejected if r["partition"] == 0)
    assert all("shape" in r["reason"] for r in rejected if r["partition"] == 1)
    assert any("dropped the reply of node 1000" in line for line in lines)  # logged
    assert summary["rounds"] == 3
    # round 1: arch-version 0 everywhere; afterwards partitions 0 and 1 are dropped whenever
    # they are sampled, the others aggregated
    per_round = summary["replies_per_round"]
    assert per_round[0] == 3 and summary["dropped_total"] == len(rejected) >= 2
    assert sum(per_round) + summary["dropped_total"] == 9
    assert [r["clients"] + len(r["rejected"]) for r in rows] == [3, 3, 3]
    assert summary["prune_steps"] >= 1  # pruning went on with the accepted replies


def test_too_few_valid_replies_skip_the_round_like_the_loop(tmp_path):
    _, rc = _tiny(**{"round-timeout": 0.2, "fed.min-replies": 3, "out-dir": str(tmp_path)})
    grid = _grid()
    grid.dead.add(1001)  # partition 1 answers nothing: the rounds that sample it are skipped
    summary = run_server(grid, {**rc, "min-nodes": 1, "node-wait-timeout": 1.0})
    rows = read_rounds(tmp_path)
    assert summary["rounds"] == 3 and len(rows) == 3
    skipped = [r for r in rows if r["skipped"]]
    assert skipped and all(r["clients"] == 0 and not r["pruned"] for r in skipped)
    assert all(r["clients"] == 3 for r in rows if not r["skipped"])
    assert rows[0]["skipped"]  # round 1 samples partition 1 (seed 0)
    assert rows[0]["params"] == summary["params_initial"]  # no average, no cut
    assert summary["replies_per_round"] == [r["clients"] for r in rows]


def test_dead_and_misconfigured_nodes_are_skipped_and_the_run_goes_on():
    _, rc = _tiny(**{"round-timeout": 0.2, "min-nodes": 1, "node-wait-timeout": 1.0})
    configs = [{"partition-id": 0, "num-partitions": 4}, {"num-partitions": 4},  # no partition
               {"partition-id": 2, "num-partitions": 4}, {"partition-id": 3, "num-partitions": 4}]
    grid = LocalGrid(client_app, configs)
    grid.dead.add(1003)  # partition 3 never answers
    summary = run_server(grid, rc)
    assert summary["rounds"] == 3
    # partitions 1 (no node) and 3 (dead: excluded after the query) never train
    assert all(n <= 2 for n in summary["replies_per_round"])
    assert summary["failures_total"] >= 1 and summary["params_final"] < summary["params_initial"]


# ----------------------------------------------------------------------------- client / wire


def _train_message(cfg, spec, state, pid=0, version=0, rnd=1):
    from flwr.app import ConfigRecord

    content = RecordDict({
        "arrays": ArrayRecord.from_torch_state_dict(state),
        "config": ConfigRecord({"server-round": rnd, "arch-version": version,
                                "model-spec": spec.to_json(), "experiment": cfg.to_json(),
                                "partition-id": pid}),
    })
    return Message(content, dst_node_id=1000, message_type=MessageType.TRAIN)


def _ctx(pid=0, n=4):
    return Context(run_id=1, node_id=1000, node_config={"partition-id": pid, "num-partitions": n},
                   state=RecordDict(), run_config={})


def test_what_travels_is_numpy_arrays_and_json_never_a_pickle():
    from fedprune.models import new_model

    _grid()  # sets Flower's task identity for messages built outside a run
    cfg, _ = _tiny()
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    msg = _train_message(cfg, spec, model.state_dict())
    for rec in msg.content.array_records.values():
        for arr in rec.values():
            assert arr.stype == "numpy.ndarray" and arr.data.startswith(b"\x93NUMPY")
            np.load(io.BytesIO(arr.data), allow_pickle=False)
    for rec in msg.content.config_records.values():
        assert all(isinstance(v, (int, str)) for v in rec.values())
    spec_back = ModelSpec.from_json(msg.content.config_records["config"]["model-spec"])
    assert spec_back == spec
    reply = client_app(msg, _ctx())
    metrics = reply.content.metric_records["metrics"]
    assert (metrics["arch-version"], metrics["partition-id"]) == (0, 0)
    assert metrics["num-examples"] > 0
    got = reply.content.array_records["arrays"].to_torch_state_dict()
    build(spec).load_state_dict(got, strict=True)


def test_client_refuses_another_partition_and_mismatched_weights():
    from fedprune.models import new_model
    from fedprune.pruning import BoundaryRule, prune_model

    _grid()
    cfg, _ = _tiny()
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    with pytest.raises(ValueError, match="serves partition 1"):
        client_app(_train_message(cfg, spec, model.state_dict(), pid=0), _ctx(pid=1))
    with pytest.raises(ValueError, match="num-partitions"):
        client_app(_train_message(cfg, spec, model.state_dict()), _ctx(n=3))
    pruned = prune_model(model, spec.example_input(),
                         BoundaryRule(k=0.5, mode="low", max_fraction=0.5), record=spec.record)
    with pytest.raises(RuntimeError, match="size mismatch"):  # new weights, old architecture
        client_app(_train_message(cfg, spec, pruned.model.state_dict()), _ctx())


def test_a_clientapp_owns_its_data_and_two_experiments_never_share_it():
    from fedprune.flower.client_app import ClientRuntime, FedpruneClientApp
    from fedprune.models import new_model

    cfg_a, _ = _tiny()
    cfg_b = from_dict({**cfg_a.to_dict(), "seed": cfg_a.seed + 1})
    cfg_a_longer = from_dict({**cfg_a.to_dict(), "fed": {**cfg_a.to_dict()["fed"], "rounds": 9}})
    cpu = torch.device("cpu")
    runtime = ClientRuntime()
    a = runtime.data(cfg_a)
    assert runtime.data(cfg_a) is a and runtime.data(cfg_a_longer) is a  # same seed and data
    on_a = runtime.on_device(cfg_a, cpu)
    assert on_a.data is a and runtime.on_device(cfg_a, cpu) is on_a and runtime.devices() == [on_a]
    b = runtime.data(cfg_b)  # another experiment: its own partitions, a's tensors let go
    assert b is not a and runtime.devices() == []
    assert any(not torch.equal(x.y, z.y) for x, z in zip(a.clients, b.clients, strict=True))
    assert runtime.on_device(cfg_b, cpu).data is b
    assert runtime.data(cfg_a) is not a  # one experiment at a time: a's data loaded anew

    # each app trains from the data its own runtime holds; another app's is untouched
    _grid()  # sets Flower's task identity for messages built outside a run
    mine, other = ClientRuntime(), ClientRuntime()
    app = FedpruneClientApp(mine)
    assert app.runtime is mine and FedpruneClientApp().runtime is not mine
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8], seed=0)
    app(_train_message(cfg_a, spec, model.state_dict()), _ctx())
    assert [d.device for d in mine.devices()] == [cpu] and other.devices() == []
    assert mine.devices()[0].data is mine.data(cfg_a)


def test_the_serverapp_shows_the_engine_neutral_servers_log_lines():
    from fedprune.flower.server_app import _show_fedprune_logs

    ours, flwr_log = logging.getLogger("fedprune"), logging.getLogger("flwr")
    saved = (list(ours.handlers), ours.level, ours.propagate)
    try:
        _show_fedprune_logs()
        _show_fedprune_logs()  # twice: each handler once
        assert flwr_log.handlers and all(ours.handlers.count(h) == 1 for h in flwr_log.handlers)
        assert logging.getLogger("fedprune.federated.server").getEffectiveLevel() <= logging.INFO
    finally:
        ours.handlers[:] = saved[0]
        ours.setLevel(saved[1])
        ours.propagate = saved[2]


def test_a_client_calibrates_batch_norm_when_asked_and_refuses_a_bad_request():
    from fedprune.federated.meter import CALIBRATE_KEY, query_content, wire_models
    from fedprune.flower.messages import to_message, validation_answer
    from fedprune.models import new_model

    _grid()
    cfg, _ = _tiny()
    model, spec = new_model("tiny_resnet", num_classes=10, in_channels=1, image_size=28,
                            widths=[4, 8, 8], seed=0)
    keep = {g["root"]: g["kept"][:2] for g in spec.record["groups"]}

    def ask(calibrate):
        content = query_content(*wire_models([(model, spec)], "float32"),
                                experiment=cfg.to_json(), variants=[keep])
        content.values[CALIBRATE_KEY] = calibrate
        msg = to_message(content, 1000, MessageType.QUERY)
        return validation_answer(client_app(msg, _ctx()), 1)

    (_, n0, loss0), subs0 = ask(0)
    (acc1, n1, loss1), subs1 = ask(64)
    assert n0 == n1 > 0
    # fresh statistics (0 and 1) against those of the partition's own samples
    assert (loss0, subs0) != (loss1, subs1)
    assert ask(64) == ((acc1, n1, loss1), subs1)  # the first 64 samples: deterministic
    for bad in (-1, "64", 1.5, True):
        with pytest.raises(TypeError, match=CALIBRATE_KEY):
            ask(bad)


def test_a_client_refuses_narrower_widths_it_cannot_train():
    from fedprune.federated.meter import NARROWER_KEY
    from fedprune.models import new_model
    from fedprune.pruning.widths import sub_model, sub_record

    _grid()
    cfg, _ = _tiny()
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=[8, 16], seed=0)
    held = sub_record(spec.record, {}, {"features.0": 4, "features.3": 16})
    sub = sub_model(model, held, spec.example_input())
    sub_spec = dataclasses.replace(spec, record=held)

    def train(narrower):
        msg = _train_message(cfg, sub_spec, sub.state_dict())
        msg.content.config_records["config"][NARROWER_KEY] = narrower
        return client_app(msg, _ctx())

    ok = train(json.dumps([{"features.0": [0, 1], "features.3": list(range(8))}]))
    assert ok.content.metric_records["metrics"]["num-examples"] > 0
    with pytest.raises(TypeError, match=NARROWER_KEY):
        train("[{")
    with pytest.raises(TypeError, match=NARROWER_KEY):
        train(json.dumps([{"features.0": [True, False]}]))
    with pytest.raises(ValueError, match="does not keep channels"):  # channel 6: not held
        train(json.dumps([{"features.0": [0, 6]}]))
    with pytest.raises(ValueError, match="does not keep every channel"):  # all of features.0
        train(json.dumps([{"features.3": [0, 1]}]))
