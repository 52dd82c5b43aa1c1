"""Per-split work on a worker: a shard's mixture uses, packed and streamed to its files; eval sets."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from flanpipe import storage
from flanpipe.cache import DatasetJob, eval_table, train_variant
from flanpipe.hashing import stable_hash
from flanpipe.mixing import allocate, mixing_rates, shard_range, uses
from flanpipe.packing import Trimmed, pack, trim
from flanpipe.plan import SplitPlan
from flanpipe.records import encode_example
from flanpipe.schema import RecordLayout
from flanpipe.writers import ArrayRecordSink, ParquetSink, write_json, write_parquet

STATS_DIR = ".stats"
# One use of one example in a mixture: (shuffle key, dataset, example row, variant).
Use = tuple[int, str, int, int]


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


def allocate_split(split: SplitPlan, metas: dict[str, dict[str, Any]], ctx: JobContext) -> dict[str, int]:
    """Examples per training dataset of the split, from the prepared (filtered, capped) counts."""
    counts = {d: metas[d]["counts"]["kept"] for d in split.train}
    rates = mixing_rates(counts, ctx.maximum_rate)
    total = ctx.mixture_examples
    if total is None:  # steps x batch tokens: as many examples as the expected tokens fill
        mean = sum(rates[d] * metas[d]["mean_tokens"] for d in rates)
        total = max(1, round(ctx.mixture_tokens / mean))  # type: ignore[operator]
    return {d: n for d, n in allocate(rates, total).items() if n}


def shard_uses(split: SplitPlan, shard: int, metas: dict[str, dict[str, Any]], ctx: JobContext) -> list[Use]:
    """The uses a shard holds — a contiguous block of every dataset's uses — in shuffled order.

    Only small integers and keys are kept per use; the texts and tokens are read per window.
    """
    out: list[Use] = []
    for dataset, n in sorted(allocate_split(split, metas, ctx).items()):
        start, stop = shard_range(n, shard, ctx.shards)
        keys = metas[dataset]["keys"]
        for j, (row, variant) in zip(range(start, stop), uses(metas[dataset]["order"], start, stop)):
            out.append((stable_hash(ctx.seed, "shuffle", split.name, dataset, keys[row], j), dataset, row, variant))
    out.sort()
    return out


def write_shard(ctx: JobContext, split: SplitPlan, shard: int, metas: dict[str, dict[str, Any]],
                load: Callable[[DatasetJob, int], dict[str, list[Any]]]) -> dict[str, Any]:
    """Pack the shard's uses window by window, streaming its three files; return its stats.

    Memory holds one window of examples (plus the per-use integers), whatever the mixture size.
    """
    layout, base, name = ctx.layout, storage.join(ctx.out_dir, split.name), shard_name(shard, ctx.shards)
    records = ArrayRecordSink(storage.join(base, "train", f"{name}.array_record"))
    rows_out = ParquetSink(storage.join(base, "train", f"{name}.parquet"), rows_schema(layout))
    examples_out = ParquetSink(storage.join(base, "examples", f"{name}.parquet"), EXAMPLES_SCHEMA)
    stats: dict[str, Any] = {"split": split.name, "shard": shard, "rows": 0, "examples": 0, "tokens": 0,
                             "input_truncated": 0, "target_truncated": 0,
                             "datasets": Counter(), "templates": Counter(), "turned": 0}
    all_uses = shard_uses(split, shard, metas, ctx)
    for start in range(0, len(all_uses), ctx.window):
        window = [_example(ctx, u, load) for u in all_uses[start:start + ctx.window]]
        trimmed = [trim(e.input_ids, e.target_ids, layout, side=ctx.truncate) for e in window]  # type: ignore[arg-type]
        row_cols: dict[str, list[Any]] = defaultdict(list)
        ex_cols: dict[str, list[Any]] = defaultdict(list)
        for members, row in pack(trimmed, layout, algorithm=ctx.algorithm, enabled=ctx.packing):  # type: ignore[arg-type]
            row_index = records.count
            records.write(encode_example(row))
            for feature, values in row.items():
                row_cols[feature].append(values)
            for segment, m in enumerate(members, 1):
                _add_example(ex_cols, window[m], trimmed[m], row_index, segment)
                _count(stats, window[m], trimmed[m])
        rows_out.write(_rows_table(row_cols, layout))
        examples_out.write(pa.table(ex_cols, schema=EXAMPLES_SCHEMA))
    stats["rows"] = records.commit()
    rows_out.commit()
    examples_out.commit()
    stats["datasets"], stats["templates"] = dict(stats["datasets"]), dict(stats["templates"])
    write_json(storage.join(base, STATS_DIR, f"{name}.json"), stats)
    return stats


@dataclass(frozen=True)
class _Example:
    dataset: str
    cluster: str
    key: str
    variant: int
    template: int
    turned: bool
    inputs: str
    targets: str
    input_ids: list[int]
    target_ids: list[int]


def _example(ctx: JobContext, use: Use, load: Callable[[DatasetJob, int], dict[str, list[Any]]]) -> _Example:
    _, dataset, row, variant = use
    job = ctx.datasets[dataset]
    t = load(job, variant)
    return _Example(dataset, job.spec.cluster, t["key"][row], variant, t["template"][row], t["turned"][row],
                    t["inputs"][row], t["targets"][row], t["input_ids"][row], t["target_ids"][row])


EXAMPLES_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("cluster", pa.string()), ("example_key", pa.string()), ("variant", pa.int32()),
    ("template", pa.int32()), ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("input_tokens", pa.int32()), ("target_tokens", pa.int32()), ("input_truncated", pa.bool_()),
    ("target_truncated", pa.bool_()), ("row", pa.int32()), ("segment", pa.int32()),
])


def _add_example(cols: dict[str, list[Any]], e: _Example, t: Trimmed, row: int, segment: int) -> None:
    for name, value in (("dataset", e.dataset), ("cluster", e.cluster), ("example_key", e.key),
                        ("variant", e.variant), ("template", e.template), ("turned", e.turned), ("inputs", e.inputs),
                        ("targets", e.targets), ("input_tokens", len(t.inputs)), ("target_tokens", len(t.targets)),
                        ("input_truncated", t.input_truncated), ("target_truncated", t.target_truncated),
                        ("row", row), ("segment", segment)):
        cols[name].append(value)


def _count(stats: dict[str, Any], e: _Example, t: Trimmed) -> None:
    stats["examples"] += 1
    stats["tokens"] += len(t.inputs) + len(t.targets)
    stats["input_truncated"] += int(t.input_truncated)
    stats["target_truncated"] += int(t.target_truncated)
    stats["datasets"][e.dataset] += 1
    stats["templates"][f"{e.dataset}/{e.template}"] += 1
    stats["turned"] += int(e.turned)


def rows_schema(layout: RecordLayout) -> pa.Schema:
    """Parquet schema of packed rows: one list<int32> column per feature, in name order."""
    return pa.schema([(n, pa.list_(pa.int32())) for n in sorted(layout.features)])


def _rows_table(cols: dict[str, list[Any]], layout: RecordLayout) -> pa.Table:
    return pa.table({n: pa.array([np.asarray(v, np.int32) for v in cols.get(n, [])], pa.list_(pa.int32()))
                     for n in sorted(layout.features)}, schema=rows_schema(layout))


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
