"""What travels between the ServerApp and the ClientApps, packed and unpacked in one place.

A train message carries the weights as an ``ArrayRecord`` (numpy arrays, no pickle) and a
``ConfigRecord`` of plain values: the architecture as :class:`~fedprune.models.ModelSpec`
JSON, its ``arch-version``, the resolved experiment config as JSON, the ``server-round`` and
the ``partition-id`` -- never a pickled module or code.  Queries (``MessageType.QUERY``) ask a
node for its partition (:data:`QUERY_KIND`) or, in budget mode, for a model's accuracy on its
validation split (:data:`VALIDATE_KIND`).  Weights travel as ``fed.payload_dtype``
(:func:`pack`, :func:`unpack`; :mod:`fedprune.federated.wire`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from ..federated.wire import decode, encode

ARRAYS_KEY = "arrays"
# the automatic method's trial models (candidate, reference), trained beside the model:
# arrays "trial-arrays-I" with config "trial-spec-I", I = 0, 1, ...
TRIAL_KEY = "trial-arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
QUERY_KIND = "fedprune.partition"
# a model's accuracy on the client's validation split (the automatic method, budget guard)
VALIDATE_KIND = "fedprune.validate"


def trial_key(i: int) -> str:
    return f"{TRIAL_KEY}-{i}"


@dataclass
class Reply:
    """A train reply's content, as tensors."""

    pid: int
    node: int
    state: dict[str, torch.Tensor]
    n: int
    version: int
    loss: float
    # the trained trial models (None: missing or unreadable), one per model sent
    trial_states: list[dict[str, torch.Tensor] | None] | None = None


def train_message(arrays: ArrayRecord, *, spec_json: str, experiment: str, rnd: int,
                  arch_version: int, pid: int, node: int,
                  trial: list[tuple[ArrayRecord, str]] | None = None) -> Message:
    """A train message; ``trial`` = [(weights, spec JSON), ...] of the automatic method's
    trial models: the client trains each beside the model, with the same batches."""
    cfg_rec = ConfigRecord({"server-round": rnd, "arch-version": arch_version,
                            "model-spec": spec_json, "experiment": experiment,
                            "partition-id": pid})
    content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: cfg_rec})
    for i, (t_arrays, t_spec) in enumerate(trial or []):
        content[trial_key(i)] = t_arrays
        cfg_rec[f"trial-spec-{i}"] = t_spec
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN,
                   group_id=str(rnd))


def partition_query(experiment: str, node: int) -> Message:
    cfg_rec = ConfigRecord({"fedprune": QUERY_KIND, "experiment": experiment})
    return Message(content=RecordDict({CONFIG_KEY: cfg_rec}), dst_node_id=node,
                   message_type=MessageType.QUERY)


def validation_query(arrays: ArrayRecord, *, experiment: str, spec_json: str,
                     node: int) -> Message:
    cfg_rec = ConfigRecord({"fedprune": VALIDATE_KIND, "experiment": experiment,
                            "model-spec": spec_json})
    return Message(content=RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: cfg_rec}),
                   dst_node_id=node, message_type=MessageType.QUERY)


def partition_answer(msg: Message) -> tuple[object, object]:
    """(``partition-id``, ``num-partitions``) of a partition query's reply (``None`` if absent)."""
    if msg.has_error():
        return None, None
    rec = msg.content.metric_records.get(METRICS_KEY)
    if rec is None:
        return None, None
    return rec.get("partition-id"), rec.get("num-partitions")


def validation_answer(msg: Message) -> tuple[float, int, float] | None:
    """(accuracy, validation samples, loss) of a validation reply, or ``None`` if unusable."""
    if msg.has_error():
        return None
    rec = msg.content.metric_records.get(METRICS_KEY)
    acc = rec.get("val-accuracy") if rec is not None else None
    n = rec.get("val-examples") if rec is not None else None
    loss = rec.get("val-loss") if rec is not None else None
    if (isinstance(n, int) and not isinstance(n, bool) and n > 0
            and isinstance(acc, float) and 0.0 <= acc <= 1.0
            and isinstance(loss, float) and math.isfinite(loss) and loss >= 0):
        return acc, n, loss
    return None


def pack(state: dict[str, torch.Tensor], payload_dtype: str) -> ArrayRecord:
    """``state`` as an ``ArrayRecord`` of ``fed.payload_dtype`` (:func:`~.wire.encode`)."""
    return ArrayRecord.from_torch_state_dict(encode(state, payload_dtype))


def unpack(arrays: ArrayRecord, payload_dtype: str, like: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """The float32 state of a :func:`pack`-ed record; ``like``: the architecture's state."""
    return decode(arrays.to_torch_state_dict(), payload_dtype, like)


def unpack_train_reply(msg: Message, pid: int, node: int, like: dict[str, torch.Tensor],
                       trial_like: list[dict[str, torch.Tensor]] | None = None,
                       payload_dtype: str = "float32") -> tuple[Reply | None, str | None]:
    """The reply's content as float32 tensors, or why it cannot be used (message-level
    checks: records present, the partition asked of that node, the dtypes of the current
    architecture ``like`` as sent in ``payload_dtype``).  With ``trial_like`` (trial models
    were sent) the trained trial models are read too; one missing or unreadable is None
    (the model's weights still count)."""
    dtypes = np_dtypes(like, payload_dtype)
    content = msg.content
    arrays = content.array_records.get(ARRAYS_KEY)
    metrics = content.metric_records.get(METRICS_KEY)
    if arrays is None or metrics is None:
        return None, f"no '{ARRAYS_KEY}' arrays or '{METRICS_KEY}' metrics record"
    if msg.metadata.src_node_id != node or metrics.get("partition-id") != pid:
        return None, (f"answer from node {msg.metadata.src_node_id} for partition "
                      f"{metrics.get('partition-id')!r}; asked node {node} for {pid}")
    n, version = metrics.get("num-examples"), metrics.get("arch-version")
    loss = metrics.get("train-loss", float("nan"))
    state, reason = _read_arrays(arrays, dtypes, payload_dtype, like)
    if state is None:
        return None, reason
    reply = Reply(pid, node, state, n, version, float(loss))  # type: ignore[arg-type]
    if trial_like is not None:  # a missing or unreadable copy is None, the reply counts
        reply.trial_states = [
            _read_arrays(content.array_records.get(trial_key(i)),
                         np_dtypes(ref, payload_dtype), payload_dtype, ref)[0]
            for i, ref in enumerate(trial_like)]
    return reply, None


def _read_arrays(arrays: ArrayRecord | None, dtypes: dict[str, str], payload_dtype: str,
                 like: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """A float32 state dict of ``arrays`` with the architecture's ``dtypes`` on the wire,
    or (None, why not)."""
    if arrays is None:
        return None, "no arrays"
    for key, arr in arrays.items():
        if key in dtypes and arr.dtype != dtypes[key]:
            return None, (f"{key} is {arr.dtype}, the current architecture sends "
                          f"{dtypes[key]}")
    try:
        return decode({k: torch.from_numpy(np.array(a.numpy())) for k, a in arrays.items()},
                      payload_dtype, like), None
    except Exception as exc:  # noqa: BLE001 - a malformed array from a client
        return None, f"arrays cannot be read: {exc}"


def array_payload(arrays: ArrayRecord | None) -> int:
    """Bytes of the weights of a record: its float arrays, and the ``int16`` arrays that
    carry bfloat16 weights; integer buffers are not counted (as in
    :func:`~fedprune.metrics.payload_bytes`)."""
    if arrays is None:
        return 0
    return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in arrays.values()
                   if np.dtype(a.dtype).kind == "f" or np.dtype(a.dtype) == np.int16))


def np_dtypes(state: dict[str, torch.Tensor], payload_dtype: str = "float32"
              ) -> dict[str, str]:
    """The numpy dtype string an ArrayRecord of ``payload_dtype`` stores for each tensor of
    ``state``."""
    return {k: str(t.numpy().dtype) for k, t in encode(
        {k: torch.empty(0, dtype=v.dtype) for k, v in state.items()}, payload_dtype).items()}
