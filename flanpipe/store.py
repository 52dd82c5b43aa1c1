"""The content-addressed store of read and rendered datasets: where each table lives, atomic writes, a bounded table cache.

Layout of one dataset's entry (``<cache>/<dataset>/<key>/``, the key hashes everything that
changes its tables)::

    <split>/read.json              counts and chunk sizes of the read stage (its presence: read complete)
    <split>/fields-00003.arrow     kept examples' source features, chunk 3 (train: in mix order)
    train/v1-00003.arrow           train variant 1 of chunk 3, rendered and tokenized
    train/v1-00003.json            its statistics (its presence: the chunk is complete)
    <split>/eval-00003.arrow       every template x example of an eval chunk (+ .json); fewshot-*: few-shot ones

Tables are Arrow IPC files of ``ROW_GROUP``-row record batches, zstd-compressed per buffer:
several times cheaper to write and read than Parquet (no encoding of list columns), and any
batch is read on its own. The store only stores: it renders nothing. Two writers of one
entry write the same bytes under unique temp names, so a race is harmless.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flanpipe import storage
from flanpipe.files import read_json, write_bytes, write_json

ROW_GROUP = 256  # rows per Parquet row group of stored tables: the unit the shard writer reads


@dataclass(frozen=True)
class Entry:
    """One dataset's place in the store."""

    root: str  # URL of <cache>/<dataset>/<key>

    def read_meta(self, split: str) -> str:
        return storage.join(self.root, split, "read.json")

    def fields(self, split: str, chunk: int) -> str:
        return storage.join(self.root, split, f"fields-{chunk:05d}.arrow")

    def rendered(self, variant: int, chunk: int) -> str:
        return storage.join(self.root, "train", f"v{variant}-{chunk:05d}.arrow")

    def evaluated(self, split: str, chunk: int, *, fewshot: bool = False) -> str:
        return storage.join(self.root, split, f"{'fewshot' if fewshot else 'eval'}-{chunk:05d}.arrow")


def stats_path(table_url: str) -> str:
    """The statistics file written after a stored table; its presence means the table is complete."""
    return table_url.rsplit(".", 1)[0] + ".json"


_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


def write_table(url: str, table: pa.Table) -> None:
    """Write a stored table atomically (Arrow IPC, batches of ROW_GROUP rows; equal tables give equal bytes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=_IPC) as writer:
        for batch in table.to_batches(max_chunksize=ROW_GROUP):
            writer.write_batch(batch)
    write_bytes(url, sink.getvalue().to_pybytes(), unique_tmp=True)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_file(url) as f:
        table = pa.ipc.open_file(f).read_all()
    return table.select(columns) if columns else table


def write_stats(table_url: str, stats: dict[str, Any]) -> None:
    write_json(stats_path(table_url), stats, unique_tmp=True)


def read_stats(table_url: str) -> dict[str, Any] | None:
    """The statistics of a complete stored table, or None when it is missing or unfinished."""
    path = stats_path(table_url)
    return read_json(path) if storage.exists(path) else None


class TableCache:
    """Row groups of stored tables, kept most recently used first and bounded by their Arrow bytes.

    Owned by one worker (a DoFn instance), never module state. Holding Arrow data (not
    Python objects) keeps the bound close to the memory really used.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._files: OrderedDict[str, tuple[Any, pa.ipc.RecordBatchFileReader]] = OrderedDict()

    def _file(self, url: str) -> pa.ipc.RecordBatchFileReader:
        if url in self._files:
            self._files.move_to_end(url)
            return self._files[url][1]
        handle = storage.open_file(url)
        self._files[url] = (handle, pa.ipc.open_file(handle))
        while len(self._files) > 64:  # open files are cheap but not free
            self._files.popitem(last=False)[1][0].close()
        return self._files[url][1]

    def rows(self, url: str, start: int, stop: int, columns: list[str]) -> pa.Table:
        """Rows ``start..stop-1`` of a stored table (``columns`` only)."""
        parts = []
        for group in range(start // ROW_GROUP, (stop - 1) // ROW_GROUP + 1):
            table = self._group(url, group, columns)
            lo = max(start - group * ROW_GROUP, 0)
            hi = min(stop - group * ROW_GROUP, table.num_rows)
            parts.append(table.slice(lo, hi - lo))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _group(self, url: str, group: int, columns: list[str]) -> pa.Table:
        key = (url, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        table = pa.Table.from_batches([self._file(url).get_batch(group)]).select(columns)
        self._groups[key] = table
        self.bytes += table.nbytes
        while self.bytes > self.max_bytes and len(self._groups) > 1:
            _, old = self._groups.popitem(last=False)
            self.bytes -= old.nbytes
        return table

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        self._groups.clear()
        self.bytes = 0
