"""Atomic file writers (ArrayRecord, Parquet, JSON) and checksums; temp name, fsync, rename."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordWriter

TMP_SUFFIX = ".partial"


def _commit(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tmp(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(final.name + TMP_SUFFIX)


def write_array_record(path: str | Path, records: Iterable[bytes]) -> int:
    """Write serialized records to an ArrayRecord file atomically; returns the record count."""
    final = Path(path)
    tmp = _tmp(final)
    # group_size:1 makes every record its own chunk: random access reads one record.
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    for record in records:
        writer.write(record)
        n += 1
    writer.close()
    _commit(tmp, final)
    return n


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write a table to Parquet atomically (zstd, no timestamps, so equal tables give equal bytes)."""
    final = Path(path)
    tmp = _tmp(final)
    pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=True)
    _commit(tmp, final)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    final = Path(path)
    tmp = _tmp(final)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _commit(tmp, final)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(root: str | Path, exclude: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative POSIX paths), except ``exclude`` and temp files."""
    root = Path(root)
    skip = set(exclude)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in skip and not p.name.endswith(TMP_SUFFIX)}
