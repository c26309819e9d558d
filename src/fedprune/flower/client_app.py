"""fedprune's Flower ``ClientApp`` (flwr 1.41 message API).

Declared in ``flower/pyproject.toml`` (``clientapp = "fedprune.flower.client_app:client_app"``).
It knows only its partition id, from the SuperNode's node config (``partition-id``, set by
the simulation engine or by ``flower-supernode --node-config``).  Each train message carries
the weights (``ArrayRecord``) and, as JSON, the architecture
(:class:`~fedprune.models.ModelSpec`) and the experiment config; the ClientApp rebuilds the
model with :func:`fedprune.models.build`, loads the weights with ``strict=True``, trains with
:func:`fedprune.federated.train_local` on its partition of
:func:`fedprune.data.load_federated` with the batch order of
:func:`fedprune.seeds.batch_order`, and replies with the weights, ``num-examples`` and the
``arch-version`` it trained.  It also answers the server's queries: which partition it
serves, and a model's accuracy on its validation split (the automatic method, budget mode).
It trains and validates on the experiment's ``device`` (``train.precision``), or on the
``device`` of its SuperNode's node config (``--node-config 'partition-id=0 device="cuda:1"'``),
resolved on the node's own machine; its partition's tensors move there once.
What the app keeps between messages -- the experiment's data, loaded once per process, and
its tensors per device -- belongs to the app's :class:`ClientRuntime`.
During the automatic method's paired trials the message also carries its trial models
(``trial-arrays-I``, ``trial-spec-I``: the candidate, the reference); the ClientApp trains
each with the same batches and sends them back beside the weights.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from .. import seeds
from ..config import ExperimentConfig, from_dict
from ..data import FederatedData, load_federated
from ..device import DeviceData, check_precision, resolve_device, use_threads
from ..federated.client import Dropout, dropout_schedule, evaluate_widths, train_local
from ..federated.meter import (
    CALIBRATE_KEY,
    NARROWER_KEY,
    answer_content,
    reply_content,
    variant_key,
)
from ..federated.wire import encode
from ..models import ModelSpec, build
from ..pruning.widths import dropout_masks, variant_models
from .messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    QUERY_KIND,
    VALIDATE_KIND,
    to_reply,
    trial_key,
    unpack,
)

__all__ = ["NODE_DATA_KEYS", "ClientRuntime", "FedpruneClientApp", "client_app"]


class ClientRuntime:
    """What a ClientApp keeps in its process between messages: the federated data of the
    experiment it serves (:func:`fedprune.data.load_federated` of the config's ``seed`` and
    ``data`` settings), loaded on the first message, and that data's tensors on each device
    its nodes train on (:class:`~fedprune.device.DeviceData`), each moved there once.

    One experiment at a time: a message of another experiment (another seed or data setting)
    drops both and loads its own data.  It lives as long as the :class:`FedpruneClientApp`
    that owns it, which Flower builds once per process, at import.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._data: FederatedData | None = None
        self._on: dict[torch.device, DeviceData] = {}

    @staticmethod
    def experiment_key(cfg: ExperimentConfig) -> str:
        """What identifies the data of ``cfg``: its seed and its data settings."""
        return json.dumps([cfg.seed, cfg.to_dict()["data"]], sort_keys=True)

    def data(self, cfg: ExperimentConfig) -> FederatedData:
        """The federated data of ``cfg``, loaded once while its experiment is served."""
        key = self.experiment_key(cfg)
        if self._data is None or key != self._key:
            self._key, self._data = None, None  # the previous experiment's are let go first
            self._on.clear()
            self._data = load_federated(cfg.data, cfg.seed)
            self._key = key
        return self._data

    def on_device(self, cfg: ExperimentConfig, device: torch.device) -> DeviceData:
        """The tensors of :meth:`data` on ``device``, each moved there once."""
        data = self.data(cfg)
        if device not in self._on:
            self._on[device] = DeviceData(data, device)
        return self._on[device]

    def devices(self) -> list[DeviceData]:
        """The data on every device used for the experiment served now."""
        return list(self._on.values())


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


def _device(context: Context, cfg: ExperimentConfig) -> torch.device:
    """Where this node trains: its node config's ``device`` if set, else the experiment's
    ``device``, resolved on this machine (a clear error if it is not here)."""
    name = context.node_config.get("device", cfg.device)
    key = "node config device" if "device" in context.node_config else "device"
    device = resolve_device(name, key)  # type: ignore[arg-type]
    check_precision(device, cfg.train.precision)
    return device


def _received_model(spec_json: str, arrays: ArrayRecord, cfg: ExperimentConfig) -> nn.Module:
    """The model a message sends: built from its spec JSON, its weights (sent as
    ``fed.payload_dtype``) loaded strictly."""
    model = build(ModelSpec.from_json(spec_json))
    model.load_state_dict(unpack(arrays, cfg.fed.payload_dtype, model.state_dict()),
                          strict=True)
    return model


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


def _client_query(runtime: ClientRuntime, msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves (checked against the experiment)."""
    cfg_rec = msg.content.config_records[CONFIG_KEY]
    kind = cfg_rec.get("fedprune")
    if kind == VALIDATE_KIND:
        return _client_validate(runtime, msg, context)
    if kind != QUERY_KIND:
        raise ValueError(f"unknown query {kind!r}")
    # a node that cannot train where the experiment asks answers with why, before round 1
    _device(context, _experiment(msg, context))
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


def _client_validate(runtime: ClientRuntime, msg: Message, context: Context) -> Message:
    """Budget guard: accuracy of the sent model on this partition's validation split."""
    cfg = _experiment(msg, context)
    use_threads(cfg)
    pid = _partition_id(context, cfg)
    spec_json = msg.content.config_records[CONFIG_KEY]["model-spec"]
    if not isinstance(spec_json, str):
        raise TypeError("the validation query carries no model spec")
    model = _received_model(spec_json, msg.content.array_records[ARRAYS_KEY], cfg)
    cfg_rec = msg.content.config_records[CONFIG_KEY]
    keeps = []
    while isinstance(text := cfg_rec.get(variant_key(len(keeps))), str):
        keep = json.loads(text)
        if not isinstance(keep, dict):
            raise TypeError(f"{variant_key(len(keeps))} is not a mapping of kept channels")
        keeps.append(keep)
    calibrate = cfg_rec.get(CALIBRATE_KEY, 0)
    if not isinstance(calibrate, int) or isinstance(calibrate, bool) or calibrate < 0:
        raise TypeError(f"{CALIBRATE_KEY} is not a count of training samples: {calibrate!r:.40}")
    client = runtime.data(cfg).clients[pid]
    answer, subs = None, []
    if client.val_y is not None and len(client.val_y) > 0:
        nets = [model] + variant_models(model, ModelSpec.from_json(spec_json), keeps)
        on = runtime.on_device(cfg, _device(context, cfg))
        x, y = on.get(pid, "val_x"), on.get(pid, "val_y")
        figures = evaluate_widths(
            [n.to(on.device) for n in nets], x, y,
            train_x=on.get(pid, "x") if calibrate else None, calibrate=calibrate,
            batch_size=cfg.train.batch_size, transform=on.transform)
        (acc, loss), subs = figures[0], figures[1:]
        answer = (acc, len(client.val_y), loss)
    return to_reply(answer_content(pid, answer, subs), msg)


def _dropout(sent: object, model: nn.Module, spec_json: str, cfg: ExperimentConfig, rnd: int,
             pid: int, n: int) -> Dropout | None:
    """Ordered dropout per batch, when the train message names narrower widths: their
    masks in the received model and this round's batch widths (as the server counts them)."""
    if sent is None:
        return None
    if not isinstance(sent, str):
        raise TypeError(f"{NARROWER_KEY} is not a JSON list of widths: {sent!r:.40}")
    try:
        narrower = json.loads(sent)
    except ValueError as e:
        raise TypeError(f"{NARROWER_KEY} is not JSON: {sent!r:.40}") from e
    if not isinstance(narrower, list) or not narrower or not all(
            isinstance(k, dict) and all(isinstance(r, str) and isinstance(v, list)
                                        and all(isinstance(c, int) and not isinstance(c, bool)
                                                for c in v)
                                        for r, v in k.items()) for k in narrower):
        raise TypeError(f"{NARROWER_KEY} is not a JSON list of widths: {sent!r:.40}")
    spec = ModelSpec.from_json(spec_json)
    masks = dropout_masks(model, spec.record, narrower, spec.example_input())
    return Dropout(dropout_schedule(cfg.seed, rnd, pid, n, cfg.train, len(narrower)),
                   tuple(masks))


def _client_train(runtime: ClientRuntime, msg: Message, context: Context) -> Message:
    """Rebuild the model from the spec JSON, load the weights strictly, train, reply."""
    cfg_rec = msg.content.config_records[CONFIG_KEY]
    cfg = _experiment(msg, context)
    use_threads(cfg)
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
    device = _device(context, cfg)
    wire = cfg.fed.payload_dtype
    model = _received_model(spec_json, msg.content.array_records[ARRAYS_KEY], cfg)
    on = runtime.on_device(cfg, device)
    x, y = on.get(pid, "x"), on.get(pid, "y")
    dropout = _dropout(cfg_rec.get(NARROWER_KEY), model, spec_json, cfg, rnd, pid,
                       int(y.shape[0]))
    state, n, metrics = train_local(model.to(device), x, y, cfg.train,
                                    seeds.batch_order(cfg.seed, rnd, pid),
                                    transform=on.transform, dropout=dropout)
    states = [state]
    while trial_key(i := len(states) - 1) in msg.content.array_records:  # same batches
        trial_spec = cfg_rec.get(f"trial-spec-{i}")
        if not isinstance(trial_spec, str):
            raise TypeError(f"trial model {i} was sent without its trial-spec-{i}")
        trial = _received_model(trial_spec, msg.content.array_records[trial_key(i)], cfg)
        trial_state, _, _ = train_local(trial.to(device), x, y, cfg.train,
                                        seeds.batch_order(cfg.seed, rnd, pid),
                                        transform=on.transform)
        states.append(trial_state)
    return to_reply(reply_content([encode(s, wire) for s in states], n=n,
                                  loss=metrics["train_loss"], arch_version=version, client=pid),
                    msg)


class FedpruneClientApp(ClientApp):
    """fedprune's ClientApp: the query and train handlers above, sharing one
    :class:`ClientRuntime` (a fresh one unless ``runtime`` is given) for the app's lifetime."""

    def __init__(self, runtime: ClientRuntime | None = None) -> None:
        super().__init__()
        self.runtime = held = runtime if runtime is not None else ClientRuntime()

        @self.query()
        def query(msg: Message, context: Context) -> Message:
            return _client_query(held, msg, context)

        @self.train()
        def train(msg: Message, context: Context) -> Message:
            return _client_train(held, msg, context)


#: The app Flower loads (``fedprune.flower.client_app:client_app``), built once per process.
client_app = FedpruneClientApp()
