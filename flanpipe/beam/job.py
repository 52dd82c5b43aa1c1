"""The compile as one Beam job: prepare datasets -> allocate -> mix -> group by shard -> pack + write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from flanpipe import cache, shards
from flanpipe.shards import JobContext


class Prepare(beam.DoFn):
    """Dataset name -> (name, meta); renders and tokenizes into the cache on a miss."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.hits = Metrics.counter("flanpipe", "cache_hits")
        self.misses = Metrics.counter("flanpipe", "cache_misses")

    def process(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        meta = cache.prepare(self.ctx.datasets[name])
        (self.hits if meta["cache"] == "hit" else self.misses).inc()
        yield name, meta


class PackAndWrite(beam.DoFn):
    """(split, shard) -> the shard's files, streamed window by window; yields the shard's statistics."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.rows = Metrics.counter("flanpipe", "packed_rows")
        self.examples = Metrics.counter("flanpipe", "mixed_examples")

    def process(self, element: tuple[str, int], metas: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
        split_name, shard = element
        split = next(s for s in self.ctx.splits if s.name == split_name)
        stats = shards.write_shard(self.ctx, split, shard, metas, cache.train_rows)
        self.rows.inc(stats["rows"])
        self.examples.inc(stats["examples"])
        yield stats


class WriteEval(beam.DoFn):
    """(split, dataset) -> eval/<dataset>.parquet of that split (after the dataset is prepared)."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def process(self, element: tuple[str, str], metas: dict[str, dict[str, Any]]) -> Iterator[str]:
        split, dataset = element
        assert dataset in metas  # the side input orders this after Prepare
        yield from shards.write_eval(self.ctx, split, self.ctx.datasets[dataset])


def build(p: beam.Pipeline, ctx: JobContext) -> None:
    """Add the compile's transforms to ``p``.

    No example data goes through a shuffle: every shard computes its own block of each
    dataset's uses and reads the rendered examples from the shared cache, so a worker's
    memory is bounded by one packing window whatever the mixture size.
    """
    metas = (p | "Datasets" >> beam.Create(sorted(ctx.datasets))
             | "Prepare" >> beam.ParDo(Prepare(ctx)))
    metas_dict = beam.pvalue.AsDict(metas)
    written = (p | "Shards" >> beam.Create([(s.name, k) for s in ctx.splits for k in range(ctx.shards)])
               | "Reshuffle" >> beam.Reshuffle()
               | "PackAndWrite" >> beam.ParDo(PackAndWrite(ctx), metas=metas_dict)
               | "ShardFiles" >> beam.Map(lambda stats: f"{stats['split']}/{stats['shard']}"))
    evals = (p | "EvalSets" >> beam.Create([(s.name, d) for s in ctx.splits for d in s.eval])
             | "WriteEval" >> beam.ParDo(WriteEval(ctx), metas=metas_dict))
    # One final transform downstream of every write: Beam 2.77's DaskRunner computes only the
    # graph's last transform (DaskRunner.run_pipeline), so a branch not feeding it never runs.
    _ = (written, evals) | "AllWritten" >> beam.Flatten() | "Done" >> beam.combiners.Count.Globally()
