"""Errors raised inside the job reach the user in one line (plus the worker log's path) on every runner."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from flanpipe.beam import failures
from flanpipe.errors import JobError, SourceError, SpecError, TemplateError

from compile_fixtures import make_world

FLANPIPE = [sys.executable, "-m", "flanpipe.cli"]
RUNNERS = {"in_process": [], "multi_processing": ["--workers", "2"], "dask": ["--runner", "dask", "--workers", "2"]}


def _break(root: Path, kind: str) -> str:
    """Break the world one way; returns what the one error line must say after 'error: '."""
    if kind == "bad_example":
        path = root / "samples" / "rte" / "test.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[6]["label"] = -1
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = root / "templates" / "natural_language_inference" / "rte.yaml"
        line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if text.startswith("answer:"))
        return f"{spec}:{line}: answer: example 'test:6': evaluated to -1, expected an option index in 0..1"
    if kind == "undefined_at_render":
        spec = root / "templates" / "sentiment" / "senti.yaml"
        spec.write_text(spec.read_text().replace('"Variant 3: summarise {{ text }}"',
                                                 '"Variant 3: summarise {{ text.headline }}"'))
        line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "text.headline" in text)
        return f"{spec}:{line}: templates[3].input: example '"  # train or eval: whichever a worker met first
    if kind == "source_error":
        path = root / "samples" / "para" / "train.jsonl"
        lines = path.read_text().splitlines()
        lines[4] = '{"text": "unfinished'
        path.write_text("\n".join(lines) + "\n")
        return f"{path}:5: not valid JSON"
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    out = {}
    for kind in ("bad_example", "undefined_at_render", "source_error"):
        root = tmp_path_factory.mktemp(kind)
        make_world(root)
        out[kind] = (root, _break(root, kind))
    return out


def _compile(root: Path, out: str, extra: list[str], *debug: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([*FLANPIPE, *debug, "compile", str(root / "pipeline.yaml"), "--out", str(root / out),
                           "--templates", str(root / "templates"), "--cache-dir", str(root / f"cache-{out}"),
                           *extra], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("kind", ["bad_example", "undefined_at_render", "source_error"])
def test_worker_error_is_one_line_on_every_runner(worlds, kind, runner):
    root, expected = worlds[kind]
    result = _compile(root, f"out-{runner}", RUNNERS[runner])
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 3, result.stderr[-3000:]  # what the compile started, the error, the worker log
    assert lines[0].startswith("running the Beam job (")
    lines = lines[1:]
    assert lines[0].startswith(f"error: {expected}"), lines[0]
    if kind == "undefined_at_render":
        assert "undefined value" in lines[0] and "headline" in lines[0]
    assert lines[1].startswith("worker log: ") and Path(lines[1].split(": ", 1)[1]).exists()
    assert "Traceback" not in result.stderr and result.stdout == ""
    out = root / f"out-{runner}"
    assert not (out / "manifest.json").exists() and not (out / failures.ERRORS_DIR).exists()


def test_debug_shows_the_traceback(worlds):
    root, expected = worlds["bad_example"]
    result = _compile(root, "out-debug", [], "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and expected.split(": example")[0] in result.stderr


# ---------------------------------------------------------------------------- the record itself
def test_errors_keep_their_type_through_pickling_and_beams_reraise():
    error = TemplateError("rte.yaml", 3, "answer", "evaluated to -1", example="test:6")
    assert str(error) == "rte.yaml:3: answer: example 'test:6': evaluated to -1"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is TemplateError and str(again) == str(error)
    augmented = type(error)(error.args[0] + " [while running 'Render']", *error.args[1:])  # what Beam does
    assert type(augmented) is TemplateError
    assert str(SpecError("p.yaml", None, "seed", "bad").for_example("k")) == "p.yaml: seed: example 'k': bad"


def test_first_recorded_error_is_rebuilt_and_others_become_job_errors(tmp_path):
    out = str(tmp_path)
    assert failures.first(out) is None
    with pytest.raises(SourceError):
        with failures.reported(out, "Read"):
            raise SourceError("data/x.jsonl:5: not valid JSON")
    with pytest.raises(ZeroDivisionError):
        with failures.reported(out, "Render"):
            raise ZeroDivisionError("division by zero")
    first = failures.first(out)
    assert type(first) is SourceError and str(first) == "data/x.jsonl:5: not valid JSON"
    failures.clear(out)
    with pytest.raises(KeyError):
        with failures.reported(out, "Mix"):
            raise KeyError("rte")
    internal = failures.first(out)
    assert type(internal) is JobError and "stage 'Mix' failed: KeyError: 'rte'" in str(internal)
    failures.clear(out)
    assert not (tmp_path / failures.ERRORS_DIR).exists()


def test_a_job_failure_without_a_record_gives_its_last_line(tmp_path):
    error = failures.job_failure(str(tmp_path), RuntimeError("Traceback (most recent call last):\n  ...\n"
                                                             "OSError: [Errno 28] No space left on device"))
    assert type(error) is JobError
    assert str(error).startswith("the Beam job failed: OSError: [Errno 28] No space left on device")
