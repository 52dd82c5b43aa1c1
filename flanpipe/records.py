"""Packed rows <-> serialized tf.train.Example bytes, without importing TensorFlow."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from flanpipe.schema import RecordLayout


def encode_example(row: Mapping[str, np.ndarray]) -> bytes:
    """Serialize one packed row (feature name -> 1-D int array) as a tf.train.Example.

    Features are written in sorted name order so equal rows give equal bytes.
    """
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
