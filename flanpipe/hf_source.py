"""Reading a Hugging Face ``datasets`` directory written by ``DatasetDict.save_to_disk``, offline.

``datasets.load_from_disk`` memory-maps the saved Arrow files and never reaches the hub. Each of our
splits names a saved split with an optional row slice (Python semantics); keys are the ``key`` field
when the dataset declares one, else the row's index in the saved split. Rows come back as plain
Python.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flanpipe.errors import SourceError
from flanpipe.files_source import check_features, keyed
from flanpipe.spec import DatasetSpec, HuggingFaceSource

BATCH = 1000
_SLICE = re.compile(r"^(?P<split>[^\[]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def _what(spec: DatasetSpec) -> str:
    return f"dataset {spec.name!r} (templates/{spec.cluster}/{spec.name}.yaml)"


def _source(spec: DatasetSpec) -> HuggingFaceSource:
    assert isinstance(spec.source, HuggingFaceSource)
    return spec.source


def _saved_split(spec: DatasetSpec, split: str) -> tuple[Any, range]:
    """The saved split (a ``datasets.Dataset``) and the rows of it our split takes."""
    try:
        import datasets  # optional: pip install 'flanpipe[hf]'
    except ImportError:
        raise SourceError(f"{_what(spec)}: a huggingface source needs the datasets library: "
                          f"pip install 'flanpipe[hf]'") from None
    path = Path(_source(spec).huggingface)
    if not path.is_dir():
        raise SourceError(f"{_what(spec)}: source.huggingface: {path} is not a directory written by save_to_disk")
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged or foreign directory can fail in many ways inside datasets
        raise SourceError(f"{_what(spec)}: cannot load {path} with datasets.load_from_disk: "
                          f"{type(e).__name__}: {e}") from None
    m = _SLICE.match(_source(spec).splits[split])
    assert m is not None
    name = m["split"]
    if isinstance(saved, datasets.Dataset):
        saved = {"train": saved}  # a single saved Dataset is its 'train' split
    if name not in saved:
        raise SourceError(f"{_what(spec)}: splits.{split}: {path} has no split {name!r} "
                          f"(it has: {', '.join(sorted(saved))})")
    table = saved[name]
    as_int = (lambda v: int(v) if v else None)
    return table, range(*slice(as_int(m["start"]), as_int(m["stop"])).indices(len(table)))


def split_size(spec: DatasetSpec, split: str) -> int:
    """Rows of the split after its slice (the features of its first row are checked on the way)."""
    table, rows = _saved_split(spec, split)
    if len(rows):
        check_features(spec, table[rows[0]], f"{_source(spec).huggingface} split {_source(spec).splits[split]} "
                                              f"row {rows[0]}")
    return len(rows)


def read_split(spec: DatasetSpec, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stable key, row) of every row of the split's slice; SourceError on a duplicate key."""
    table, selected = _saved_split(spec, split)
    where = f"{_source(spec).huggingface} split {_source(spec).splits[split]}"

    def rows() -> Iterator[tuple[str, str, dict[str, Any]]]:
        for start in range(selected.start, selected.stop, BATCH):
            stop = min(start + BATCH, selected.stop)
            batch = table[start:stop]  # columns -> lists
            for offset in range(stop - start):
                yield str(start + offset), f"{where} row {start + offset}", {n: batch[n][offset] for n in batch}

    yield from keyed(rows(), split, _source(spec).key, _what(spec))


def fingerprint(spec: DatasetSpec) -> str:
    """A hash of the saved directory's files (names and content, not its location) and of the split map."""
    root = Path(_source(spec).huggingface)
    h = hashlib.sha256(repr(sorted(_source(spec).splits.items())).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
