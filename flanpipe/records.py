"""Packed rows <-> serialized tf.train.Example bytes, without TensorFlow; the encoder works on whole 2-D arrays.

The wire format (protobuf, proto3 with deterministic map order) of one row is::

    Example  := 0x0A varint(len) Features
    Features := for each feature name, sorted: 0x0A varint(len) Entry
    Entry    := 0x0A varint(len(name)) name 0x12 varint(len) Feature
    Feature  := 0x1A varint(len) Int64List          (int64_list is field 3 of the oneof)
    Int64List:= 0x0A varint(len) varint(v0) varint(v1) ...   (packed repeated int64)

``encode_rows`` builds the varints of every value of a window of rows with numpy and only
joins a handful of byte strings per row; a test proves it byte-identical to protobuf's own
``SerializeToString(deterministic=True)`` for both layouts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from flanpipe.schema import RecordLayout

_MAX_VARINT = 10  # bytes of a 64-bit varint


def _width(max_value: int) -> int:
    """Bytes of the longest varint needed for values up to ``max_value``."""
    width = 1
    while width < _MAX_VARINT and max_value >= 1 << (7 * width):
        width += 1
    return width


def _varint_len(values: np.ndarray, width: int = _MAX_VARINT) -> np.ndarray:
    n = np.ones(values.shape, np.int64)
    for k in range(1, width):
        n += values >= (1 << (7 * k))
    return n


def _varint_bytes(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The varints of ``values`` (non-negative, any shape, row-major) concatenated, and each value's length.

    Each value's bytes are assembled little-endian in one unsigned word of 2, 4 or 8 bytes,
    then ``np.compress`` keeps the used bytes of every word in one pass (several times
    faster than boolean indexing). Two-byte varints (token ids and positions below 16,384:
    nearly every packed value) take a shorter path.
    """
    width = _width(int(values.max(initial=0)))
    if width == 1:
        return values.astype(np.uint8).tobytes(), np.ones(values.shape, np.uint8)
    if width == 2:
        big = values >= 0x80
        v = values.astype(np.int32, copy=False)
        word = ((v & 0x7F) | (big.view(np.uint8).astype(np.int32) << 7) | ((v >> 7) << 8)).astype(np.uint16)
        used = np.empty(values.shape + (2,), bool)
        used[..., 0] = True
        used[..., 1] = big
        return (np.compress(used.reshape(-1), word.view(np.uint8).reshape(-1)).tobytes(),
                big.view(np.uint8) + np.uint8(1))
    if width > 8:  # values >= 2**56: never in a packed row; one word cannot hold them
        parts = [_varint(v) for v in values.reshape(-1).tolist()]
        return b"".join(parts), np.asarray([len(x) for x in parts], np.uint8).reshape(values.shape)
    dtype = np.uint32 if width <= 4 else np.uint64
    size = np.dtype(dtype).itemsize
    v = values.astype(np.uint64)
    n = _varint_len(values, width).astype(np.uint8)
    word = np.zeros(values.shape, np.uint64)
    for k in range(width):
        byte = (v >> np.uint64(7 * k)) & np.uint64(0x7F)
        if k + 1 < width:
            byte |= (n > k + 1).astype(np.uint64) << np.uint64(7)
        word |= byte << np.uint64(8 * k)
    used = (n[..., None] > np.arange(size, dtype=np.uint8)).reshape(-1)
    return np.compress(used, word.astype(dtype).view(np.uint8).reshape(-1)).tobytes(), n


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed(values: np.ndarray) -> tuple[bytes, list[int]]:
    """Varint payloads of each row of a 2-D non-negative array: one buffer and row offsets into it."""
    rows, length = values.shape
    data, lengths = _varint_bytes(values)
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths.sum(axis=1, dtype=np.int64), out=offsets[1:])
    return data, offsets.tolist()


def _headers(parts: list[np.ndarray | bytes]) -> tuple[bytes, list[int]]:
    """Per-row byte strings made of constant bytes and per-row varints (int64 arrays): one buffer, row offsets."""
    rows = next(len(p) for p in parts if isinstance(p, np.ndarray))
    columns = [np.broadcast_to(np.frombuffer(p, np.uint8), (rows, len(p))) if isinstance(p, bytes) else p
               for p in parts]
    sizes = sum(np.full(rows, len(p), np.int64) if isinstance(p, bytes) else _varint_len(p) for p in parts)
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    # Row by row the parts are laid out side by side; build each part's bytes for all rows,
    # then interleave them with one stable sort of (row, part) positions.
    blobs, owners = [], []
    for j, col in enumerate(columns):
        if isinstance(parts[j], bytes):
            data, lengths = np.frombuffer(col.tobytes(), np.uint8), np.full(rows, len(parts[j]), np.int64)
        else:
            blob, lengths = _varint_bytes(col)
            data = np.frombuffer(blob, np.uint8)
        blobs.append(data)
        owners.append(np.repeat(np.arange(rows, dtype=np.int64) * len(parts) + j, lengths))
    order = np.argsort(np.concatenate(owners), kind="stable")
    return np.concatenate(blobs)[order].tobytes(), offsets.tolist()


# Rows encoded per batch: large enough to amortize numpy's per-call cost, small enough that
# the temporaries stay in the allocator's reused heap (fresh pages cost more than the work).
_BATCH_ROWS = 512


def encode_rows(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serialize every row of ``features`` (name -> ``(rows, length)`` non-negative ints) as a tf.train.Example.

    Features are written in sorted name order, exactly as protobuf's deterministic
    serialization writes the map, so equal rows give equal bytes.

    Raises:
      ValueError: a value is negative (protobuf would write it as a 10-byte varint; no packed feature has one).
    """
    rows = min((np.shape(v)[0] for v in features.values()), default=0)
    if rows <= _BATCH_ROWS:
        return _encode_batch(features)
    out: list[bytes] = []
    for start in range(0, rows, _BATCH_ROWS):
        out += _encode_batch({n: v[start:start + _BATCH_ROWS] for n, v in features.items()})
    return out


def _encode_batch(features: Mapping[str, np.ndarray]) -> list[bytes]:
    names = sorted(features)
    arrays = [np.asarray(features[n]) for n in names]
    if not arrays:
        raise ValueError("no features to encode")
    rows = arrays[0].shape[0]
    for name, a in zip(names, arrays):
        if a.ndim != 2 or a.shape[0] != rows:
            raise ValueError(f"feature {name!r}: expected a (rows, length) array with {rows} rows, got {a.shape}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"feature {name!r}: expected integers, got {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"feature {name!r}: negative values cannot be encoded")
    pieces = []
    chunk_len = np.zeros(rows, np.int64)
    for name, a in zip(names, arrays):
        payload, offsets = _packed(a)
        p = np.diff(np.asarray(offsets, np.int64))
        i = 1 + _varint_len(p) + p  # Int64List
        f = 1 + _varint_len(i) + i  # Feature
        key = name.encode()
        e = 1 + _varint_len(np.full(rows, len(key))) + len(key) + 1 + _varint_len(f) + f
        chunk_len += 1 + _varint_len(e) + e
        header = _headers([b"\x0a", e, b"\x0a", np.full(rows, len(key), np.int64), key + b"\x12", f, b"\x1a", i,
                           b"\x0a", p])
        pieces.append((header, (payload, offsets)))
    top = _headers([b"\x0a", chunk_len])
    columns = [_split(*top)]
    for header, payload in pieces:
        columns += [_split(*header), _split(*payload)]
    return list(map(b"".join, zip(*columns)))


def _split(data: bytes, offsets: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in zip(offsets, offsets[1:])]


def encode_example(row: Mapping[str, np.ndarray]) -> bytes:
    """Serialize one packed row (feature name -> 1-D int array); same bytes as ``encode_rows`` gives for it."""
    return encode_rows({name: np.asarray(value)[None, :] for name, value in row.items()})[0]


def proto_example(row: Mapping[str, np.ndarray]) -> bytes:
    """The same row serialized by protobuf itself (the reference ``encode_rows`` is tested against)."""
    example = tf_example_pb2.Example()
    for name in sorted(row):
        example.features.feature[name].int64_list.value.extend(np.asarray(row[name], dtype=np.int64).tolist())
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes, layout: RecordLayout | None = None) -> dict[str, np.ndarray]:
    """Parse a serialized tf.train.Example into int32 arrays.

    Args:
      data: the serialized proto.
      layout: when given, every feature of the layout must be present with its length.

    Raises:
      ValueError: a feature required by ``layout`` is missing or has the wrong length.
    """
    example = tf_example_pb2.Example.FromString(data)
    out = {
        name: np.asarray(feature.int64_list.value, dtype=np.int32)
        for name, feature in example.features.feature.items()
    }
    if layout is not None:
        for name, length in layout.features.items():
            if name not in out:
                raise ValueError(f"packed record lacks feature {name!r} required by layout {layout.layout}")
            if out[name].shape[0] != length:
                raise ValueError(f"feature {name!r} has length {out[name].shape[0]}, layout expects {length}")
    return out
