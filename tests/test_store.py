"""The store: atomic tables with a completion marker, and a table cache bounded by bytes."""

from __future__ import annotations

import pyarrow as pa

from flanpipe.store import ROW_GROUP, Entry, TableCache, read_stats, read_table, write_stats, write_table


def _table(n: int) -> pa.Table:
    return pa.table({"row": pa.array(range(n), pa.int32()), "text": pa.array([f"text {i} " * 20 for i in range(n)])})


def test_tables_are_written_atomically_and_marked_complete_last(tmp_path):
    entry = Entry(str(tmp_path / "d" / "key"))
    url = entry.rendered(0, 3)
    assert url.endswith("train/v0-00003.arrow") and read_stats(url) is None
    write_table(url, _table(10))
    assert read_stats(url) is None  # written, not yet marked complete
    write_stats(url, {"rows": 10})
    assert read_stats(url) == {"rows": 10} and read_table(url).equals(_table(10))
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]


def test_table_cache_reads_any_row_range_and_stays_within_its_bytes(tmp_path):
    url = str(tmp_path / "t.arrow")
    n = ROW_GROUP * 6 + 17
    write_table(url, _table(n))
    group_bytes = read_table(url).slice(0, ROW_GROUP).nbytes
    cache = TableCache(max_bytes=3 * group_bytes)
    for start, stop in ((0, 5), (ROW_GROUP - 3, ROW_GROUP + 4), (n - 20, n), (7, 4 * ROW_GROUP + 9)):
        got = cache.rows(url, start, stop, ["row", "text"])
        assert got.column("row").to_pylist() == list(range(start, stop))
        assert cache.bytes <= 3 * group_bytes * 1.01
    cache.close()
    assert cache.bytes == 0
