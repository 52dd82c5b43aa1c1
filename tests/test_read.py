"""Read stage: filter, stable-hash cap, mix order, chunks of stable size, the stored features reproduce the fields."""

from __future__ import annotations

import json
import random

import pytest

from flanpipe import read
from flanpipe.read import CHUNK_ROWS, chunk_tables, select_train

from compile_fixtures import make_world, world_jobs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("read")
    make_world(root, train=120)
    return root


def _examples(n: int) -> list[tuple[str, dict]]:
    return [(f"train:{i}", {"text": f"text {i}", "summary": f"summary {i}"}) for i in range(n)]


def test_the_cap_keeps_the_same_examples_whatever_the_source_order(world):
    _, jobs, _ = world_jobs(world)
    compiled = jobs["senti"].compiled
    rows, counts = select_train(compiled, _examples(500), seed=3, cap=50)
    shuffled = _examples(500)
    random.Random(0).shuffle(shuffled)
    again, _ = select_train(compiled, shuffled, seed=3, cap=50)
    assert {r[1] for r in rows} == {r[1] for r in again} and len(rows) == 50
    assert [r[1] for r in rows] == [r[1] for r in again]  # the mix order does not depend on arrival either
    assert counts.as_dict() == {"read": 500, "filtered": 0, "capped": 450, "kept": 50, "bad": 0}
    other, _ = select_train(compiled, _examples(500), seed=4, cap=50)
    assert {r[1] for r in other} != {r[1] for r in rows}


def test_pruning_while_reading_equals_capping_at_the_end(world):
    _, jobs, _ = world_jobs(world)
    compiled = jobs["senti"].compiled
    # 2 * cap candidates trigger a prune many times over 1,000 examples; the result is the plain top-cap
    small, _ = select_train(compiled, _examples(1000), seed=1, cap=7)
    big, _ = select_train(compiled, _examples(1000), seed=1, cap=1000)
    ranked = sorted(big, key=lambda r: (int(read.mix64(r[2], read.CAP)), r[0]))[:7]
    assert {r[1] for r in small} == {r[1] for r in ranked}


def test_chunks_have_a_stable_size_and_consecutive_rows():
    rows = [(i, f"k{i}", i, "{}") for i in range(2 * CHUNK_ROWS + 5)]
    tables = list(chunk_tables(rows))
    assert [t.num_rows for t in tables] == [CHUNK_ROWS, CHUNK_ROWS, 5]
    assert [t.column("row")[0].as_py() for t in tables] == [0, CHUNK_ROWS, 2 * CHUNK_ROWS]
    assert list(chunk_tables([])) == []


def test_read_split_stores_chunks_whose_features_give_the_fields_back(world):
    _, jobs, _ = world_jobs(world, cache="cache-read")
    job = jobs["rte"]
    meta = read.read_split(job, "train")
    assert meta["counts"]["kept"] == meta["rows"] == 120 and meta["chunks"] == 1 and meta["seconds"] >= 0
    assert json.loads((world / "cache-read" / "rte" / job.key / "train" / "read.json").read_text()) == meta
    chunk = read.load_chunk(job, "train", 0)
    by_key = {f"train:{json.loads(line)['idx']}": json.loads(line)
              for line in (world / "samples" / "rte" / "train.jsonl").read_text().splitlines()}
    for key, values in zip(chunk.column("key").to_pylist(), read.fields_of(job.compiled, chunk)):
        assert values == job.compiled.fields_of(by_key[key])
    evals = read.read_split(job, "test")
    assert evals["rows"] == 10 and read.load_chunk(job, "test", 0).column("index").to_pylist() == list(range(10))


def _break_rte(root, split: str, row: int, change: dict) -> None:
    path = root / "samples" / "rte" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[row].update(change)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_skipped_bad_examples_are_counted_per_dataset_and_reason(tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from compile_fixtures import compile_world
    from flanpipe.cli import app

    make_world(tmp_path, pipeline_extra="bad_examples: skip\n")
    _break_rte(tmp_path, "test", 6, {"label": -1})
    _break_rte(tmp_path, "train", 3, {"label": 7})
    path = tmp_path / "samples" / "rte" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[5] = json.dumps({"hypothesis": "no premise here", "label": 0, "idx": 5})
    path.write_text("\n".join(lines) + "\n")

    result = compile_world(tmp_path)
    rte = result.manifest["datasets"]["rte"]
    assert rte["read"]["train"]["bad"] == 2 and rte["read"]["train"]["kept"] == 38
    assert rte["read"]["test"]["bad"] == 1 and rte["read"]["test"]["kept"] == 9
    assert rte["bad_examples"]["train"]["reasons"] == {"answer": 1, "fields.premise": 1}
    assert [k for k, _ in rte["bad_examples"]["train"]["first"]] == ["train:3", "train:5"]
    assert "expected an option index in 0..1" in rte["bad_examples"]["test"]["first"][0][1]
    assert result.manifest["datasets"]["senti"]["bad_examples"] == {}
    evals = pq.read_table(tmp_path / "out" / "natural_language_inference" / "eval" / "rte.parquet")
    keys = set(evals.column("example_key").to_pylist())
    assert "test:6" not in keys and "test:5" in keys
    used = set()
    for part in (tmp_path / "out").glob("*/examples/*.parquet"):
        table = pq.read_table(part).to_pydict()
        used |= {k for d, k in zip(table["dataset"], table["example_key"]) if d == "rte"}
    assert used and not {"train:3", "train:5"} & used

    cli = CliRunner().invoke(app, ["compile", str(tmp_path / "pipeline.yaml"), "--out", str(tmp_path / "o2"),
                                   "--templates", str(tmp_path / "templates"), "--cache-dir",
                                   str(tmp_path / "cache"), "--quiet"])
    assert cli.exit_code == 0, cli.output
    assert "skipped 3 bad example(s) of rte (answer: 2, fields.premise: 1): train:3, train:5, test:6; the first: " \
        in cli.output


def test_bad_examples_error_is_the_default_and_stops_the_read(tmp_path):
    from compile_fixtures import compile_world
    from flanpipe.errors import TemplateError

    make_world(tmp_path)
    _break_rte(tmp_path, "train", 3, {"label": 7})
    with pytest.raises(TemplateError, match=r"rte.yaml:\d+: answer: example 'train:3': evaluated to 7"):
        compile_world(tmp_path)
