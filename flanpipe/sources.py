"""Example readers: bundled samples and prepared TFDS data, each yielding (stable key, features)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flanpipe import tfds_source
from flanpipe.errors import SourceError
from flanpipe.spec import DatasetSpec, SamplesSource, TfdsDataSource

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "templates" / "samples"

Example = tuple[str, dict[str, Any]]


def example_key(spec: DatasetSpec, split: str, index: int, features: dict[str, Any]) -> str:
    """The stable key of an example: its key feature when the dataset declares one, else split:index."""
    if spec.source.key is None:
        return f"{split}:{index}"
    node: Any = features
    for part in spec.source.key.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise SourceError(f"{spec.name}: key feature {spec.source.key!r} missing from example {index} of {split}")
        node = node[part]
    if isinstance(node, bytes):
        node = node.decode("utf-8")
    return f"{split}:{node}"


def read_samples(spec: DatasetSpec, split: str, samples_dir: Path = SAMPLES_DIR) -> Iterator[Example]:
    """Yield the bundled examples of one split, stored as JSONL in the builder's feature schema.

    Raises:
      SourceError: the file is missing, a line is not a JSON object, or two examples share a key.
    """
    path = Path(samples_dir) / spec.name / f"{split}.jsonl"
    if not path.exists():
        raise SourceError(f"{path}: no bundled samples for dataset {spec.name!r} split {split!r}")
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                features = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(features, dict):
                raise SourceError(f"{path}:{lineno}: expected a JSON object of features, got {type(features).__name__}")
            key = example_key(spec, split, lineno - 1, features)
            if key in seen:
                raise SourceError(f"{path}:{lineno}: {spec.source.key}: duplicate example key {key!r}")
            seen.add(key)
            yield key, features


def samples_dir_of(source: SamplesSource) -> Path:
    return Path(source.dir) if source.dir else SAMPLES_DIR


def count_examples(spec: DatasetSpec, split: str, source: SamplesSource | TfdsDataSource) -> int:
    """How many examples ``split`` of the dataset has in ``source`` (before filters)."""
    if split not in spec.source.splits:
        return 0
    if isinstance(source, TfdsDataSource):
        return tfds_source.split_size(spec, split, source.data_dir)
    path = samples_dir_of(source) / spec.name / f"{split}.jsonl"
    if not path.exists():
        raise SourceError(f"{path}: no bundled samples for dataset {spec.name!r} split {split!r}")
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def read_examples(spec: DatasetSpec, split: str, source: SamplesSource | TfdsDataSource) -> Iterator[Example]:
    """Yield (stable key, features) for every example of ``split`` in ``source``."""
    if split not in spec.source.splits:
        return
    if isinstance(source, TfdsDataSource):
        for index, features in tfds_source.read_split(spec, split, source.data_dir):
            yield example_key(spec, split, index, features), features
    else:
        yield from read_samples(spec, split, samples_dir_of(source))


def source_fingerprint(spec: DatasetSpec, source: SamplesSource | TfdsDataSource) -> str:
    """A hash that changes whenever the dataset's source examples may have changed."""
    h = hashlib.sha256()
    if isinstance(source, TfdsDataSource):
        h.update(tfds_source.fingerprint(spec, source.data_dir).encode())
        return h.hexdigest()
    for split in sorted(spec.source.splits):
        path = samples_dir_of(source) / spec.name / f"{split}.jsonl"
        h.update(split.encode() + b"\0")
        if not path.exists():
            h.update(b"<missing>\0")
            continue
        with path.open("rb") as f:  # streamed: a full-size split is hundreds of MB
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()
