"""The job graph's own logic: per-dataset statistics, the mixtures computed once, which repeats get rendered,
and the stages in the order data flows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flanpipe.beam.job import _dataset_stats, mixtures, repeat_units
from flanpipe.beam.runner import describe_job
from flanpipe.errors import CompileError
from flanpipe.mixing import Mixture
from flanpipe.read import CHUNK_ROWS
from flanpipe.write import DatasetStats

from compile_fixtures import make_world, world_jobs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    make_world(root)
    return root


def test_dataset_stats_sum_the_chunks_of_a_dataset():
    name, stats = _dataset_stats(("rte", iter([{"rows": 2048, "tokens": 10_000}, {"rows": 5, "tokens": 25}])))
    assert name == "rte" and stats == DatasetStats(2053, 10_025)


def test_mixtures_are_planned_once_per_distinct_train_set_from_the_prepared_counts(world):
    _, _, ctx = world_jobs(world)
    stats = {"rte": DatasetStats(40, 2_000), "para": DatasetStats(0, 0), "senti": DatasetStats(40, 1_000)}
    result = mixtures(ctx, stats)
    assert set(result) == {m.name for m in ctx.mixtures}
    for m in ctx.mixtures:
        mix = result[m.name]
        assert set(mix.uses) == {d for d in m.train if stats[d].kept}  # a dataset with nothing kept is left out
        assert mix.examples == ctx.mixture_examples
    with pytest.raises(CompileError, match="split 'natural_language_inference': none of its train datasets"):
        mixtures(ctx, {**stats, "senti": DatasetStats(0, 0)})


def test_repeat_units_render_each_needed_variant_past_0_once(world):
    _, jobs, ctx = world_jobs(world)
    stats = {"rte": DatasetStats(3 * CHUNK_ROWS + 1, 1), "para": DatasetStats(10, 1), "senti": DatasetStats(10, 1)}
    mixes = {"a": Mixture({}, {"rte": 2 * stats["rte"].kept, "para": 25}),  # rte: 2 passes; para: 3
             "b": Mixture({}, {"rte": 5, "para": 120, "senti": 10})}  # para: 12 passes, capped at 10 templates
    units = list(repeat_units(mixes, stats, ctx))
    assert len(units) == len(set(units))
    assert sorted(u for u in units if u[0] == "rte") == [("rte", "train", c, 1) for c in range(4)]
    assert sorted(u[3] for u in units if u[0] == "para") == list(range(1, 10))
    assert not [u for u in units if u[0] == "senti"]  # one pass: variant 0 only, rendered before the mix
    single = replace(ctx, datasets={n: replace(j, settings=replace(j.settings, instructions="none"))
                                    for n, j in jobs.items()})
    assert list(repeat_units(mixes, stats, single)) == []  # template-free modes have one variant


def test_stages_follow_the_data(world):
    from flanpipe.beam.job import build

    _, _, ctx = world_jobs(world)
    stages = describe_job(lambda p: build(p, ctx), "direct")
    order = [s for s in ("Read", "Render", "Mix", "RenderRepeats", "PackAndWrite", "WriteEval", "Done")
             if s in stages]
    assert order == ["Read", "Render", "Mix", "RenderRepeats", "PackAndWrite", "WriteEval", "Done"]
    assert [s for s in stages if s in order] == order
