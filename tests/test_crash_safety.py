"""SIGKILL of a compile (driver and workers) at deterministic points never leaves an output that verify accepts,
and a rerun on the same cache writes exactly the bytes of a clean run; two compiles may share one cache at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flanpipe.storage import KILL_AFTER
from flanpipe.verify import verify_output

from compile_fixtures import compile_world, make_world

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    make_world(root)
    compile_world(root, "clean", cache_dir=str(root / "clean-cache"))
    return root


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / "manifest.json").read_text())["files"]


def _start(root: Path, out: str, cache: str, extra: list[str], kill_after: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_AFTER, None)
    if kill_after:
        env[KILL_AFTER] = kill_after
    return subprocess.Popen(
        [sys.executable, "-m", "flanpipe.cli", "compile", str(root / "pipeline.yaml"), "--out", str(root / out),
         "--templates", str(root / "templates"), "--cache-dir", str(root / cache), "--quiet", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: the hook kills the driver and every worker, nothing else


def _gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


WORKERS = ["--workers", "2"]
DASK = ["--runner", "dask", "--workers", "2"]


@pytest.mark.parametrize("runner, point", [
    (WORKERS, "/fields-00000.arrow"),  # read: the first stored chunk
    (WORKERS, "/v0-00000.json"),  # render: the first finished chunk
    (WORKERS, "train/00001-of-00002.array_record"),  # pack and write: a shard's records
    (WORKERS, "/eval/rte.parquet"),  # an eval set
    (WORKERS, "sentiment/manifest.json"),  # the driver, writing the split manifests before the top one
    (DASK, "/v0-00000.json"),
    (DASK, "train/00001-of-00002.array_record"),
], ids=["read", "render", "shard", "eval", "manifests", "dask-render", "dask-shard"])
def test_sigkill_leaves_no_verified_output_and_a_rerun_gives_the_clean_bytes(world, tmp_path, runner, point):
    name = f"killed-{abs(hash((tuple(runner), point))) % 10**8}"
    proc = _start(world, name, f"{name}-cache", runner, kill_after=point)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point!r}: {stderr[-2000:]}"
    assert _gone(proc.pid), "a worker outlived the kill"
    problems = verify_output(str(world / name))
    assert problems, "verify accepted the output of a killed compile"
    rerun = _start(world, name, f"{name}-cache", runner)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    assert _files(world / name) == _files(world / "clean")
    assert verify_output(str(world / name)) == []


def test_two_compiles_sharing_one_cache_at_once_both_succeed_with_the_same_bytes(world):
    first = _start(world, "shared-a", "shared-cache", [])
    second = _start(world, "shared-b", "shared-cache", WORKERS)
    for proc in (first, second):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    assert _files(world / "shared-a") == _files(world / "shared-b") == _files(world / "clean")
    assert verify_output(str(world / "shared-a")) == [] and verify_output(str(world / "shared-b")) == []
