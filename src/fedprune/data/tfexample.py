"""A small reader and writer for serialized ``tf.train.Example`` protocol buffers.

TensorFlow Federated's SQLite datasets store one serialized ``tf.train.Example`` per row.
Only four messages are involved (``tensorflow/core/example/{example,feature}.proto``)::

    message Example   { Features features = 1; }
    message Features  { map<string, Feature> feature = 1; }   // entry: key = 1, value = 2
    message Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                     Int64List int64_list = 3; } }
    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }

so the protobuf wire format is decoded here by hand: no TensorFlow, no generated code.
Packed and unpacked repeated fields are both accepted, as the protobuf rules require.
Malformed input raises :class:`ProtoError` (a ``ValueError``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

Feature = bytes | np.ndarray | list[bytes]


class ProtoError(ValueError):
    """The bytes are not a well-formed ``tf.train.Example``."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)``; value is an int or a bytes slice."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise ProtoError("truncated 64-bit field")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise ProtoError(f"length-delimited field of {length} bytes runs past the end")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > n:
                raise ProtoError("truncated 32-bit field")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes) -> Feature:
    kind: Feature | None = None
    for field, wire, value in _fields(buf):
        if field == 1 and wire == 2:  # BytesList
            kind = [v for f, w, v in _fields(value) if f == 1 and w == 2]  # type: ignore[misc]
        elif field == 2 and wire == 2:  # FloatList
            parts = []
            for f, w, v in _fields(value):
                if f != 1:
                    continue
                if w == 2:  # packed
                    if len(v) % 4:
                        raise ProtoError("packed float list length is not a multiple of 4")
                    parts.append(np.frombuffer(v, dtype="<f4"))
                elif w == 5:
                    parts.append(np.frombuffer(v, dtype="<f4"))
                else:
                    raise ProtoError(f"float list value with wire type {w}")
            kind = (np.concatenate(parts) if len(parts) != 1 else parts[0]).astype(np.float32)
        elif field == 3 and wire == 2:  # Int64List
            out: list[int] = []
            for f, w, v in _fields(value):
                if f != 1:
                    continue
                if w == 2:  # packed varints
                    p = 0
                    while p < len(v):
                        x, p = _varint(v, p)  # type: ignore[arg-type]
                        out.append(_signed64(x))
                elif w == 0:
                    out.append(_signed64(v))  # type: ignore[arg-type]
                else:
                    raise ProtoError(f"int64 list value with wire type {w}")
            kind = np.asarray(out, dtype=np.int64)
    if kind is None:
        raise ProtoError("a feature holds none of bytes_list, float_list, int64_list")
    return kind


def parse_example(buf: bytes) -> dict[str, Feature]:
    """Decode a serialized ``tf.train.Example`` into ``{name: value}``.

    Values: ``np.ndarray`` float32 for float lists, ``np.ndarray`` int64 for int64 lists,
    ``list[bytes]`` for bytes lists.
    """
    out: dict[str, Feature] = {}
    for field, wire, features in _fields(bytes(buf)):
        if field != 1 or wire != 2:
            continue
        for f, w, entry in _fields(features):  # type: ignore[arg-type]
            if f != 1 or w != 2:
                continue
            key, value = None, b""
            for ef, ew, ev in _fields(entry):  # type: ignore[arg-type]
                if ef == 1 and ew == 2:
                    try:
                        key = bytes(ev).decode("utf-8")  # type: ignore[arg-type]
                    except UnicodeDecodeError:
                        raise ProtoError("feature name is not UTF-8") from None
                elif ef == 2 and ew == 2:
                    value = ev  # type: ignore[assignment]
            if key is None:
                raise ProtoError("feature map entry without a name")
            out[key] = _parse_feature(value)
    return out


# ------------------------------------------------------------------ writer (tests, benchmarks)


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: Mapping[str, Sequence[float] | Sequence[int] | Sequence[bytes]
                                     | np.ndarray]) -> bytes:
    """Serialize ``{name: values}`` as a ``tf.train.Example`` (floats packed, as TF writes).

    Float arrays become float lists, integer arrays int64 lists, ``bytes`` items bytes lists.
    """
    entries = b""
    for name, values in features.items():
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            body = _len_field(1, np.ascontiguousarray(values, dtype="<f4").tobytes())
            feature = _len_field(2, body)
        elif isinstance(values, np.ndarray) and values.dtype.kind in "iub":
            body = _len_field(1, b"".join(_enc_varint(int(v)) for v in values.ravel()))
            feature = _len_field(3, body)
        elif values and all(isinstance(v, bytes) for v in values):
            feature = _len_field(1, b"".join(_len_field(1, v) for v in values))  # type: ignore[arg-type]
        elif all(isinstance(v, int) for v in values):
            body = _len_field(1, b"".join(_enc_varint(int(v)) for v in values))  # type: ignore[arg-type]
            feature = _len_field(3, body)
        else:
            packed = struct.pack(f"<{len(values)}f", *values)
            feature = _len_field(2, _len_field(1, packed))
        entry = _len_field(1, name.encode("utf-8")) + _len_field(2, feature)
        entries += _len_field(1, entry)
    return _len_field(1, entries)
