"""The compile as one Beam job: prepare datasets -> allocate -> mix -> group by shard -> pack + write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from flanpipe import cache, shards
from flanpipe.shards import JobContext


CACHE_MISS_NAMESPACE = "flanpipe.cache_miss"  # one counter per dataset rendered by this job


class Prepare(beam.DoFn):
    """Dataset name -> (name, meta); renders and tokenizes into the cache on a miss."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.hits = Metrics.counter("flanpipe", "cache_hits")
        self.misses = Metrics.counter("flanpipe", "cache_misses")

    def process(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        meta = cache.prepare(self.ctx.datasets[name])
        (self.hits if meta["cache"] == "hit" else self.misses).inc()
        if meta["cache"] == "miss":
            Metrics.counter(CACHE_MISS_NAMESPACE, name).inc()
        yield name, meta


class Mix(beam.DoFn):
    """(split, dataset, n) -> ((split, shard), item) for the n (example, variant) uses of the dataset."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.examples = Metrics.counter("flanpipe", "mixed_examples")

    def process(self, element: tuple[str, str, int], metas: dict[str, dict[str, Any]]
                ) -> Iterator[tuple[tuple[str, int], tuple[Any, ...]]]:
        split, dataset, n = element
        job = self.ctx.datasets[dataset]
        for shard, item in shards.mix_items(job, metas[dataset]["keys"], n, split=split, seed=self.ctx.seed,
                                            num_shards=self.ctx.shards, load=cache.train_variant):
            self.examples.inc()
            yield (split, shard), item


class PackAndWrite(beam.DoFn):
    """((split, shard), items) -> shard files written atomically, and the shard's statistics."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.rows = Metrics.counter("flanpipe", "packed_rows")

    def process(self, element: tuple[tuple[str, int], Any]) -> Iterator[dict[str, Any]]:
        (split, shard), items = element
        clusters = {name: job.spec.cluster for name, job in self.ctx.datasets.items()}
        stats = shards.write_shard(self.ctx, split, shard, [i for i in items if i is not None], clusters)
        self.rows.inc(stats["rows"])
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
    """Add the compile's transforms to ``p``."""
    metas = (p | "Datasets" >> beam.Create(sorted(ctx.datasets))
             | "Prepare" >> beam.ParDo(Prepare(ctx)))
    metas_dict = beam.pvalue.AsDict(metas)
    items = (p | "Splits" >> beam.Create([s for s in ctx.splits if s.train])
             | "Allocate" >> beam.FlatMap(lambda s, m: shards.allocate_split(s, m, ctx), m=metas_dict)
             | "Mix" >> beam.ParDo(Mix(ctx), metas=metas_dict))
    # Every shard exists even when no example lands in it: seed each key with a None.
    empty = p | "ShardKeys" >> beam.Create([((s.name, k), None) for s in ctx.splits for k in range(ctx.shards)])
    written = ((items, empty) | "Union" >> beam.Flatten()
               | "GroupByShard" >> beam.GroupByKey()
               | "PackAndWrite" >> beam.ParDo(PackAndWrite(ctx))
               | "ShardFiles" >> beam.Map(lambda stats: f"{stats['split']}/{stats['shard']}"))
    evals = (p | "EvalSets" >> beam.Create([(s.name, d) for s in ctx.splits for d in s.eval])
             | "WriteEval" >> beam.ParDo(WriteEval(ctx), metas=metas_dict))
    # One final transform downstream of every write: Beam 2.77's DaskRunner computes only the
    # graph's last transform (DaskRunner.run_pipeline), so a branch not feeding it never runs.
    _ = (written, evals) | "AllWritten" >> beam.Flatten() | "Done" >> beam.combiners.Count.Globally()
