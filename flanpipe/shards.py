"""Per-split work on a worker: choose mixture items, and pack + write one shard or one eval set."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from flanpipe import storage
from flanpipe.cache import DatasetJob, eval_table, train_variant
from flanpipe.hashing import stable_hash
from flanpipe.mixing import allocate, mixing_rates, select
from flanpipe.packing import Trimmed, pack, trim
from flanpipe.plan import SplitPlan
from flanpipe.records import encode_example
from flanpipe.schema import RecordLayout
from flanpipe.writers import write_array_record, write_json, write_parquet

STATS_DIR = ".stats"
# An item is one use of one example in a mixture (plain tuple: cheap to pickle and shuffle).
Item = tuple[int, str, str, int, int, bool, str, str, bytes, bytes]


@dataclass(frozen=True)
class JobContext:
    """Everything the workers need; built by flanpipe.compile from a Plan (picklable)."""

    out_dir: str
    datasets: dict[str, DatasetJob]
    splits: tuple[SplitPlan, ...]
    layout: RecordLayout
    seed: int
    shards: int
    window: int
    packing: bool
    algorithm: str
    truncate: str
    maximum_rate: int
    mixture_examples: int | None  # None: sized from mixture_tokens
    mixture_tokens: int | None
    prompt_tuning_sets: bool = False


def shard_name(shard: int, shards: int) -> str:
    return f"{shard:05d}-of-{shards:05d}"


def allocate_split(split: SplitPlan, metas: dict[str, dict[str, Any]], ctx: JobContext
                   ) -> Iterator[tuple[str, str, int]]:
    """(split, dataset, examples) for every training dataset of the split, from the prepared counts."""
    counts = {d: metas[d]["counts"]["kept"] for d in split.train}
    rates = mixing_rates(counts, ctx.maximum_rate)
    total = ctx.mixture_examples
    if total is None:  # steps x batch tokens: as many examples as the expected tokens fill
        mean = sum(rates[d] * metas[d]["mean_tokens"] for d in rates)
        total = max(1, round(ctx.mixture_tokens / mean))  # type: ignore[operator]
    for dataset, n in allocate(rates, total).items():
        if n:
            yield split.name, dataset, n


def mix_items(job: DatasetJob, keys: list[str], n: int, *, split: str, seed: int, num_shards: int,
              load: Callable[[DatasetJob, int], pa.Table]) -> Iterator[tuple[int, Item]]:
    """The ``n`` uses of a dataset in a split, each with its shard and its shuffle key."""
    picks = select(len(keys), n, seed=seed, dataset=job.spec.name, keys=keys)
    tables: dict[int, dict[str, list[Any]]] = {}
    for use, (row, variant) in enumerate(picks):
        if variant not in tables:
            tables[variant] = load(job, variant).to_pydict()
        t = tables[variant]
        key = t["key"][row]
        order = stable_hash(seed, "shuffle", split, job.spec.name, key, use)
        item: Item = (order, job.spec.name, key, variant, t["template"][row], t["turned"][row], t["inputs"][row],
                      t["targets"][row], np.asarray(t["input_ids"][row], np.int32).tobytes(),
                      np.asarray(t["target_ids"][row], np.int32).tobytes())
        yield order % num_shards, item


def write_shard(ctx: JobContext, split: str, shard: int, items: list[Item], clusters: dict[str, str]
                ) -> dict[str, Any]:
    """Shuffle (by key), pack window by window, and write the shard's three files; return its stats."""
    items.sort(key=lambda i: (i[0], i[1], i[2], i[3]))
    layout = ctx.layout
    base = storage.join(ctx.out_dir, split)
    name = shard_name(shard, ctx.shards)
    records: list[bytes] = []
    row_cols: dict[str, list[Any]] = defaultdict(list)
    ex_cols: dict[str, list[Any]] = defaultdict(list)
    stats: dict[str, Any] = {"split": split, "shard": shard, "rows": 0, "examples": 0, "tokens": 0,
                             "input_truncated": 0, "target_truncated": 0,
                             "datasets": Counter(), "templates": Counter(), "turned": 0}
    for start in range(0, len(items), ctx.window):
        window = items[start:start + ctx.window]
        trimmed = [trim(np.frombuffer(i[8], np.int32), np.frombuffer(i[9], np.int32), layout,
                        side=ctx.truncate) for i in window]  # type: ignore[arg-type]
        for members, row in pack(trimmed, layout, algorithm=ctx.algorithm, enabled=ctx.packing):  # type: ignore[arg-type]
            row_index = len(records)
            records.append(encode_example(row))
            for feature, values in row.items():
                row_cols[feature].append(values)
            for segment, m in enumerate(members, 1):
                _add_example(ex_cols, window[m], trimmed[m], clusters, row_index, segment)
                _count(stats, window[m], trimmed[m])
    stats["rows"] = len(records)
    write_array_record(storage.join(base, "train", f"{name}.array_record"), records)
    write_parquet(storage.join(base, "train", f"{name}.parquet"), _rows_table(row_cols, layout))
    write_parquet(storage.join(base, "examples", f"{name}.parquet"), pa.table(ex_cols, schema=EXAMPLES_SCHEMA))
    stats["datasets"], stats["templates"] = dict(stats["datasets"]), dict(stats["templates"])
    write_json(storage.join(base, STATS_DIR, f"{name}.json"), stats)
    return stats


EXAMPLES_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("cluster", pa.string()), ("example_key", pa.string()), ("variant", pa.int32()),
    ("template", pa.int32()), ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("input_tokens", pa.int32()), ("target_tokens", pa.int32()), ("input_truncated", pa.bool_()),
    ("target_truncated", pa.bool_()), ("row", pa.int32()), ("segment", pa.int32()),
])


def _add_example(cols: dict[str, list[Any]], item: Item, t: Trimmed, clusters: dict[str, str], row: int,
                 segment: int) -> None:
    _, dataset, key, variant, template, turned, inputs, targets, _, _ = item
    for name, value in (("dataset", dataset), ("cluster", clusters[dataset]), ("example_key", key),
                        ("variant", variant), ("template", template), ("turned", turned), ("inputs", inputs),
                        ("targets", targets), ("input_tokens", len(t.inputs)), ("target_tokens", len(t.targets)),
                        ("input_truncated", t.input_truncated), ("target_truncated", t.target_truncated),
                        ("row", row), ("segment", segment)):
        cols[name].append(value)


def _count(stats: dict[str, Any], item: Item, t: Trimmed) -> None:
    stats["examples"] += 1
    stats["tokens"] += len(t.inputs) + len(t.targets)
    stats["input_truncated"] += int(t.input_truncated)
    stats["target_truncated"] += int(t.target_truncated)
    stats["datasets"][item[1]] += 1
    stats["templates"][f"{item[1]}/{item[4]}"] += 1
    stats["turned"] += int(item[5])


def _rows_table(cols: dict[str, list[Any]], layout: RecordLayout) -> pa.Table:
    names = sorted(layout.features)
    return pa.table({n: pa.array([np.asarray(v, np.int32) for v in cols.get(n, [])], pa.list_(pa.int32()))
                     for n in names})


def write_eval(ctx: JobContext, split: str, job: DatasetJob) -> list[str]:
    """Copy the dataset's cached eval rows (validation, then test) to <split>/eval/<dataset>.parquet,
    and the few-shot ones to <split>/fewshot_eval/<dataset>.parquet when the pipeline has few-shot."""
    written: list[str] = []
    for folder, fewshot in (("eval", False), ("fewshot_eval", True)):
        table = eval_table(job, fewshot=fewshot)
        if table is not None:
            path = storage.join(ctx.out_dir, split, folder, f"{job.spec.name}.parquet")
            write_parquet(path, table)
            written.append(path)
    if ctx.prompt_tuning_sets and "train" in job.spec.source.splits:
        rows = train_variant(job, 0).select(["key", "template", "inputs", "targets"]).rename_columns(
            ["example_key", "template", "inputs", "targets"])
        path = storage.join(ctx.out_dir, split, "prompt_tuning", f"{job.spec.name}.parquet")
        write_parquet(path, rows)
        written.append(path)
    return written
