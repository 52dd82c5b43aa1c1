"""Write stage: one shard of a mixture, window by window (gather -> trim -> shuffle -> pack -> serialize), and eval sets.

A shard holds a contiguous block of every dataset's uses; a window takes a proportional slice
of each block, so it reads every dataset's rendered rows sequentially through a byte-bounded
table cache. All per-window work is columnar: Arrow ``take`` and concatenation, numpy
trimming and row building, the vectorized tf.train.Example encoder, Parquet from flat buffers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe import storage
from flanpipe.files import ArrayRecordSink, ParquetSink, copy_file, write_json
from flanpipe.hashing import SHUFFLE, mix64
from flanpipe.jobs import DatasetJob, JobContext, MixturePlan
from flanpipe.mixing import Mixture, pieces, shard_range, windows
from flanpipe.packing import Items, Placement, Trim, bound_parts, build_rows, pack, sizes_of, trim
from flanpipe.read import CHUNK_ROWS
from flanpipe.records import encode_rows
from flanpipe.render import FORMAT_FIELD, eval_schema
from flanpipe.schema import RecordLayout
from flanpipe.store import TableCache, read_table

STATS_DIR = ".stats"
COLUMNS = ["key", "key_hash", "template", "turned", "inputs", "targets", "input_ids", "target_ids"]
EXAMPLES_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("cluster", pa.string()), ("example_key", pa.string()), ("variant", pa.int32()),
    ("template", pa.int32()), ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("input_tokens", pa.int32()), ("target_tokens", pa.int32()), ("input_truncated", pa.bool_()),
    ("target_truncated", pa.bool_()), ("row", pa.int32()), ("segment", pa.int32()),
])



def examples_schema(formats: bool) -> pa.Schema:
    """examples/*.parquet's schema: with prompt formats, a 'format' column after 'turned'."""
    if not formats:
        return EXAMPLES_SCHEMA
    return EXAMPLES_SCHEMA.insert(EXAMPLES_SCHEMA.get_field_index("turned") + 1, FORMAT_FIELD)


# Packed-row Parquet: fixed-length int lists. Dictionaries and page statistics cost more time
# than they save bytes; byte-stream-split (int32 split into byte planes) with zstd level 1 is
# both the fastest and the smallest here (measured on packed rows: 53 vs 87 ns per position
# for the defaults, 2.6 vs 3.0 bytes).
ROWS_OPTIONS: dict[str, Any] = {"use_dictionary": False, "write_statistics": False, "use_byte_stream_split": True,
                                "compression_level": 1, "write_batch_size": 1 << 16, "data_page_size": 8 << 20}
# Rendered examples: text; only the two repetitive name columns are worth a dictionary.
EXAMPLES_OPTIONS: dict[str, Any] = {"use_dictionary": ["dataset", "cluster"], "write_statistics": False}


def shard_name(shard: int, shards: int) -> str:
    return f"{shard:05d}-of-{shards:05d}"


def rows_schema(layout: RecordLayout) -> pa.Schema:
    """Parquet schema of packed rows: one list<int32> column per feature, in name order."""
    return pa.schema([(n, pa.list_(pa.int32())) for n in sorted(layout.features)])


@dataclass(frozen=True)
class DatasetStats:
    """What the mix needs of a prepared dataset: kept train examples and their mean length (variant 0)."""

    kept: int
    tokens: int  # what variant 0 of every example takes in a row: input + target ids after truncation, + 2 EOS

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.kept if self.kept else 0.0


class RenderedRows:
    """Rows of one dataset's rendered train variants, read through a shared byte-bounded table cache."""

    def __init__(self, job: DatasetJob, cache: TableCache, columns: list[str] = COLUMNS):
        self.job, self.cache, self.columns = job, cache, columns

    def take(self, variant: int, start: int, stop: int) -> pa.Table:
        """Rows ``start..stop-1`` of a variant (variants past the templates available repeat them)."""
        variant %= self.job.variants_available
        parts = []
        for chunk in range(start // CHUNK_ROWS, (stop - 1) // CHUNK_ROWS + 1):
            lo, hi = max(start, chunk * CHUNK_ROWS), min(stop, (chunk + 1) * CHUNK_ROWS)
            parts.append(self.cache.rows(self.job.entry.rendered(variant, chunk), lo - chunk * CHUNK_ROWS,
                                         hi - chunk * CHUNK_ROWS, self.columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class Window:
    """The uses of one window, gathered: their rendered rows plus which dataset, variant and use each is."""

    table: pa.Table
    dataset: np.ndarray  # index into the sorted dataset names
    variant: np.ndarray
    use: np.ndarray  # the use's index among its dataset's uses in the mixture


def gather(slices: Mapping[str, tuple[int, int]], names: list[str], kept: Mapping[str, int],
           readers: Mapping[str, RenderedRows]) -> Window:
    tables, dataset, variant, use = [], [], [], []
    for d, name in enumerate(names):
        start, stop = slices[name]
        at = start
        for v, r0, r1 in pieces(start, stop, kept[name]):
            tables.append(readers[name].take(v, r0, r1))
            n = r1 - r0
            dataset.append(np.full(n, d, np.int32))
            variant.append(np.full(n, v, np.int32))
            use.append(np.arange(at, at + n, dtype=np.int64))
            at += n
    # Left in chunks: the token columns are flattened once (_items), the texts only taken once (_examples).
    return Window(pa.concat_tables(tables), np.concatenate(dataset), np.concatenate(variant), np.concatenate(use))


def _items(table: pa.Table) -> Items:
    def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
        column = table.column(name).combine_chunks()
        lengths = np.asarray(column.value_lengths(), np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return np.asarray(column.flatten(), np.int32), offsets

    return Items(*flat("input_ids"), *flat("target_ids"))


class _Counts:
    """Per-shard statistics, accumulated window by window with vector ops."""

    def __init__(self, names: list[str]):
        self.names = names
        self.datasets = np.zeros(len(names), np.int64)
        self.templates: Counter[str] = Counter()
        self.formats: Counter[str] | None = None  # '<dataset>/<format>' -> uses, with prompt formats
        self.totals = Counter({"rows": 0, "examples": 0, "tokens": 0, "input_truncated": 0, "target_truncated": 0,
                               "turned": 0})
        self.full = 0
        self.rest: list[int] = []

    def add(self, w: Window, t: Trim, sizes: np.ndarray, capacity: tuple[int, ...], rows: int) -> None:
        full, rest = bound_parts(sizes, capacity)
        self.full += full
        self.rest = [a + b for a, b in zip(self.rest, rest)] if self.rest else rest
        self.datasets += np.bincount(w.dataset, minlength=len(self.names))
        template = np.asarray(w.table.column("template"))
        # template -1 (template-free modes) counts as its own slot
        pairs = np.bincount(w.dataset * 11 + (template + 1), minlength=len(self.names) * 11)
        for flat in np.flatnonzero(pairs).tolist():
            self.templates[f"{self.names[flat // 11]}/{flat % 11 - 1}"] += int(pairs[flat])
        if "format" in w.table.column_names:
            self.formats = self.formats if self.formats is not None else Counter()
            self.formats.update(f"{self.names[d]}/{f}" for d, f in
                                zip(w.dataset.tolist(), w.table.column("format").to_pylist()))
        self.totals.update({"rows": rows, "examples": len(w.dataset), "tokens": int(sizes.sum()),
                            "input_truncated": int(t.input_truncated.sum()),
                            "target_truncated": int(t.target_truncated.sum()),
                            "turned": int(np.asarray(w.table.column("turned")).sum())})

    def as_dict(self) -> dict[str, Any]:
        out = {**self.totals, "datasets": {n: int(c) for n, c in zip(self.names, self.datasets) if c},
               "templates": dict(sorted(self.templates.items())), "bound": {"full": self.full, "rest": self.rest}}
        if self.formats is not None:
            out["formats"] = dict(sorted(self.formats.items()))
        return out


def _examples(w: Window, order: np.ndarray, t: Trim, row: np.ndarray, segment: np.ndarray, row_offset: int,
              names: pa.Array, clusters: pa.Array, schema: pa.Schema = EXAMPLES_SCHEMA) -> pa.Table:
    """The window's rendered examples in packed order (row, then segment), one Parquet row each."""
    taken = w.table.take(pa.array(order))
    index = pa.array(w.dataset[order])
    formats = {"format": taken.column("format")} if "format" in schema.names else {}
    return pa.table({
        "dataset": pc.take(names, index), "cluster": pc.take(clusters, index),
        "example_key": taken.column("key"), "variant": pa.array(w.variant[order]),
        "template": taken.column("template"), "turned": taken.column("turned"), **formats,
        "inputs": taken.column("inputs"), "targets": taken.column("targets"),
        "input_tokens": pa.array(t.input_length[order].astype(np.int32)),
        "target_tokens": pa.array(t.target_length[order].astype(np.int32)),
        "input_truncated": pa.array(t.input_truncated[order]), "target_truncated": pa.array(t.target_truncated[order]),
        "row": pa.array((row[order] + row_offset).astype(np.int32)),
        "segment": pa.array(segment[order].astype(np.int32)),
    }, schema=schema)


def _rows_table(rows: Mapping[str, np.ndarray], layout: RecordLayout) -> pa.Table:
    columns = {}
    for name in sorted(layout.features):
        matrix = rows[name]
        offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    return pa.table(columns, schema=rows_schema(layout))


def write_shard(ctx: JobContext, mixture: MixturePlan, shard: int, mix: Mixture,
                stats: Mapping[str, DatasetStats], cache: TableCache) -> dict[str, Any]:
    """Pack and write one shard of a mixture into its split (and copy it into the aliases); its statistics.

    Memory holds one window (plus the table cache), whatever the mixture size.
    """
    started = time.perf_counter()
    layout, name = ctx.layout, shard_name(shard, ctx.shards)
    base = storage.join(ctx.out_dir, mixture.name)
    files = {f"train/{name}.array_record": storage.join(base, "train", f"{name}.array_record"),
             f"train/{name}.parquet": storage.join(base, "train", f"{name}.parquet"),
             f"examples/{name}.parquet": storage.join(base, "examples", f"{name}.parquet")}
    records = ArrayRecordSink(files[f"train/{name}.array_record"])
    rows_out = ParquetSink(files[f"train/{name}.parquet"], rows_schema(layout), **ROWS_OPTIONS)
    schema = examples_schema(ctx.formats)
    options = ({**EXAMPLES_OPTIONS, "use_dictionary": [*EXAMPLES_OPTIONS["use_dictionary"], "format"]}
               if ctx.formats else EXAMPLES_OPTIONS)
    examples_out = ParquetSink(files[f"examples/{name}.parquet"], schema, **options)
    names = sorted(mix.uses)
    kept = {d: stats[d].kept for d in names}
    columns = [*COLUMNS, "format"] if ctx.formats else COLUMNS
    readers = {d: RenderedRows(ctx.datasets[d], cache, columns) for d in names}
    name_array = pa.array(names, pa.string())
    cluster_array = pa.array([ctx.datasets[d].spec.cluster for d in names], pa.string())
    counts = _Counts(names)
    blocks = {d: shard_range(mix.uses[d], shard, ctx.shards) for d in names}
    row_offset = 0
    for slices in windows(blocks, ctx.window):
        if not any(b > a for a, b in slices.values()):
            continue
        w = gather(slices, names, kept, readers)
        items = _items(w.table)
        t = trim(items, layout, side=ctx.truncate, bos=ctx.special.bos is not None)  # type: ignore[arg-type]
        sizes, capacity = sizes_of(t, layout)
        # Shuffle by stable hash (ties and next-fit order), independent of which split computes it.
        shuffle = mix64(mix64(np.asarray(w.table.column("key_hash")), SHUFFLE), w.use.astype(np.uint64))
        perm = np.argsort(shuffle, kind="stable")
        placed = pack(sizes[perm], capacity, algorithm=ctx.algorithm, enabled=ctx.packing)  # type: ignore[arg-type]
        row, segment = np.empty_like(placed.row), np.empty_like(placed.segment)
        row[perm], segment[perm] = placed.row, placed.segment
        arrays = build_rows(items, t, Placement(row, segment, placed.rows), layout, special=ctx.special)
        records.write_all(encode_rows(arrays))
        rows_out.write(_rows_table(arrays, layout))
        order = np.lexsort((segment, row))
        examples_out.write(_examples(w, order, t, row, segment, row_offset, name_array, cluster_array, schema))
        counts.add(w, t, sizes, capacity, placed.rows)
        row_offset += placed.rows
    digests = {rel: sink.commit() for rel, sink in ((f"train/{name}.array_record", records),
                                                    (f"train/{name}.parquet", rows_out),
                                                    (f"examples/{name}.parquet", examples_out))}
    result = {**counts.as_dict(), "shard": shard, "files": digests,
              "seconds": round(time.perf_counter() - started, 3)}
    for split in (mixture.name, *mixture.aliases):
        if split != mixture.name:
            for rel, url in files.items():
                copy_file(url, storage.join(ctx.out_dir, split, rel))
        write_json(storage.join(ctx.out_dir, split, STATS_DIR, f"{name}.json"),
                   {**result, "split": split, "computed_in": mixture.name})
    return {**result, "split": mixture.name}


# ------------------------------------------------------------------ eval sets
def _stream(sink: ParquetSink, urls: list[str]) -> None:
    for url in urls:
        sink.write(read_table(url))


def eval_chunks(job: DatasetJob, chunks: Mapping[str, int], *, fewshot: bool = False) -> list[str]:
    """The stored eval chunks of a dataset, validation before test."""
    return [job.entry.evaluated(split, c, fewshot=fewshot) for split in ("validation", "test")
            if split in chunks for c in range(chunks[split])]


def write_eval(ctx: JobContext, split: str, job: DatasetJob, chunks: Mapping[str, int]) -> dict[str, str]:
    """Stream the dataset's stored eval rows into <split>/eval/<dataset>.parquet (and fewshot_eval/, and the
    prompt-tuning train rows when asked); returns the sha256 of each file written."""
    base = storage.join(ctx.out_dir, split)
    digests: dict[str, str] = {}
    for folder, fewshot in (("eval", False), ("fewshot_eval", True)):
        urls = eval_chunks(job, chunks, fewshot=fewshot)
        if fewshot and not (urls and storage.exists(urls[0])):
            continue  # a zero-shot pipeline, or a dataset without a train pool
        rel = f"{folder}/{job.name}.parquet"
        sink = ParquetSink(storage.join(base, rel), eval_schema(job.settings.options_format))
        _stream(sink, urls)
        digests[rel] = sink.commit()
    if ctx.prompt_tuning_sets and "train" in job.spec.source.splits:
        rel = f"prompt_tuning/{job.name}.parquet"
        schema = pa.schema([("example_key", pa.string()), ("template", pa.int32()), ("inputs", pa.string()),
                            ("targets", pa.string())])
        sink = ParquetSink(storage.join(base, rel), schema)
        for c in range(chunks.get("train", 0)):
            t = read_table(job.entry.rendered(0, c), columns=["key", "template", "inputs", "targets"])
            sink.write(t.rename_columns(schema.names))
        digests[rel] = sink.commit()
    write_json(storage.join(base, STATS_DIR, f"eval-{job.name}.json"), {"files": digests})
    return digests
