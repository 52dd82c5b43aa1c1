"""Reading a dataset's own files (JSONL, Parquet, CSV; local paths or any fsspec URL; globs and row slices).

Per split the dataset file gives a path or glob, optionally sliced: ``data/train-*.jsonl[:5000]``. The
matched files are read in name order as one sequence of rows, and the slice (Python semantics,
negative bounds included) picks rows of it. Keys are the ``key`` field when the dataset declares one,
else ``<file name>:<line>`` (JSONL, CSV: the line the row starts on; Parquet: the row, from 1).
Values come back as plain Python (CSV: every value a string).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from flanpipe import storage
from flanpipe.errors import SourceError
from flanpipe.spec import FILES_SLICE, DatasetSpec, FeatureField, FilesSource

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}


def _what(spec: DatasetSpec) -> str:
    return f"dataset {spec.name!r} (templates/{spec.cluster}/{spec.name}.yaml)"


def _source(spec: DatasetSpec) -> FilesSource:
    assert isinstance(spec.source, FilesSource)
    return spec.source


def _parse(spec: DatasetSpec, split: str) -> tuple[str, int | None, int | None]:
    m = FILES_SLICE.match(_source(spec).files[split])
    assert m is not None
    as_int = (lambda v: int(v) if v else None)
    return m["pattern"], as_int(m["start"]), as_int(m["stop"])


def matched(spec: DatasetSpec, split: str) -> list[str]:
    """The files of a split, in name order (SourceError when the pattern matches none)."""
    pattern, _, _ = _parse(spec, split)
    names = glob_files(pattern)
    if not names:
        raise SourceError(f"{_what(spec)}: files.{split}: {pattern} matches no file")
    return names


def glob_files(pattern: str) -> list[str]:
    """The files a path or glob (local or fsspec URL) names, in name order; [] when none."""
    fs, path = storage.filesystem(pattern)
    names = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.isfile(path) else [])
    protocol = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
    return [n if n.startswith(protocol) else protocol + n for n in names]


def _format(spec: DatasetSpec, url: str) -> str:
    declared = _source(spec).format
    if declared:
        return declared
    fmt = format_of(url)
    if fmt is None:
        suffix = PurePosixPath(url).suffix.lower()
        raise SourceError(f"{_what(spec)}: {url}: cannot tell the format from {suffix or 'no extension'!r}; "
                          f"set source.format to jsonl, parquet or csv")
    return fmt


def _rows(spec: DatasetSpec, url: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number from 1, record) of one file of a dataset."""
    yield from file_rows(url, _format(spec, url))


def format_of(url: str) -> str | None:
    """The format a file's extension names (jsonl, parquet, csv), or None."""
    return FORMATS.get(PurePosixPath(url).suffix.lower())


def file_rows(url: str, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number from 1, record) of one JSONL, Parquet or CSV file (local path or fsspec URL)."""
    if fmt == "parquet":
        with storage.open_file(url) as f:
            number = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record
        return
    with storage.open_file(url) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="" if fmt == "csv" else None)
        if fmt == "csv":
            reader = csv.DictReader(text)
            for record in reader:
                yield reader.line_num, dict(record)
            return
        yield from jsonl_records(text, url)


def jsonl_records(lines: Iterable[str], where: object) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; SourceError naming ``where``:line on a bad one."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{where}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{where}:{number}: expected a JSON object of features, got {type(record).__name__}")
        yield number, record


def _all_rows(spec: DatasetSpec, split: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for url in matched(spec, split):
        for number, record in _rows(spec, url):
            yield url, number, record


def _bounds(spec: DatasetSpec, split: str) -> tuple[int, int]:
    _, start, stop = _parse(spec, split)
    if start is not None and start >= 0 and stop is not None and stop >= 0:
        return start, max(start, stop)
    total = sum(1 for _ in _all_rows(spec, split))
    lo, hi, _ = slice(start, stop).indices(total)
    return lo, max(lo, hi)


def split_size(spec: DatasetSpec, split: str) -> int:
    """Rows of the split after its slice (the features of its first row are checked on the way)."""
    lo, hi = _bounds(spec, split)
    count = 0
    for position, (url, number, record) in enumerate(_all_rows(spec, split)):
        if position >= hi:
            break
        if position >= lo:
            if count == 0:
                check_features(spec, record, f"{url}:{number}")
            count += 1
    return count


def read_split(spec: DatasetSpec, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stable key, record) of every row of the split's slice; SourceError on a duplicate key."""
    lo, hi = _bounds(spec, split)

    def rows() -> Iterator[tuple[str, str, dict[str, Any]]]:
        for position, (url, number, record) in enumerate(_all_rows(spec, split)):
            if position >= hi:
                return
            if position >= lo:
                yield f"{PurePosixPath(url).name}:{number}", f"{url}:{number}", record

    yield from keyed(rows(), split, _source(spec).key, _what(spec))


def keyed(rows: Iterable[tuple[str, str, dict[str, Any]]], split: str, key_field: str | None, what: str
          ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stable key, record) of (default key, where, record) rows: the ``key_field``'s value when the dataset
    declares one, else the default; SourceError naming ``where`` on a missing or duplicate key."""
    seen: set[str] = set()
    for default, where, record in rows:
        if key_field is None:
            key = f"{split}:{default}"
        else:
            value = lookup(record, key_field)
            if value is MISSING or value is None:
                raise SourceError(f"{where}: key field {key_field!r} missing ({what})")
            key = f"{split}:{value}"
        if key in seen:
            raise SourceError(f"{where}: {key_field}: duplicate example key {key!r} ({what})")
        seen.add(key)
        yield key, record


MISSING = object()


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at a feature path (a/b), or MISSING."""
    node: Any = record
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def check_features(spec: DatasetSpec, record: dict[str, Any], where: str) -> None:
    """Every feature the field map reads is in ``record`` (a row of the split), else SourceError naming it."""
    for name, field in spec.fields.items():
        if isinstance(field, FeatureField) and lookup(record, field.feature) is MISSING:
            have = ", ".join(sorted(record)) or "(none)"
            raise SourceError(f"{_what(spec)}: fields.{name}: feature {field.feature!r} not in {where} "
                              f"(its fields: {have})")


def fingerprint(spec: DatasetSpec) -> str:
    """A hash of the content of every file of every split (names included, not locations)."""
    h = hashlib.sha256()
    for split in sorted(_source(spec).files):
        h.update(f"{split}\0{_source(spec).files[split].rsplit('/', 1)[-1]}\0".encode())
        for url in matched(spec, split):
            h.update(PurePosixPath(url).name.encode() + b"\0")
            with storage.open_file(url) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
