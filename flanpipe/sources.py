"""Example readers: bundled samples and prepared TFDS data, each yielding (stable key, features)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flanpipe import files_source, hf_source, tfds_source
from flanpipe.paths import TEMPLATES_DIR
from flanpipe.errors import SourceError
from flanpipe.spec import DatasetSpec, FilesSource, HuggingFaceSource, SamplesSource, TfdsDataSource

SAMPLES_DIR = TEMPLATES_DIR / "samples"

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
        for lineno, features in files_source.jsonl_records(f, path):
            key = example_key(spec, split, lineno - 1, features)
            if key in seen:
                raise SourceError(f"{path}:{lineno}: {spec.source.key}: duplicate example key {key!r}")
            seen.add(key)
            yield key, features


def samples_dir_of(source: SamplesSource) -> Path:
    return Path(source.dir) if source.dir else SAMPLES_DIR


def count_examples(spec: DatasetSpec, split: str, source: SamplesSource | TfdsDataSource) -> int:
    """How many examples ``split`` of the dataset has in ``source`` (before filters); a dataset with files of
    its own counts those, whatever ``source``."""
    if split not in spec.source.splits:
        return 0
    if isinstance(spec.source, FilesSource):
        return files_source.split_size(spec, split)
    if isinstance(spec.source, HuggingFaceSource):
        return hf_source.split_size(spec, split)
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
    if isinstance(spec.source, FilesSource):
        yield from files_source.read_split(spec, split)
    elif isinstance(spec.source, HuggingFaceSource):
        yield from hf_source.read_split(spec, split)
    elif isinstance(source, TfdsDataSource):
        for index, features in tfds_source.read_split(spec, split, source.data_dir):
            yield example_key(spec, split, index, features), features
    else:
        yield from read_samples(spec, split, samples_dir_of(source))


def source_fingerprint(spec: DatasetSpec, source: SamplesSource | TfdsDataSource) -> str:
    """A hash that changes whenever the dataset's source examples may have changed."""
    h = hashlib.sha256()
    if isinstance(spec.source, (FilesSource, HuggingFaceSource)):
        own = files_source if isinstance(spec.source, FilesSource) else hf_source
        h.update(own.fingerprint(spec).encode())
        return h.hexdigest()
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


# ------------------------------------------------------------------ what a pipeline needs, before any data
@dataclass(frozen=True)
class Availability:
    """One dataset a pipeline needs: where it comes from, whether it is there, and how to get it."""

    dataset: str
    cluster: str
    source: str  # the pinned TFDS builder, or the samples directory
    ready: bool
    state: str
    counts: dict[str, int]  # examples per source split (after slices), when ready
    command: str | None  # what prepares it (TFDS), or None
    manual_download: bool


def availability(specs: list[DatasetSpec], source: SamplesSource | TfdsDataSource) -> list[Availability]:
    """The state of every dataset in ``specs`` under ``source`` (nothing is read beyond metadata and line counts)."""
    rows = []
    for spec in specs:
        if isinstance(spec.source, (FilesSource, HuggingFaceSource)):
            kind = "files" if isinstance(spec.source, FilesSource) else "huggingface"
            try:
                counts = {split: count_examples(spec, split, source) for split in spec.source.splits}
                rows.append(Availability(spec.name, spec.cluster, kind, True, kind, counts, None, False))
            except SourceError as e:
                rows.append(Availability(spec.name, spec.cluster, kind, False, str(e), {}, None, False))
            continue
        if isinstance(source, TfdsDataSource):
            s = tfds_source.status(spec, source.data_dir)
            rows.append(Availability(spec.name, spec.cluster, spec.source.tfds, s.prepared, s.state, s.counts,
                                     None if s.prepared else s.command, s.manual_download))
            continue
        base = samples_dir_of(source) / spec.name
        missing = [split for split in spec.source.splits if not (base / f"{split}.jsonl").exists()]
        counts = {} if missing else {split: count_examples(spec, split, source) for split in spec.source.splits}
        rows.append(Availability(spec.name, spec.cluster, str(base), not missing,
                                 f"missing {', '.join(f'{m}.jsonl' for m in missing)}" if missing else "samples",
                                 counts, None, False))
    return rows


def prepare_script(rows: list[Availability]) -> str:
    """A shell script that prepares every TFDS dataset not ready yet (``tfds build`` needs TensorFlow)."""
    lines = ["#!/usr/bin/env bash", "# Prepares the TFDS datasets a flanpipe pipeline needs and does not find yet.",
             "# The tfds command line needs TensorFlow: pip install tensorflow tensorflow-datasets", "set -euo pipefail"]
    todo = [r for r in rows if not r.ready and r.command]
    for r in todo:
        if r.manual_download:
            lines.append(f"# {r.dataset}: {r.source} needs files downloaded by hand first "
                         f"(see `tfds build {r.source}`'s message for where to put them)")
        lines.append(r.command)  # type: ignore[arg-type]
    if not todo:
        lines.append("# nothing to prepare: every dataset is there")
    return "\n".join(lines) + "\n"
