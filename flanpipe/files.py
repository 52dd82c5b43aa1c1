"""Atomic files for any fsspec URL (ArrayRecord, Parquet, JSON): temp name, then rename; sha256 taken while writing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordWriter

from flanpipe import storage

TMP_MARK = ".partial"
LOCK_NAME = ".compile.lock"  # held by a running compile; never part of an output
# group_size:1 makes every record its own chunk, so a random access reads one record; zstd
# level 1 compresses packed rows as well as the default level 3 here, at about 3x the speed.
ARRAY_RECORD_OPTIONS = "group_size:1,zstd:1"


def temp_url(final: str, *, unique: bool = False) -> str:
    """The temp name a file is written under before its rename. ``unique`` for concurrent writers."""
    suffix = f"{TMP_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}" if unique else TMP_MARK
    return final + suffix


class HashingFile:
    """A write-only file object that feeds every byte to sha256 on its way out."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.size += len(view)
        return self.raw.write(view)

    def flush(self) -> None:
        self.raw.flush()

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.closed = True


class ArrayRecordSink:
    """Writes records to a temp ArrayRecord file; ``commit`` renames it into place and returns its sha256."""

    def __init__(self, url: str):
        _parent(url)
        self.url = url
        self.local = storage.is_local(url)
        if self.local:
            self.tmp_local = temp_url(storage.filesystem(url)[1])
        else:  # ArrayRecord writes only local files: write locally, upload under the temp name at commit
            fd, self.tmp_local = tempfile.mkstemp(suffix=".array_record")
            os.close(fd)
        self.writer = ArrayRecordWriter(self.tmp_local, ARRAY_RECORD_OPTIONS)
        self.count = 0

    def write_all(self, records: Iterable[bytes]) -> None:
        write = self.writer.write
        for record in records:
            write(record)
            self.count += 1

    def commit(self) -> str:
        """Close, then atomically publish the file; returns its sha256 (read back once, from the page cache)."""
        self.writer.close()
        digest = sha256_file(self.tmp_local)
        if self.local:
            storage.rename(self.tmp_local, self.url)
        else:
            tmp = temp_url(self.url)
            storage.upload(self.tmp_local, tmp)
            os.unlink(self.tmp_local)
            storage.rename(tmp, self.url)
        return digest


def write_array_record(url: str, records: Iterable[bytes]) -> str:
    """Write serialized records to an ArrayRecord file atomically; returns its sha256."""
    sink = ArrayRecordSink(url)
    sink.write_all(records)
    return sink.commit()


class ParquetSink:
    """Writes tables as row groups to a temp Parquet file, hashing as it goes; ``commit`` renames it into place."""

    def __init__(self, url: str, schema: pa.Schema, **options: Any):
        _parent(url)
        self.url, self.tmp = url, temp_url(url)
        self.file = HashingFile(storage.open_file(self.tmp, "wb"))
        self.writer = pq.ParquetWriter(self.file, schema, compression="zstd", **options)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def commit(self) -> str:
        """Close, publish, and return the file's sha256."""
        self.writer.close()
        self.file.close()
        storage.rename(self.tmp, self.url)
        return self.file.hash.hexdigest()


def write_parquet(url: str, table: pa.Table, *, unique_tmp: bool = False) -> str:
    """Write a table to Parquet atomically (zstd; no timestamps, so equal tables give equal bytes); its sha256."""
    _parent(url)
    tmp = temp_url(url, unique=unique_tmp)
    with storage.open_file(tmp, "wb") as raw:
        f = HashingFile(raw)
        pq.write_table(table, f, compression="zstd")
    storage.rename(tmp, url)
    return f.hash.hexdigest()


def write_bytes(url: str, data: bytes, *, unique_tmp: bool = False) -> str:
    """Write bytes atomically; returns their sha256."""
    _parent(url)
    tmp = temp_url(url, unique=unique_tmp)
    with storage.open_file(tmp, "wb") as f:
        f.write(data)
    storage.rename(tmp, url)
    return hashlib.sha256(data).hexdigest()


def write_json(url: str, data: Any, *, unique_tmp: bool = False) -> str:
    """Write JSON (sorted keys, indented) atomically; returns its sha256."""
    return write_bytes(url, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), unique_tmp=unique_tmp)


def read_json(url: str) -> Any:
    return json.loads(storage.read_text(url))


def copy_file(src: str, dst: str) -> None:
    """Copy a committed file to ``dst`` atomically: a hard link on a local disk, else a copy."""
    if not (storage.is_local(src) and storage.is_local(dst)):
        write_bytes(dst, storage.read_bytes(src))
        return
    _parent(dst)
    tmp = temp_url(dst)
    s, t = storage.filesystem(src)[1], storage.filesystem(tmp)[1]
    if os.path.exists(t):
        os.unlink(t)
    try:
        os.link(s, t)
    except OSError:  # another file system, or links not supported
        storage.filesystem(src)[0].copy(s, t)
    storage.rename(tmp, dst)


def _parent(url: str) -> None:
    storage.makedirs(url.rsplit("/", 1)[0] if "://" in url else os.path.dirname(url))


def sha256_file(url: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with storage.open_file(os.fspath(url), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(root: str, exclude: Iterable[str] = (), known: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative '/' paths), except ``exclude``, temp files and the lock.

    ``known`` digests (taken while the files were written) are used instead of re-reading them.
    """
    skip = set(exclude)
    known = known or {}
    return {rel: known[rel] if rel in known else sha256_file(storage.join(root, rel))
            for rel in storage.list_files(root)
            if rel not in skip and TMP_MARK not in rel.rsplit("/", 1)[-1] and rel != LOCK_NAME}
