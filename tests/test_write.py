"""Write stage: windows read every dataset in order, rows hold exactly the gathered uses, repeats and aliases."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from flanpipe import read
from flanpipe.jobs import MixturePlan
from flanpipe.mixing import Mixture
from flanpipe.render import render_unit
from flanpipe.store import TableCache
from flanpipe.write import DatasetStats, RenderedRows, gather, write_shard

from compile_fixtures import make_world, world_jobs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A world with every dataset read and variants 0-2 rendered into its store."""
    root = tmp_path_factory.mktemp("write")
    make_world(root, train=30)
    _, jobs, ctx = world_jobs(root)
    stats = {}
    for name, job in jobs.items():
        read.read_split(job, "train")
        rendered = [render_unit(job, "train", 0, v) for v in range(3)]
        stats[name] = DatasetStats(rendered[0]["rows"], rendered[0]["tokens"])
    return root, jobs, ctx, stats


def test_rendered_rows_cross_variants_and_repeat_past_the_templates(prepared):
    _, jobs, ctx, _ = prepared
    rows = RenderedRows(jobs["senti"], TableCache(1 << 20))
    v1 = rows.take(1, 3, 9)
    assert v1.num_rows == 6 and v1.column("template").to_pylist() == \
        [(t + 1) % 10 for t in rows.take(0, 3, 9).column("template").to_pylist()]
    assert rows.take(11, 0, 4).equals(rows.take(1, 0, 4))  # 10 templates: variant 11 is variant 1 again


def test_a_window_gathers_each_use_once_with_its_variant(prepared):
    _, jobs, _, stats = prepared
    readers = {d: RenderedRows(jobs[d], TableCache(1 << 20)) for d in ("para", "senti")}
    kept = {d: stats[d].kept for d in readers}
    w = gather({"para": (25, 65), "senti": (0, 0)}, ["para", "senti"], kept, readers)
    assert len(w.dataset) == 40 and set(w.dataset.tolist()) == {0}
    assert w.use.tolist() == list(range(25, 65))
    assert w.variant.tolist() == [u // 30 for u in range(25, 65)]


def test_a_shard_holds_exactly_its_uses_and_aliases_get_the_same_files(prepared, tmp_path):
    _, jobs, ctx, stats = prepared
    ctx = dataclasses.replace(ctx, out_dir=str(tmp_path), window=25, shards=2)
    mix = Mixture({"para": 0.5, "senti": 0.5}, {"para": 70, "senti": 41})
    plan = MixturePlan("first", ("second",), ("para", "senti"))
    result = write_shard(ctx, plan, 1, mix, stats, TableCache(1 << 20))
    assert result["examples"] == (70 - 35) + (41 - 20) and result["datasets"] == {"para": 35, "senti": 21}
    examples = pq.read_table(tmp_path / "first" / "examples" / "00001-of-00002.parquet").to_pylist()
    assert len(examples) == result["examples"]
    assert sorted(e["variant"] for e in examples if e["dataset"] == "para") == sorted(u // 30 for u in range(35, 70))
    rows = pq.read_table(tmp_path / "first" / "train" / "00001-of-00002.parquet")
    assert rows.num_rows == result["rows"] == max(e["row"] for e in examples) + 1
    seg = np.asarray(rows.column("decoder_segment_ids").to_pylist())
    assert (seg.max(axis=1) == np.bincount([e["row"] for e in examples])).all()
    for rel, digest in result["files"].items():
        first, second = (tmp_path / s / rel for s in ("first", "second"))
        assert first.read_bytes() == second.read_bytes() and len(digest) == 64
    alias = json.loads((tmp_path / "second" / ".stats" / "00001-of-00002.json").read_text())
    assert alias["split"] == "second" and alias["computed_in"] == "first"
