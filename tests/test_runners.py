"""Same bytes on every runner and file system: local Dask cluster, fsspec memory://, Dataflow dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flanpipe.compiler import CompileOptions, describe_compile, run_compile
from flanpipe.verify import verify_output

from compile_fixtures import compile_world, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runners")
    make_world(root)
    compile_world(root, "local")
    return root


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / "manifest.json").read_text())["files"]


def test_dask_local_cluster_gives_the_same_bytes(world):
    compile_world(world, "dask", cache_dir=str(world / "dcache"), runner="dask", workers=2)
    assert _files(world / "dask") == _files(world / "local")
    assert verify_output(str(world / "dask")) == []


def test_memory_filesystem_gives_the_same_bytes(world):
    result = run_compile(world / "pipeline.yaml", CompileOptions(out="memory://flanpipe-test/out",
                                                                 cache_dir="memory://flanpipe-test/cache",
                                                                 templates=world / "templates"))
    assert result.manifest["files"] == _files(world / "local")
    assert verify_output("memory://flanpipe-test/out") == []
    assert not (Path.cwd() / "memory:").exists()


def test_dataflow_job_graph_builds_without_submitting(world):
    stages = describe_compile(world / "pipeline.yaml", CompileOptions(
        out="gs://example-bucket/flan", runner="dataflow", templates=world / "templates",
        cache_dir=str(world / "cache"),
        beam_args=("--project=example-project-1", "--region=us-central1", "--temp_location=gs://example-bucket/t")))
    assert stages[:3] == ["Sources", "ShuffleReads", "Read"] and stages[-1] == "Done"
    assert {"Render", "Mix", "RenderRepeats", "Shards", "PackAndWrite", "WriteEval"} <= set(stages)
    # the stages follow the data: read, render, mix, render the repeats, pack + write
    order = [stages.index(s) for s in ("Read", "Render", "Mix", "RenderRepeats", "PackAndWrite")]
    assert order == sorted(order)
