"""Progress: counted from what the stages committed, the same way on every runner."""

from __future__ import annotations

import pytest

from flanpipe.progress import Watcher, snapshot

from compile_fixtures import compile_world, make_world, world_jobs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    make_world(root)
    return root


def test_snapshot_before_and_after_a_compile(world):
    _, _, ctx = world_jobs(world)
    before = snapshot(ctx)
    assert (before.datasets_done, before.chunks, before.shards_done) == (0, 0, 0)
    assert before.datasets == 3 and before.shards == 2 * 2 and before.evals == 2
    seen = []
    compile_world(world, "out", watch=seen.append)
    assert seen, "the watcher reports at least once (its last report comes after the job)"
    last = seen[-1]
    assert last.datasets_done == last.datasets == 3 and last.chunks_done == last.chunks > 0
    # after the job, before the manifests: every shard and eval set was committed
    assert (last.shards_done, last.evals_done) == (last.shards, last.evals)


def test_watcher_reports_in_the_background_and_once_more_at_the_end(world):
    _, _, ctx = world_jobs(world)
    seen = []
    with Watcher(ctx, seen.append, interval=0.01):
        import time

        time.sleep(0.1)
    assert len(seen) >= 2
