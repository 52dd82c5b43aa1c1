"""The compile as one Beam job: read -> render (variant 0, eval) -> mix -> render (repeats) -> pack + write, eval sets.

Only small descriptions of work and statistics travel through Beam; every table goes
through the store, so no example data passes through a shuffle and each worker's memory is
bounded by one chunk or one packing window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from flanpipe import storage
from flanpipe.beam.failures import reported
from flanpipe.errors import CompileError
from flanpipe.files import read_json, write_json
from flanpipe.jobs import JobContext
from flanpipe.mixing import (
    Mixture,
    plan_mixture,
    sized_mixture,
    submixture_rates,
    variants_needed,
)
from flanpipe.read import CHUNK_ROWS, read_split
from flanpipe.render import render_unit
from flanpipe.store import TableCache
from flanpipe.write import DatasetStats, write_eval, write_shard

MIXTURES_FILE = ".mixtures.json"  # written into the output by the job, read by the compiler for the manifests
Unit = tuple[str, str, int, int]  # (dataset, split, chunk, variant)


class Read(beam.DoFn):
    """(dataset, split) -> its chunks in the store, once; yields the render units of variant 0 / the eval rows."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.examples = Metrics.counter("flanpipe", "examples_read")

    def process(self, element: tuple[str, str]) -> Iterator[Unit]:
        dataset, split = element
        job = self.ctx.datasets[dataset]
        done = job.entry.read_meta(split)
        with reported(self.ctx.out_dir, "Read"):
            meta = read_json(done) if storage.exists(done) else read_split(job, split)
        self.examples.inc(meta["counts"]["read"])
        for chunk in range(meta["chunks"]):
            yield dataset, split, chunk, 0


class Render(beam.DoFn):
    """(dataset, split, chunk, variant) -> the rendered (or eval) chunk in the store, once; yields its statistics."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.rows = Metrics.counter("flanpipe", "rows_rendered")

    def process(self, unit: Unit) -> Iterator[dict[str, Any]]:
        dataset, split, chunk, variant = unit
        with reported(self.ctx.out_dir, "Render"):
            stats = render_unit(self.ctx.datasets[dataset], split, chunk, variant)
        self.rows.inc(stats["rows"])
        yield stats


def _dataset_stats(item: tuple[str, Iterable[dict[str, Any]]]) -> tuple[str, DatasetStats]:
    dataset, chunks = item
    chunks = list(chunks)
    return dataset, DatasetStats(sum(c["rows"] for c in chunks), sum(c["tokens"] for c in chunks))


def mixtures(ctx: JobContext, stats: dict[str, DatasetStats]) -> dict[str, Mixture]:
    """Every distinct train mixture of the compile, from the prepared counts (computed once, here)."""
    out = {}
    for m in ctx.mixtures:
        kept = {d: stats[d].kept for d in m.train if d in stats and stats[d].kept}
        if not kept:
            raise CompileError(f"split {m.name!r}: none of its train datasets ({', '.join(m.train)}) kept any "
                               f"example (all filtered, skipped or empty)")
        mean_tokens = {d: stats[d].mean_tokens for d in kept}
        if m.groups:  # mixture_of: each sub-mixture's share, examples-proportional within it
            rates, _ = submixture_rates([(weight, rate, {d: kept[d] for d in train if d in kept})
                                         for _, weight, rate, train in m.groups])
            out[m.name] = sized_mixture(rates, mean_tokens, examples=ctx.mixture_examples, tokens=ctx.mixture_tokens)
        else:
            out[m.name] = plan_mixture(kept, mean_tokens, maximum_rate=ctx.maximum_rate,
                                       examples=ctx.mixture_examples, tokens=ctx.mixture_tokens)
    return out


class Allocate(beam.DoFn):
    """The mixtures, computed once from the prepared statistics, and written for the compiler's manifests."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def process(self, _: Any, stats: dict[str, DatasetStats]) -> Iterator[dict[str, Mixture]]:
        with reported(self.ctx.out_dir, "Mix"):
            result = mixtures(self.ctx, stats)
        write_json(storage.join(self.ctx.out_dir, MIXTURES_FILE),
                   {name: {"rates": m.rates, "uses": m.uses} for name, m in result.items()})
        yield result


def repeat_units(mixes: dict[str, Mixture], stats: dict[str, DatasetStats], ctx: JobContext) -> Iterator[Unit]:
    """Render units of the variants past 0 that some mixture repeats a dataset into (each at most once)."""
    needed: dict[str, int] = {}
    for mix in mixes.values():
        for d, uses in mix.uses.items():
            needed[d] = max(needed.get(d, 0), variants_needed(uses, stats[d].kept))
    for d, count in sorted(needed.items()):
        chunks = -(-stats[d].kept // CHUNK_ROWS)
        for variant in range(1, min(count, ctx.datasets[d].variants_available)):
            for chunk in range(chunks):
                yield d, "train", chunk, variant


class PackAndWrite(beam.DoFn):
    """(mixture, shard) -> the shard's files in its split and their copies in the splits sharing its mixture."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.rows = Metrics.counter("flanpipe", "packed_rows")

    def setup(self) -> None:
        self.cache = TableCache(self.ctx.table_cache_bytes)

    def process(self, element: tuple[str, int], mixes: dict[str, Mixture], stats: dict[str, DatasetStats],
                repeats: list[dict[str, Any]]) -> Iterator[str]:
        del repeats  # a side input only so that every repeated variant is rendered first
        name, shard = element
        with reported(self.ctx.out_dir, "PackAndWrite"):
            result = write_shard(self.ctx, self.ctx.mixture(name), shard, mixes[name], stats, self.cache)
        self.rows.inc(result["rows"])
        yield f"{name}/{shard}"

    def teardown(self) -> None:
        self.cache.close()


class WriteEval(beam.DoFn):
    """(split, dataset) -> eval/<dataset>.parquet of that split (and its prompt-tuning set), once its chunks are
    rendered."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def process(self, element: tuple[str, str], rendered: list[dict[str, Any]]) -> Iterator[str]:
        split, dataset = element
        chunks: dict[str, int] = {}
        for s in rendered:
            if s["dataset"] == dataset:
                chunks[s["split"]] = max(chunks.get(s["split"], 0), s["chunk"] + 1)
        with reported(self.ctx.out_dir, "WriteEval"):
            write_eval(self.ctx, split, self.ctx.datasets[dataset], chunks)
        yield f"{split}/eval/{dataset}"


def _is_train(stats: dict[str, Any]) -> bool:
    return stats["split"] == "train"


def build(p: beam.Pipeline, ctx: JobContext) -> None:
    """Add the compile's transforms to ``p``."""
    reads = [(d, s) for d, job in sorted(ctx.datasets.items()) for s in job.splits]
    first = (p | "Sources" >> beam.Create(reads) | "ShuffleReads" >> beam.Reshuffle()
             | "Read" >> beam.ParDo(Read(ctx)) | "ShuffleChunks" >> beam.Reshuffle()
             | "Render" >> beam.ParDo(Render(ctx)))
    train = first | "TrainChunks" >> beam.Filter(_is_train)
    stats = (train | "ByDataset" >> beam.Map(lambda s: (s["dataset"], s)) | "GroupChunks" >> beam.GroupByKey()
             | "DatasetStats" >> beam.Map(_dataset_stats))
    stats_dict = beam.pvalue.AsDict(stats)
    mixes = p | "Once" >> beam.Create([None]) | "Mix" >> beam.ParDo(Allocate(ctx), stats=stats_dict)
    mixes_one = beam.pvalue.AsSingleton(mixes)
    repeats = (mixes | "RepeatUnits" >> beam.FlatMap(repeat_units, stats=stats_dict, ctx=ctx)
               | "ShuffleRepeats" >> beam.Reshuffle() | "RenderRepeats" >> beam.ParDo(Render(ctx)))
    shards = [(m.name, k) for m in ctx.mixtures for k in range(ctx.shards)]
    written = (p | "Shards" >> beam.Create(shards) | "ShuffleShards" >> beam.Reshuffle()
               | "PackAndWrite" >> beam.ParDo(PackAndWrite(ctx), mixes=mixes_one, stats=stats_dict,
                                              repeats=beam.pvalue.AsList(repeats)))
    eval_sets = (p | "EvalSets" >> beam.Create([(s.name, d) for s in ctx.splits for d in s.eval])
                 | "WriteEval" >> beam.ParDo(WriteEval(ctx), rendered=beam.pvalue.AsList(first)))
    # One final transform downstream of every write: Beam 2.77's DaskRunner computes only the
    # graph's last transform (DaskRunner.run_pipeline), so a branch not feeding it never runs.
    _ = (written, eval_sets) | "AllWritten" >> beam.Flatten() | "Done" >> beam.combiners.Count.Globally()
