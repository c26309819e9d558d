"""fedprune as a Flower App (flwr 1.41 message API): ``server_app`` and ``client_app``.

The app is declared in ``flower/pyproject.toml``::

    [tool.flwr.app.components]
    serverapp = "fedprune.federated.flower_app:server_app"
    clientapp = "fedprune.federated.flower_app:client_app"

**ServerApp** -- resolves the run config into an :class:`~fedprune.config.ExperimentConfig`
(:mod:`.flower_config`), creates the seeded initial model like the in-process loop, waits for
``min-nodes`` SuperNodes (asking each for its partition as it connects: one whose
``num-partitions`` is not ``data.num-clients`` -- in simulation, ``num-supernodes`` -- stops
the run at once), and runs :class:`~fedprune.federated.strategy.PruningFedAvg` for
``fed.rounds`` rounds.  With ``out-dir`` set it writes the loop's files there:
``config.json``, ``rounds.jsonl`` (one line per round), ``summary.json``, ``checkpoint.pt``
and, unless ``plots = false``, the plots of ``fedprune run``.  A run in which no round
aggregated a valid reply raises after writing them (``status: failed``), so Flower reports
it as failed.

**ClientApp** -- knows only its partition id, from the SuperNode's node config
(``partition-id``, set by the simulation engine or by ``flower-supernode --node-config``).
Each train message carries the weights (``ArrayRecord``) and, as JSON, the architecture
(:class:`~fedprune.models.ModelSpec`) and the experiment config; the ClientApp rebuilds the
model with :func:`fedprune.models.build`, loads the weights with ``strict=True``, trains with
:func:`fedprune.federated.train_local` on its partition of
:func:`fedprune.data.load_federated`, and replies with the weights, ``num-examples`` and the
``arch-version`` it trained.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..config import ConfigError, ExperimentConfig, from_dict
from ..data import FederatedData, load_federated
from ..metrics import Recorder, RoundRecord, plot_run
from ..models import ModelSpec, build, new_model
from .client import evaluate, train_local
from .flower_config import FlowerSettings, parse_run_config
from .loop import client_generator
from .strategy import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    QUERY_KIND,
    VALIDATE_KIND,
    PruningFedAvg,
)

logger = logging.getLogger("flwr.fedprune")

__all__ = ["client_app", "is_simulation", "run_server", "server_app", "wait_for_nodes"]

server_app = ServerApp()
client_app = ClientApp()


# ---------------------------------------------------------------------------- server


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    run_server(grid, dict(context.run_config))


def run_server(
    grid: Grid,
    run_config: dict[str, Any],
    on_round: Callable[[RoundRecord], None] | None = None,
    simulation: bool | None = None,
) -> dict[str, Any]:
    """Run one experiment on ``grid``; return the summary (also written to ``out-dir``).

    ``simulation`` words the errors for the simulation engine (``None``: from the grid).

    Raises :class:`~fedprune.config.ConfigError` on a bad run config or when a SuperNode's
    ``num-partitions`` differs from ``data.num-clients``, and ``RuntimeError`` when no
    SuperNode can serve the experiment or no round aggregated a valid reply (the records,
    with ``status: failed`` in ``summary.json``, are written first).
    """
    cfg, settings = parse_run_config(run_config)
    if cfg.data.num_clients == 0:
        raise ConfigError("data.num-clients = 0 (automatic: every natural client) needs the "
                          "data to count the partitions, and in Flower one SuperNode serves "
                          "each: set data.num-clients to the number of SuperNodes "
                          "(num-supernodes in simulation)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = _out_dir(settings)
    data = load_federated(cfg.data, cfg.seed)
    c, h, _ = data.input_shape
    model, spec = new_model(cfg.model.name, num_classes=data.num_classes, in_channels=c,
                            image_size=h, widths=cfg.model.widths, seed=cfg.seed)
    recorder = Recorder(out) if out is not None else None
    if recorder is not None:
        recorder.write_config(cfg.to_dict())
    else:
        logger.warning("out-dir is not set: no rounds.jsonl / summary.json are written")
    strategy = PruningFedAvg(cfg, model, spec, test_x=data.test_x, test_y=data.test_y,
                             recorder=recorder, query_timeout=settings.round_timeout,
                             max_client_size=max(len(cl) for cl in data.clients),
                             on_round=on_round)
    strategy.simulation = is_simulation(grid) if simulation is None else simulation
    # ask every SuperNode for its partition while waiting: a node whose num-partitions is not
    # data.num-clients (in simulation: num-supernodes) stops the run here, not 300 s later
    wait_for_nodes(grid, settings.min_nodes or cfg.data.num_clients, settings.node_wait_timeout,
                   probe=lambda: strategy.probe_nodes(grid), problems=strategy.node_problems)
    strategy.start(grid, ArrayRecord.from_torch_state_dict(model.state_dict()),
                   num_rounds=cfg.fed.rounds, timeout=settings.round_timeout,
                   evaluate_fn=strategy.evaluate_round)
    summary = strategy.run_summary()
    summary["flower"] = settings.to_run_config()
    if recorder is not None and out is not None:
        strategy.save(out)
        recorder.write_summary(summary)
        if settings.plots:
            logger.info("plots: %s", ", ".join(p.name for p in plot_run(out)))
    if summary["status"] != "completed":
        logger.error("fedprune: run failed: %s", summary["error"])
        raise RuntimeError(f"fedprune run failed: {summary['error']}")
    logger.info("fedprune: accuracy %.4f, params %d -> %d, widths %s", summary["accuracy"],
                summary["params_initial"], summary["params_final"], summary["widths_final"])
    return summary


def is_simulation(grid: Grid) -> bool:
    """Whether ``grid`` is the simulation engine's (virtual SuperNodes, fixed in number)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


def _out_dir(settings: FlowerSettings) -> Path | None:
    if not settings.out_dir:
        return None
    out = Path(settings.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out-dir {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out-dir {out} exists and is not empty: choose a new directory "
                          "(results are never overwritten)")
    return out


def wait_for_nodes(grid: Grid, n: int, timeout: float, poll: float = 0.5,
                   probe: Callable[[], int] | None = None,
                   problems: dict[int, str] | None = None) -> int:
    """Wait until ``n`` SuperNodes are there, at most ``timeout`` seconds.

    Without ``probe`` a node counts once connected; with it, ``probe()`` (called every
    ``poll`` seconds) returns how many nodes can serve the experiment.  Returns that count.
    Past the timeout the run goes on with the nodes there are (partitions without a node are
    skipped each round); with none it raises ``RuntimeError`` (listing ``problems``: node id
    -> why it cannot serve).
    """
    deadline = time.monotonic() + timeout
    while True:
        connected = len(list(grid.get_node_ids()))
        have = probe() if probe is not None else connected
        if have >= n:
            return have
        if time.monotonic() >= deadline:
            if have == 0:
                if connected == 0:
                    raise RuntimeError(f"no SuperNode connected within {timeout:.0f} s "
                                       "(node-wait-timeout)")
                why = "; ".join(f"node {k}: {v}" for k, v in sorted((problems or {}).items()))
                raise RuntimeError(f"{connected} SuperNode(s) connected within {timeout:.0f} s "
                                   "but none can serve this experiment"
                                   + (f": {why}" if why else ""))
            logger.warning("only %d of %d SuperNodes serve a partition after %.0f s "
                           "(node-wait-timeout); going on", have, n, timeout)
            return have
        time.sleep(poll)


# ---------------------------------------------------------------------------- client

_DATA_CACHE: dict[str, FederatedData] = {}


#: Node-config keys a SuperNode may set to say where *its* copy of the data lives.
NODE_DATA_KEYS = ("data.path", "data.image-dir", "data.cache-dir", "data.cache")


def _experiment(msg: Message, context: Context) -> ExperimentConfig:
    """The server's experiment config, with this node's data paths from its node config."""
    text = msg.content.config_records[CONFIG_KEY]["experiment"]
    if not isinstance(text, str):
        raise TypeError("the message carries no experiment config")
    values = json.loads(text)
    for key in NODE_DATA_KEYS:
        if key in context.node_config:
            values["data"][key.split(".", 1)[1].replace("-", "_")] = context.node_config[key]
    return from_dict(values)


def _federated_data(cfg: ExperimentConfig) -> FederatedData:
    key = json.dumps([cfg.seed, cfg.to_dict()["data"]], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one experiment at a time per process
        _DATA_CACHE[key] = load_federated(cfg.data, cfg.seed)
    return _DATA_CACHE[key]


def _partition_id(context: Context, cfg: ExperimentConfig) -> int:
    pid = context.node_config.get("partition-id")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError("this SuperNode has no integer partition-id in its node config; start "
                         "it with --node-config 'partition-id=N num-partitions=M'")
    if not 0 <= pid < cfg.data.num_clients:
        raise ValueError(f"partition-id {pid} is out of range for data.num-clients = "
                         f"{cfg.data.num_clients}")
    parts = context.node_config.get("num-partitions")
    if parts is not None and parts != cfg.data.num_clients:
        raise ValueError(f"node config num-partitions = {parts} but the experiment splits the "
                         f"data over data.num-clients = {cfg.data.num_clients}")
    return pid


@client_app.query()
def _client_query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves (checked against the experiment)."""
    cfg_rec = msg.content.config_records[CONFIG_KEY]
    kind = cfg_rec.get("fedprune")
    if kind == VALIDATE_KIND:
        return _client_validate(msg, context)
    if kind != QUERY_KIND:
        raise ValueError(f"unknown query {kind!r}")
    # the server checks the partition against the experiment (and can then name the settings:
    # data.num-clients, num-supernodes in simulation); the node only says what it serves
    pid = context.node_config.get("partition-id")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError("this SuperNode has no integer partition-id in its node config; start "
                        "it with --node-config 'partition-id=N num-partitions=M'")
    metrics: dict[str, int | float] = {"partition-id": pid}
    parts = context.node_config.get("num-partitions")
    if isinstance(parts, int) and not isinstance(parts, bool):
        metrics["num-partitions"] = parts
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


def _client_validate(msg: Message, context: Context) -> Message:
    """Budget guard: accuracy of the sent model on this partition's validation split."""
    cfg = _experiment(msg, context)
    pid = _partition_id(context, cfg)
    spec_json = msg.content.config_records[CONFIG_KEY]["model-spec"]
    if not isinstance(spec_json, str):
        raise TypeError("the validation query carries no model spec")
    model = build(ModelSpec.from_json(spec_json))
    model.load_state_dict(msg.content.array_records[ARRAYS_KEY].to_torch_state_dict(),
                          strict=True)
    client = _federated_data(cfg).clients[pid]
    metrics: dict[str, int | float] = {"partition-id": pid, "val-examples": 0}
    if client.val_y is not None and len(client.val_y) > 0:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        acc, loss = evaluate(model, client.val_x, client.val_y)
        metrics.update({"val-accuracy": float(acc), "val-loss": float(loss),
                        "val-examples": len(client.val_y)})
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


@client_app.train()
def _client_train(msg: Message, context: Context) -> Message:
    """Rebuild the model from the spec JSON, load the weights strictly, train, reply."""
    cfg_rec = msg.content.config_records[CONFIG_KEY]
    cfg = _experiment(msg, context)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pid = _partition_id(context, cfg)
    if cfg_rec.get("partition-id") != pid:
        raise ValueError(f"asked to train partition {cfg_rec.get('partition-id')!r}, this node "
                         f"serves partition {pid}")
    rnd = cfg_rec["server-round"]
    version = cfg_rec["arch-version"]
    spec_json = cfg_rec["model-spec"]
    if not isinstance(rnd, int) or not isinstance(version, int) or not isinstance(spec_json, str):
        raise TypeError("train config needs integer server-round, arch-version and a "
                         "model-spec string")
    model = build(ModelSpec.from_json(spec_json))
    model.load_state_dict(msg.content.array_records[ARRAYS_KEY].to_torch_state_dict(),
                          strict=True)
    cd = _federated_data(cfg).clients[pid]
    state, n, metrics = train_local(model, cd.x, cd.y, cfg.train,
                                    client_generator(cfg.seed, rnd, pid))
    reply = RecordDict({
        ARRAYS_KEY: ArrayRecord.from_torch_state_dict(state),
        METRICS_KEY: MetricRecord({"num-examples": n, "train-loss": metrics["train_loss"],
                                   "arch-version": version, "partition-id": pid}),
    })
    return Message(reply, reply_to=msg)
