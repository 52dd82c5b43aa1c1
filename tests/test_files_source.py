"""A dataset from files of its own (JSONL, Parquet, CSV; globs, slices, keys), compiled, audited and checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe import files_source
from flanpipe.errors import SourceError
from flanpipe.plan import load_plan
from flanpipe.spec import load_dataset_file
from flanpipe.verify import verify_output

from compile_fixtures import compile_world, make_world
from conftest import write

WORDINGS = ["{{ instruction }}", "Instruction: {{ instruction }}", "{{ instruction }}\\n\\nAnswer:",
            "Please do this: {{ instruction }}", "Task: {{ instruction }}", "Request: {{ instruction }}",
            "{{ instruction }} Reply briefly.", "Q: {{ instruction }}\\nA:", "Do as asked. {{ instruction }}",
            "{{ instruction }}\\nYour reply:"]


def _dataset(files: str, key: str = "", wordings: tuple[str, ...] = WORDINGS) -> str:
    templates = "\n".join(f'  - {{input: "{w}", target: "{{{{ output }}}}"}}' for w in wordings)
    return (f"name: mine\ntitle: Mine\ncluster: own\nkind: generation\nsource:\n  files: {files}\n{key}"
            f"fields:\n  instruction: {{feature: instruction}}\n  output: {{feature: output}}\n"
            f"raw: {{inputs: [instruction], target: output}}\ntemplates:\n{templates}\n")


def _rows(first: int, n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "instruction": f"Repeat the word number {i}.", "output": f"word {i}"}
            for i in range(first, first + n)]


def _own_world(root: Path, files: str = '{train: "data/train-*.jsonl[:50]", validation: data/val.parquet, '
                                          'test: data/test.csv}', key: str = "") -> Path:
    make_world(root)
    data = root / "templates" / "own" / "data"
    write(data / "train-0.jsonl", "".join(json.dumps(r) + "\n" for r in _rows(0, 30)))
    write(data / "train-1.jsonl", "".join(json.dumps(r) + "\n" for r in _rows(30, 30)))
    pq.write_table(pa.Table.from_pylist(_rows(100, 12)), data / "val.parquet")
    with (data / "test.csv").open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=["id", "instruction", "output"])
        out.writeheader()
        out.writerows(_rows(200, 8))
    write(root / "templates" / "own" / "mine.yaml", _dataset(files, key))
    tax = root / "templates" / "taxonomy.yaml"
    tax.write_text(tax.read_text() + "  own:\n    title: Own data\n    datasets: [mine]\n")
    pipe = root / "pipeline.yaml"
    pipe.write_text(pipe.read_text().replace("held_out: [natural_language_inference, sentiment]",
                                             "held_out: [natural_language_inference, sentiment, own]"))
    return root / "templates" / "own" / "mine.yaml"


def test_files_are_globbed_sliced_and_keyed(tmp_path):
    path = _own_world(tmp_path)
    spec, _ = load_dataset_file(path)
    assert spec.source.files["train"] == str(tmp_path / "templates" / "own" / "data" / "train-*.jsonl[:50]")
    train = list(files_source.read_split(spec, "train"))
    assert len(train) == 50 and train[0][0] == "train:train-0.jsonl:1" and train[30][0] == "train:train-1.jsonl:1"
    assert files_source.split_size(spec, "validation") == 12 and files_source.split_size(spec, "test") == 8
    assert next(files_source.read_split(spec, "test"))[0] == "test:test.csv:2"  # the CSV line after the header
    sliced = spec.model_copy(update={"source": spec.source.model_copy(update={"files": {
        **spec.source.files, "train": spec.source.files["train"].replace("[:50]", "[-5:]")}, "key": "id"})})
    assert [k for k, _ in files_source.read_split(sliced, "train")] == [f"train:r{i}" for i in range(55, 60)]


def test_a_dataset_of_own_files_compiles_verifies_and_audits(tmp_path):
    from flanpipe.audit import AuditSettings, run_audit

    _own_world(tmp_path)
    result = compile_world(tmp_path)
    assert verify_output(str(tmp_path / "out")) == []
    assert result.manifest["datasets"]["mine"]["read"]["train"]["kept"] == 50
    evals = pq.read_table(tmp_path / "out" / "own" / "eval" / "mine.parquet").to_pylist()
    assert len(evals) == 10 * (12 + 8) and {e["split"] for e in evals} == {"validation", "test"}
    assert {e["targets"] for e in evals if e["split"] == "test"} == {f"word {i}" for i in range(200, 208)}
    used = pq.read_table(tmp_path / "out" / "natural_language_inference" / "examples").to_pylist()
    assert {e["example_key"] for e in used if e["dataset"] == "mine"} <= {f"train:train-{f}.jsonl:{n}"
                                                                         for f in (0, 1) for n in range(1, 31)}
    document = run_audit(tmp_path / "out", AuditSettings())
    assert "mine" in document["datasets"] and not document["status"]["failed"], document["status"]
    again = compile_world(tmp_path, "again", cache_dir=str(tmp_path / "cache2"))
    assert again.manifest["files"] == result.manifest["files"]  # deterministic, whatever the cache


def test_a_single_pass_through_template_is_enough(tmp_path):
    path = _own_world(tmp_path)
    path.write_text(_dataset('{train: "data/train-*.jsonl[:50]", validation: data/val.parquet, test: data/test.csv}',
                             wordings=("{{ instruction }}",)))
    compile_world(tmp_path)
    evals = pq.read_table(tmp_path / "out" / "own" / "eval" / "mine.parquet").to_pylist()
    assert len(evals) == 12 + 8 and {e["template"] for e in evals} == {0}
    assert {e["inputs"] for e in evals if e["split"] == "test"} == {f"Repeat the word number {i}." for i in
                                                                    range(200, 208)}
    used = [e for e in pq.read_table(tmp_path / "out" / "natural_language_inference" / "examples").to_pylist()
            if e["dataset"] == "mine"]
    assert used and {e["template"] for e in used} == {0}
    assert all(e["inputs"].startswith("Repeat the word number ") for e in used)


def test_bad_files_fail_before_the_job_naming_the_dataset(tmp_path):
    _own_world(tmp_path, files='{train: "data/nothing-*.jsonl", test: data/test.csv}')
    with pytest.raises(SourceError, match=r"dataset 'mine' .*files.train: .*nothing-\*.jsonl matches no file"):
        load_plan(tmp_path / "pipeline.yaml", templates=tmp_path / "templates")
    spec_path = tmp_path / "templates" / "own" / "mine.yaml"
    spec_path.write_text(_dataset('{train: "data/train-*.jsonl", test: data/test.csv}').replace(
        "instruction: {feature: instruction}", "instruction: {feature: prompt}"))
    with pytest.raises(SourceError, match=r"fields.instruction: feature 'prompt' not in .*train-0.jsonl:1"):
        load_plan(tmp_path / "pipeline.yaml", templates=tmp_path / "templates")
    spec_path.write_text(_dataset('{train: "data/train-*.jsonl", test: data/test.csv}', "  key: output\n"))
    (tmp_path / "templates" / "own" / "data" / "train-1.jsonl").write_text(json.dumps(_rows(0, 1)[0]) + "\n")
    spec, _ = load_dataset_file(spec_path)
    with pytest.raises(SourceError, match=r"train-1.jsonl:1: output: duplicate example key 'train:word 0'"):
        list(files_source.read_split(spec, "train"))


def test_a_misspelt_key_of_a_files_source_is_named_with_its_line(tmp_path):
    from flanpipe.errors import SpecError

    path = _own_world(tmp_path, key="  formatt: jsonl\n")
    with pytest.raises(SpecError, match=r"mine.yaml:7: source.formatt: unknown key \(did you mean 'format'\?\)"):
        load_dataset_file(path)
