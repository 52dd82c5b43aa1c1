"""Atomic file writers (ArrayRecord, Parquet, JSON) and checksums, for any fsspec URL: temp name, then rename."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordWriter

from flanpipe import storage

TMP_MARK = ".partial"
LOCK_NAME = ".compile.lock"  # held by a running compile; never part of an output


def temp_url(final: str, *, unique: bool = False) -> str:
    """The temp name a file is written under before its rename. ``unique`` for concurrent writers."""
    suffix = f"{TMP_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}" if unique else TMP_MARK
    return final + suffix


def _commit(tmp: str, final: str) -> None:
    storage.rename(tmp, final)


class ArrayRecordSink:
    """Writes records one by one to a temp ArrayRecord file; ``commit`` renames it into place."""

    def __init__(self, url: str):
        _parent(url)
        self.url = url
        self.local = storage.is_local(url)
        if self.local:
            self.tmp_local = temp_url(storage.filesystem(url)[1])
        else:  # ArrayRecord writes only local files: write locally, upload under the temp name at commit
            fd, self.tmp_local = tempfile.mkstemp(suffix=".array_record")
            os.close(fd)
        # group_size:1 makes every record its own chunk: a random access reads one record.
        self.writer = ArrayRecordWriter(self.tmp_local, "group_size:1")
        self.count = 0

    def write(self, record: bytes) -> None:
        self.writer.write(record)
        self.count += 1

    def commit(self) -> int:
        """Close, then atomically publish the file; returns the record count."""
        self.writer.close()
        if self.local:
            _commit(self.tmp_local, self.url)
        else:
            tmp = temp_url(self.url)
            storage.upload(self.tmp_local, tmp)
            os.unlink(self.tmp_local)
            _commit(tmp, self.url)
        return self.count


def write_array_record(url: str, records: Iterable[bytes]) -> int:
    """Write serialized records to an ArrayRecord file atomically; returns the record count."""
    sink = ArrayRecordSink(url)
    for record in records:
        sink.write(record)
    return sink.commit()


class ParquetSink:
    """Writes tables as row groups to a temp Parquet file; ``commit`` renames it into place."""

    def __init__(self, url: str, schema: pa.Schema):
        _parent(url)
        self.url, self.tmp = url, temp_url(url)
        self.file = storage.open_file(self.tmp, "wb")
        self.writer = pq.ParquetWriter(self.file, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def commit(self) -> None:
        self.writer.close()
        self.file.close()
        _commit(self.tmp, self.url)


def write_parquet(url: str, table: pa.Table, *, unique_tmp: bool = False) -> None:
    """Write a table to Parquet atomically (zstd; no timestamps, so equal tables give equal bytes)."""
    _parent(url)
    tmp = temp_url(url, unique=unique_tmp)
    with storage.open_file(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    _commit(tmp, url)


def write_bytes(url: str, data: bytes, *, unique_tmp: bool = False) -> None:
    """Write bytes atomically."""
    _parent(url)
    tmp = temp_url(url, unique=unique_tmp)
    with storage.open_file(tmp, "wb") as f:
        f.write(data)
    _commit(tmp, url)


def write_json(url: str, data: Any, *, unique_tmp: bool = False) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    write_bytes(url, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), unique_tmp=unique_tmp)


def read_json(url: str) -> Any:
    return json.loads(storage.read_text(url))


def _parent(url: str) -> None:
    storage.makedirs(url.rsplit("/", 1)[0] if "://" in url else os.path.dirname(url))


def sha256_file(url: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with storage.open_file(os.fspath(url), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(root: str, exclude: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative '/' paths), except ``exclude`` and temp files."""
    skip = set(exclude)
    return {rel: sha256_file(storage.join(root, rel)) for rel in storage.list_files(root)
            if rel not in skip and TMP_MARK not in rel.rsplit("/", 1)[-1] and rel != LOCK_NAME}
