"""A dataset from a Hugging Face save_to_disk directory made in the test (nothing downloaded), compiled."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from flanpipe import hf_source
from flanpipe.errors import SourceError, SpecError
from flanpipe.plan import load_plan
from flanpipe.spec import load_dataset_file
from flanpipe.verify import verify_output

from compile_fixtures import compile_world
from test_files_source import _own_world, _rows


def _hf_world(root: Path, splits: str = '{train: "train[:50]", validation: "train[50:]", test: test}') -> Path:
    path = _own_world(root)
    saved = root / "templates" / "own" / "hf_data"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(0, 60)),
                          "test": datasets.Dataset.from_list(_rows(300, 9))}).save_to_disk(str(saved))
    text = path.read_text()
    start, end = text.index("source:"), text.index("fields:")
    path.write_text(text[:start] + f"source:\n  huggingface: hf_data\n  splits: {splits}\n  key: id\n" + text[end:])
    return path


def test_saved_splits_are_sliced_and_keyed(tmp_path):
    spec, _ = load_dataset_file(_hf_world(tmp_path))
    assert spec.source.huggingface == str(tmp_path / "templates" / "own" / "hf_data")
    assert [hf_source.split_size(spec, s) for s in ("train", "validation", "test")] == [50, 10, 9]
    validation = list(hf_source.read_split(spec, "validation"))
    assert [k for k, _ in validation] == [f"validation:r{i}" for i in range(50, 60)]
    assert validation[0][1] == {"id": "r50", "instruction": "Repeat the word number 50.", "output": "word 50"}


def test_a_saved_dataset_compiles_and_verifies(tmp_path):
    _hf_world(tmp_path)
    result = compile_world(tmp_path)
    assert verify_output(str(tmp_path / "out")) == []
    assert result.manifest["datasets"]["mine"]["read"]["train"]["kept"] == 50
    evals = pq.read_table(tmp_path / "out" / "own" / "eval" / "mine.parquet").to_pylist()
    assert {e["example_key"] for e in evals if e["split"] == "test"} == {f"test:r{i}" for i in range(300, 309)}


def test_a_missing_saved_split_fails_before_the_job(tmp_path):
    _hf_world(tmp_path, splits='{train: "train[:50]", test: testing}')
    with pytest.raises(SourceError):
        load_plan(tmp_path / "pipeline.yaml", templates=tmp_path / "templates")
    spec, _ = load_dataset_file(tmp_path / "templates" / "own" / "mine.yaml")
    with pytest.raises(SourceError, match=r"splits.test: .*hf_data has no split 'testing' \(it has: test, train\)"):
        hf_source.split_size(spec, "test")


def _data_files_world(root: Path, builder: str = "json") -> Path:
    path = _own_world(root)
    data = root / "templates" / "own" / "hfdata"
    data.mkdir()
    for name, rows in (("train-1", _rows(0, 30)), ("train-2", _rows(30, 30)), ("test", _rows(300, 9))):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = path.read_text()
    start, end = text.index("source:"), text.index("fields:")
    path.write_text(text[:start] + f"source:\n  huggingface: {builder}\n"
                    "  data_files: {train: 'hfdata/train-*.jsonl', test: [hfdata/test.jsonl]}\n"
                    '  splits: {train: "train[:50]", validation: "train[50:]", test: test}\n  key: id\n' + text[end:])
    return path


def test_local_files_through_load_dataset_compile(tmp_path):
    spec, _ = load_dataset_file(_data_files_world(tmp_path))
    assert spec.source.data_files["test"] == [str(tmp_path / "templates" / "own" / "hfdata" / "test.jsonl")]
    assert [hf_source.split_size(spec, s) for s in ("train", "validation", "test")] == [50, 10, 9]
    assert [k for k, _ in hf_source.read_split(spec, "validation")][:2] == ["validation:r50", "validation:r51"]
    before = hf_source.fingerprint(spec)
    (tmp_path / "templates" / "own" / "hfdata" / "test.jsonl").write_text(json.dumps(_rows(400, 1)[0]) + "\n")
    assert hf_source.fingerprint(spec) != before
    _data_files_world(tmp_path / "again")
    result = compile_world(tmp_path / "again")
    assert verify_output(str(tmp_path / "again" / "out")) == []
    assert result.manifest["datasets"]["mine"]["read"]["train"]["kept"] == 50


def test_data_files_need_a_packaged_builder_and_matching_files(tmp_path):
    _data_files_world(tmp_path, builder="my_script.py")
    with pytest.raises(SpecError, match="with data_files, huggingface names the builder.*json, csv, parquet, text"):
        load_dataset_file(tmp_path / "templates" / "own" / "mine.yaml")
    _data_files_world(tmp_path / "b")
    for f in (tmp_path / "b" / "templates" / "own" / "hfdata").glob("train-*"):
        f.unlink()
    spec, _ = load_dataset_file(tmp_path / "b" / "templates" / "own" / "mine.yaml")
    with pytest.raises(SourceError, match=r"source.data_files.train: .*train-\*.jsonl matches no file"):
        hf_source.split_size(spec, "train")
