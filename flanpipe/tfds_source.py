"""Reading prepared TFDS datasets (array_record format) without TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flanpipe.errors import SourceError
from flanpipe.spec import DatasetSpec


def split_size(spec: DatasetSpec, split: str, data_dir: str) -> int:
    """Number of examples in the sliced TFDS split ``spec.source.splits[split]``."""
    raise SourceError(f"{spec.name}: reading TFDS data is not implemented yet (data_dir={data_dir})")


def read_split(spec: DatasetSpec, split: str, data_dir: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index within the sliced split, decoded features) in stored order."""
    raise SourceError(f"{spec.name}: reading TFDS data is not implemented yet (data_dir={data_dir})")
    yield  # pragma: no cover


def fingerprint(spec: DatasetSpec, data_dir: str) -> str:
    """Identity of the prepared data: builder, version, slices and the dataset_info.json content."""
    raise SourceError(f"{spec.name}: reading TFDS data is not implemented yet (data_dir={data_dir})")
