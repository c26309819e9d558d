"""What travels between the ServerApp and the ClientApps, packed and unpacked in one place.

What a message carries is built engine-neutrally by :mod:`fedprune.federated.meter`
(and measured there); :func:`to_message` packs it into a Flower message.  A train message
carries the weights as an ``ArrayRecord`` (numpy arrays, no pickle) and a ``ConfigRecord``
of plain values: the architecture as :class:`~fedprune.models.ModelSpec` JSON, its
``arch-version``, the resolved experiment config as JSON, the ``server-round`` and the
``partition-id`` -- never a pickled module or code.  Queries (``MessageType.QUERY``) ask a
node for its partition (:data:`QUERY_KIND`) or, in budget mode, for a model's accuracy on its
validation split (:data:`VALIDATE_KIND`).  Weights travel as ``fed.payload_dtype``
(:func:`~fedprune.federated.wire.encode`, :func:`unpack`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from ..federated.meter import ARRAYS_KEY, TRIAL_KEY, VALIDATE_KIND, Content, trial_key
from ..federated.wire import decode, encode

__all__ = ["ARRAYS_KEY", "CONFIG_KEY", "METRICS_KEY", "QUERY_KIND", "TRIAL_KEY",
           "VALIDATE_KIND", "Reply", "content_of", "np_dtypes", "partition_answer",
           "partition_query", "to_message", "to_reply", "trial_key", "unpack", "unpack_train_reply",
           "validation_answer"]

CONFIG_KEY = "config"
METRICS_KEY = "metrics"
QUERY_KIND = "fedprune.partition"


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


def to_message(content: Content, node: int, message_type: str, group_id: str | None = None,
               records: dict[int, ArrayRecord] | None = None) -> Message:
    """A Flower message carrying ``content`` (:mod:`fedprune.federated.meter`): each weight
    record as an ``ArrayRecord`` (tensors as they travel: :func:`~.wire.encode`-d), the
    values as the ``config`` record.  ``records`` caches the ``ArrayRecord`` of each weight
    mapping, so that messages carrying the same weights share one."""
    records = {} if records is None else records
    rec = RecordDict({CONFIG_KEY: ConfigRecord(dict(content.values))})
    for name, state in content.arrays.items():
        if id(state) not in records:
            records[id(state)] = ArrayRecord.from_torch_state_dict(dict(state))
        rec[name] = records[id(state)]
    return Message(content=rec, dst_node_id=node, message_type=message_type,
                   group_id=group_id)


def to_reply(content: Content, msg: Message) -> Message:
    """The reply to ``msg`` carrying ``content``: its weight records, and its values as the
    ``metrics`` record."""
    rec = RecordDict({METRICS_KEY: MetricRecord(dict(content.values))})
    for name, state in content.arrays.items():
        rec[name] = ArrayRecord.from_torch_state_dict(dict(state))
    return Message(rec, reply_to=msg)


def content_of(msg: Message) -> Content:
    """What a received message carries, for the meter: its weight records and the values of
    its config and metric records."""
    content = msg.content
    values = {k: v for rec in (*content.config_records.values(),
                               *content.metric_records.values()) for k, v in rec.items()}
    return Content({k: dict(a.items()) for k, a in content.array_records.items()}, values)


def partition_query(experiment: str, node: int) -> Message:
    cfg_rec = ConfigRecord({"fedprune": QUERY_KIND, "experiment": experiment})
    return Message(content=RecordDict({CONFIG_KEY: cfg_rec}), dst_node_id=node,
                   message_type=MessageType.QUERY)


def partition_answer(msg: Message) -> tuple[object, object]:
    """(``partition-id``, ``num-partitions``) of a partition query's reply (``None`` if absent)."""
    if msg.has_error():
        return None, None
    rec = msg.content.metric_records.get(METRICS_KEY)
    if rec is None:
        return None, None
    return rec.get("partition-id"), rec.get("num-partitions")


def _figures(rec: Any, suffix: str) -> tuple[float, float] | None:
    acc = rec.get(f"val-accuracy{suffix}")
    loss = rec.get(f"val-loss{suffix}")
    if (isinstance(acc, float) and 0.0 <= acc <= 1.0
            and isinstance(loss, float) and math.isfinite(loss) and loss >= 0):
        return acc, loss
    return None


def validation_answer(msg: Message, variants: int = 0
                      ) -> tuple[tuple[float, int, float], list[tuple[float, float]]] | None:
    """((accuracy, validation samples, loss), [(accuracy, loss) of each of the ``variants``
    sub-models asked]) of a validation reply, or ``None`` if unusable (a figure missing or
    out of range)."""
    if msg.has_error():
        return None
    rec = msg.content.metric_records.get(METRICS_KEY)
    if rec is None:
        return None
    n = rec.get("val-examples")
    main = _figures(rec, "")
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0 and main is not None):
        return None
    subs = [_figures(rec, f"-{i}") for i in range(variants)]
    if any(s is None for s in subs):
        return None
    return (main[0], n, main[1]), [s for s in subs if s is not None]


def unpack(arrays: ArrayRecord, payload_dtype: str, like: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """The float32 state of a record packed by :func:`to_message` or :func:`to_reply` (weights
    :func:`~fedprune.federated.wire.encode`-d); ``like``: the architecture's state."""
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


def np_dtypes(state: dict[str, torch.Tensor], payload_dtype: str = "float32"
              ) -> dict[str, str]:
    """The numpy dtype string an ArrayRecord of ``payload_dtype`` stores for each tensor of
    ``state``."""
    return {k: str(t.numpy().dtype) for k, t in encode(
        {k: torch.empty(0, dtype=v.dtype) for k, v in state.items()}, payload_dtype).items()}
