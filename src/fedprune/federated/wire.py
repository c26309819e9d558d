"""What the weights travel as: ``fed.payload_dtype``.

``float32`` (the default) sends every floating-point tensor as it is.  ``bfloat16`` halves
the bytes both ways: the server keeps its global model (and the automatic method's trial
models) rounded to bfloat16 values after every aggregation, so that what it sends is exactly
its model; each client trains from those values in float32 and its reply is rounded to
bfloat16 on the way back.  Aggregation runs in float32 on the rounded values.  Integer
buffers travel as they are (:mod:`.meter` counts them).

On the wire (the Flower app), a bfloat16 tensor travels as its 16-bit patterns in an
``int16`` numpy array (numpy has no bfloat16): :func:`encode` and :func:`decode`.  The
in-process loop does not serialise; :func:`round_trip` gives the values a reply has after
the trip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]

__all__ = ["PAYLOAD_DTYPES", "decode", "encode", "round_model", "round_trip"]

PAYLOAD_DTYPES = {"float32": (torch.float32, 4), "bfloat16": (torch.bfloat16, 2)}


def round_trip(state: Mapping[str, torch.Tensor], payload_dtype: str) -> StateDict:
    """``state`` as it arrives: float tensors rounded to ``payload_dtype`` and back to
    float32 (``float32``: the tensors themselves)."""
    if payload_dtype == "float32":
        return dict(state)
    dtype = PAYLOAD_DTYPES[payload_dtype][0]
    return {k: v.to(dtype).to(v.dtype) if v.is_floating_point() else v
            for k, v in state.items()}


@torch.no_grad()
def round_model(model: nn.Module, payload_dtype: str) -> None:
    """Round ``model``'s float parameters and buffers in place to what travels."""
    if payload_dtype == "float32":
        return
    dtype = PAYLOAD_DTYPES[payload_dtype][0]
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.copy_(t.to(dtype))


def encode(state: Mapping[str, torch.Tensor], payload_dtype: str) -> StateDict:
    """Tensors to put in an ``ArrayRecord``: with ``bfloat16``, each float tensor's bfloat16
    bit patterns as ``int16`` (rounded to nearest even); otherwise ``state`` itself."""
    if payload_dtype == "float32":
        return dict(state)
    return {k: v.detach().to(torch.bfloat16).view(torch.int16) if v.is_floating_point() else v
            for k, v in state.items()}


def decode(received: Mapping[str, torch.Tensor], payload_dtype: str,
           like: Mapping[str, torch.Tensor]) -> StateDict:
    """The float32 state of tensors :func:`encode` made; ``like`` (the architecture's state
    dict) says which keys are floating point.  A key of ``like`` that is floating point must
    arrive as ``int16`` under ``bfloat16`` (else :class:`ValueError`)."""
    if payload_dtype == "float32":
        return dict(received)
    out: StateDict = {}
    for k, v in received.items():
        ref = like.get(k)
        if ref is not None and ref.is_floating_point():
            if v.dtype != torch.int16:
                raise ValueError(f"{k} arrived as {v.dtype}; fed.payload_dtype = 'bfloat16' "
                                 "sends float tensors as int16 bit patterns")
            v = v.contiguous().view(torch.bfloat16).to(ref.dtype)
        out[k] = v
    return out
