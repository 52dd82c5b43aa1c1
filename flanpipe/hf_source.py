"""Reading through Hugging Face ``datasets``, offline: a ``save_to_disk`` directory, or local data files.

``datasets.load_from_disk`` memory-maps the saved Arrow files and never reaches the hub; with
``data_files``, ``datasets.load_dataset`` runs a packaged builder (json, csv, parquet, text) on local
files, converting them once into its Arrow cache (``~/.cache/huggingface/datasets`` or ``HF_DATASETS_CACHE``). Each of our
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
from flanpipe.files_source import check_features, glob_files, keyed
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
    source = _source(spec)
    path = Path(source.huggingface)
    if source.data_files is not None:
        files = _data_files(spec)
        path = Path(f"{source.huggingface} data_files")
        try:  # a packaged builder on local files: no hub access
            saved = datasets.load_dataset(source.huggingface, data_files=files)
        except Exception as e:  # unreadable files fail in many ways inside datasets
            raise SourceError(f"{_what(spec)}: cannot load the data_files with datasets.load_dataset"
                              f"({source.huggingface!r}): {type(e).__name__}: {e}") from None
    elif not path.is_dir():
        raise SourceError(f"{_what(spec)}: source.huggingface: {path} is not a directory written by save_to_disk")
    else:
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


def _data_files(spec: DatasetSpec) -> dict[str, list[str]]:
    """Every data_files split's matched files, in name order (SourceError when a pattern matches none)."""
    out = {}
    for name, patterns in (_source(spec).data_files or {}).items():
        files = []
        for pattern in ([patterns] if isinstance(patterns, str) else patterns):
            matched = glob_files(pattern)
            if not matched:
                raise SourceError(f"{_what(spec)}: source.data_files.{name}: {pattern} matches no file")
            files += matched
        out[name] = files
    return out


def fingerprint(spec: DatasetSpec) -> str:
    """A hash of the saved directory's files or of the data files (names and content, not their location),
    and of the split map."""
    source = _source(spec)
    h = hashlib.sha256(repr(sorted(source.splits.items())).encode() + source.huggingface.encode())
    if source.data_files is not None:
        named = [(f"{split}/{Path(f).name}", Path(f)) for split, files in sorted(_data_files(spec).items())
                 for f in files]
    else:
        root = Path(source.huggingface)
        named = [(str(p.relative_to(root)), p) for p in sorted(p for p in root.rglob("*") if p.is_file())]
    for name, path in named:
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
