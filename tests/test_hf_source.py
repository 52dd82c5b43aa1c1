"""A dataset from a Hugging Face save_to_disk directory made in the test (nothing downloaded), compiled."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from flanpipe import hf_source
from flanpipe.errors import SourceError
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
