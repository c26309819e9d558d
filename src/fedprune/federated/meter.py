"""The one meter: what every message carries, its size on the wire, and the clients' compute.

Both engines describe each message they exchange as a :class:`Content` -- named weight
records plus named plain values, exactly what the Flower app puts in a message's
``ArrayRecord``\\ s and its config or metric record -- built by the functions below, and
measure it with :func:`message_bytes` where they encode it: the Flower transport when it
packs or receives a Flower message, the in-process transport for the message it would send.
So both count the same bytes for the same run, and everything that travels is counted: the
weights (every array at its wire width, integer buffers included), the architecture and the
experiment config as UTF-8 text, the round number, version and partition id, and the
metrics of each reply, 8 bytes a number.  Names and framing are not counted.

Client compute (:class:`~fedprune.metrics.compute.ClientCompute`, also what the methods
that cap a client's work count with) is counted from what the server asks: a client
asked to train a model for ``local_epochs`` epochs over its ``n`` training samples spends
``3 x forward FLOPs x n x epochs`` (the backward pass costs twice the forward one: gradients
with respect to the inputs and to the weights); a client asked to validate a model spends
``forward FLOPs x`` its validation samples.  Forward FLOPs are :func:`~fedprune.metrics.
count_flops` (convolutions and linear layers, one sample).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics.compute import ClientCompute
from ..models import ModelSpec
from .wire import encode

__all__ = [
    "CALIBRATE_KEY",
    "NARROWER_KEY",
    "NUMBER_BYTES",
    "ClientCompute",
    "Content",
    "answer_content",
    "array_bytes",
    "keep_json",
    "message_bytes",
    "narrower_json",
    "query_content",
    "reply_content",
    "train_content",
    "trial_key",
    "variant_key",
]

NUMBER_BYTES = 8  # an int, float or bool value of a config or metric record
ARRAYS_KEY = "arrays"
NARROWER_KEY = "narrower-widths"  # a train message's narrower widths (ordered dropout)
# the automatic method's trial models (candidate, reference), trained beside the model:
# arrays "trial-arrays-I" with config "trial-spec-I", I = 0, 1, ...
TRIAL_KEY = "trial-arrays"
# the kind of a validation query: a model's accuracy on the client's validation split
VALIDATE_KIND = "fedprune.validate"

Value = int | float | str | bool


def trial_key(i: int) -> str:
    return f"{TRIAL_KEY}-{i}"


@dataclass(frozen=True)
class Content:
    """What one message carries: weight records (name -> tensors as they travel) and plain
    values (a config record's or a metric record's)."""

    arrays: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    values: Mapping[str, Value] = field(default_factory=dict)


def array_bytes(a: Any) -> int:
    """Bytes of one array as it travels: a torch tensor, a numpy array or a Flower
    ``Array`` (anything with ``dtype`` and ``shape``)."""
    if isinstance(a, torch.Tensor):
        return a.element_size() * a.numel()
    return np.dtype(a.dtype).itemsize * int(np.prod(a.shape))


def value_bytes(v: Value) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, bytes):
        return len(v)
    if isinstance(v, list | tuple):
        return sum(value_bytes(x) for x in v)
    return NUMBER_BYTES


def message_bytes(content: Content) -> int:
    """The size of a message on the wire: its arrays' bytes, its texts' UTF-8 bytes and
    :data:`NUMBER_BYTES` per number."""
    return (sum(array_bytes(a) for rec in content.arrays.values() for a in rec.values())
            + sum(value_bytes(v) for v in content.values.values()))


def train_content(models: Sequence[tuple[Mapping[str, torch.Tensor], str]], *,
                  experiment: str, rnd: int, arch_version: int, client: int,
                  narrower: Sequence[Mapping[str, Sequence[int]]] = ()) -> Content:
    """A train message: ``models`` = [(weights as they travel, spec JSON), ...], the global
    model first, then the trial models that the client trains beside it with the same
    batches; the experiment config JSON, the round, the architecture version, the partition;
    and, for ordered dropout per batch (sent only then), the narrower widths inside the
    model that some of its batches train (:func:`narrower_json`)."""
    (state, spec_json), *trial = models
    values: dict[str, Value] = {"server-round": rnd, "arch-version": arch_version,
                                "model-spec": spec_json, "experiment": experiment,
                                "partition-id": client}
    if narrower:
        values[NARROWER_KEY] = narrower_json(narrower)
    arrays: dict[str, Mapping[str, Any]] = {ARRAYS_KEY: state}
    for i, (t_state, t_spec) in enumerate(trial):
        arrays[trial_key(i)] = t_state
        values[f"trial-spec-{i}"] = t_spec
    return Content(arrays, values)


def reply_content(states: Sequence[Mapping[str, torch.Tensor]], *, n: int, loss: float,
                  arch_version: int, client: int) -> Content:
    """A train reply: the trained weights as they travel (the model's, then each trial
    model's), the training samples, the last epoch's loss, the version and the partition."""
    arrays = {ARRAYS_KEY if i == 0 else trial_key(i - 1): s for i, s in enumerate(states)}
    return Content(arrays, {"num-examples": n, "train-loss": loss,
                            "arch-version": arch_version, "partition-id": client})


# a validation query's request to re-estimate batch-norm statistics first (training samples)
CALIBRATE_KEY = "calibrate"


def variant_key(i: int) -> str:
    return f"variant-{i}"


def keep_json(keep: Mapping[str, Sequence[int]]) -> str:
    """A sub-model as it travels in a query: the kept channels of each cut group, JSON."""
    return json.dumps({str(k): [int(i) for i in v] for k, v in keep.items()},
                      separators=(",", ":"), sort_keys=True)


def narrower_json(narrower: Sequence[Mapping[str, Sequence[int]]]) -> str:
    """Narrower widths as they travel in a train message: a JSON list, each width the
    kept channels of each cut group (as :func:`keep_json`)."""
    return "[" + ",".join(keep_json(k) for k in narrower) + "]"


def query_content(model: tuple[Mapping[str, torch.Tensor], str], *, experiment: str,
                  variants: Sequence[Mapping[str, Sequence[int]]] = (),
                  calibrate: int = 0) -> Content:
    """A validation query: a model (weights as they travel, spec JSON) to evaluate on the
    client's validation split, and its sub-models ``variants`` to evaluate on the same
    samples (each as the channels it keeps, :func:`keep_json`: no second copy of weights);
    ``calibrate`` > 0 (sent only then): re-estimate each net's batch-norm statistics on up
    to that many training samples first."""
    state, spec_json = model
    values: dict[str, Value] = {"fedprune": VALIDATE_KIND, "experiment": experiment,
                                "model-spec": spec_json}
    for i, keep in enumerate(variants):
        values[variant_key(i)] = keep_json(keep)
    if calibrate > 0:
        values[CALIBRATE_KEY] = int(calibrate)
    return Content({ARRAYS_KEY: state}, values)


def answer_content(client: int, answer: tuple[float, int, float] | None,
                   variants: Sequence[tuple[float, float]] = ()) -> Content:
    """A validation answer: the partition and, for a client with a validation split,
    ``(accuracy, samples, loss)``, and ``(accuracy, loss)`` of each sub-model asked;
    without one, 0 samples."""
    values: dict[str, Value] = {"partition-id": client, "val-examples": 0}
    if answer is not None:
        acc, n, loss = answer
        values.update({"val-accuracy": float(acc), "val-loss": float(loss),
                       "val-examples": int(n)})
        for i, (v_acc, v_loss) in enumerate(variants):
            values[f"val-accuracy-{i}"] = float(v_acc)
            values[f"val-loss-{i}"] = float(v_loss)
    return Content({}, values)


def wire_models(models: Sequence[tuple[nn.Module, ModelSpec]], payload_dtype: str
                ) -> list[tuple[dict[str, torch.Tensor], str]]:
    """Each model as it travels: its weights :func:`~.wire.encode`-d, and its spec JSON."""
    return [(encode(m.state_dict(), payload_dtype), spec.to_json()) for m, spec in models]
