"""Auditing instruction files that were never compiled: planted problems found exactly, in JSONL, CSV and Parquet."""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from audit_fixtures import compiled

from flanpipe.audit import audit_files
from flanpipe.audit.rows import Columns, bundled_eval_sets, read_rows
from flanpipe.errors import AuditError

REPO = Path(__file__).resolve().parent.parent
COLUMNS = Columns(inputs="instruction", targets="output")


def _rows(n: int = 120, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    return [{"instruction": "Explain: " + " ".join(rng.choice(vocab) for _ in range(40)),
             "output": " ".join(rng.choice(vocab) for _ in range(15))} for _ in range(n)]


def _premise() -> str:
    return json.loads((REPO / "templates/samples/rte/test.jsonl").read_text().splitlines()[0])["premise"]


def _planted() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = _rows()
    near = dict(rows[7])
    near["output"] = near["output"].rsplit(" ", 1)[0] + " different"  # one word of 56
    rows += [dict(rows[3]),  # 120: an exact copy of row 3
             near,  # 121: near row 7
             {"instruction": "Summarize this.", "output": ""},  # 122: empty target
             {"instruction": "Ring the bell \x07 twice " + rows[0]["instruction"][9:], "output": "ok done"},  # 123
             {"instruction": "Does this follow? " + _premise(), "output": "yes"}]  # 124: an RTE test example
    return rows, {"copy": (3, 120), "near": (7, 121), "empty": 122, "control": 123, "dirty": 124}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _by_rule(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["lint"]["findings"]:
        out.setdefault(f["rule"], []).append(f)
    return out


@pytest.fixture(scope="module")
def planted_doc(tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any]]:
    rows, where = _planted()
    path = _write(tmp_path_factory.mktemp("rows") / "generated.jsonl", rows)
    return audit_files(str(path), COLUMNS), where


def test_planted_problems_are_found_exactly(planted_doc):
    doc, where = planted_doc
    rules = _by_rule(doc)
    assert doc["kind"] == "files" and doc["totals"]["rows"] == 125 and list(doc["datasets"]) == ["generated"]
    assert [f["count"] for f in rules["empty"]] == [1] and rules["empty"][0]["severity"] == "error"
    assert rules["empty"][0]["examples"][0]["example_key"] == f"generated.jsonl:{where['empty'] + 1}"
    assert rules["control_chars"][0]["count"] == 1 and "U+0007" in rules["control_chars"][0]["message"]
    assert rules["duplicates"][0]["count"] == 2  # the copy and its original
    near = rules["near_duplicates"][0]
    assert near["count"] == 2 and doc["near_duplicates"]["groups"] == 1
    assert [e["example_key"] for e in near["examples"]] == [f"generated.jsonl:{i + 1}" for i in where["near"]]
    assert doc["status"]["failed"] and doc["status"]["error_rules_fired"] == ["empty"]


def test_contamination_against_the_bundled_eval_sets_names_the_eval_example_and_the_row(planted_doc):
    doc, where = planted_doc
    rte = doc["contamination"]["eval_sets"]["rte"]
    eval_rte = dict(bundled_eval_sets())["rte"]
    expected = sorted({k for k, text in zip(eval_rte["example_key"].to_pylist(), eval_rte["inputs"].to_pylist())
                       if _premise() in text})
    assert rte["dirty_ids"] == expected and rte["dirty"] == 1
    assert sum(c["dirty"] for c in doc["contamination"]["eval_sets"].values()) == 1
    assert doc["contamination"]["file_rows"] == {"generated": {"rows": 1, "keys": [f"generated.jsonl:{where['dirty'] + 1}"]}}
    finding = _by_rule(doc)["contamination"][0]
    assert finding["dataset"] == "rte" and finding["source"] == "eval"


def test_the_three_formats_give_the_same_findings(tmp_path: Path, planted_doc):
    rows, _ = _planted()
    reference, _ = planted_doc
    summary = lambda doc: sorted((f["rule"], f["count"]) for f in doc["lint"]["findings"])
    for suffix in (".csv", ".parquet"):
        doc = audit_files(str(_write(tmp_path / f"generated{suffix}", rows)), COLUMNS)
        assert summary(doc) == summary(reference)


def test_glob_key_dataset_and_template_columns(tmp_path: Path):
    rows = _rows(60)
    for i, r in enumerate(rows):
        r.update(id=f"r{i}", task="alpha" if i % 2 else "beta", prompt=f"p{i % 3}",
                 options=["yes", "no"], output="yes" if i % 3 else "no")
        if r["prompt"] == "p0":  # this template writes the answer into its input
            r["instruction"] += f" The answer is {r['output']}."
    _write(tmp_path / "part-1.jsonl", rows[:30])
    _write(tmp_path / "part-2.jsonl", rows[30:])
    doc = audit_files(str(tmp_path / "part-*.jsonl"),
                      Columns(inputs="instruction", targets="output", options="options", dataset="task",
                              template="prompt", key="id"))
    assert [f["rows"] for f in doc["files"]] == [30, 30] and sorted(doc["datasets"]) == ["alpha", "beta"]
    assert all(d["templates"] == 3 and d["options"]["rows"] == 30 for d in doc["datasets"].values())
    leaks = _by_rule(doc)["answer_leak"]
    assert {f["dataset"] for f in leaks} == {"alpha", "beta"} and {f["template"] for f in leaks} == {0}
    assert all(e["example_key"].startswith("r") for f in leaks for e in f["examples"])


def test_against_a_compiled_output_uses_its_eval_sets(tmp_path: Path):
    out, _ = compiled("clean")
    split = next(p for p in out.iterdir() if (p / "eval").is_dir() and list((p / "eval").glob("*.parquet")))
    eval_file = sorted((split / "eval").glob("*.parquet"))[0]
    table = pq.read_table(eval_file)
    rows = _rows(40) + [{"instruction": table["inputs"][0].as_py(), "output": table["targets"][0].as_py()}]
    doc = audit_files(str(_write(tmp_path / "mine.jsonl", rows)), COLUMNS, against=out)
    c = doc["contamination"]["eval_sets"][eval_file.stem]
    assert table["example_key"][0].as_py() in c["dirty_ids"]
    assert doc["contamination"]["file_rows"]["mine"]["keys"] == ["mine.jsonl:41"]
    assert doc["settings"]["against"] == str(out)
    with pytest.raises(AuditError, match="not a directory written by `flanpipe compile`"):
        audit_files(str(tmp_path / "mine.jsonl"), COLUMNS, against=tmp_path)


@pytest.mark.parametrize("rows, message", [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}],
     r"bad\.jsonl:2: --targets output: no such field \(the row has: instruction\)"),
    ([{"instruction": "a", "output": 3}], r"bad\.jsonl:1: --targets output: expected text, got int '3'"),
])
def test_bad_rows_name_the_file_line_and_column(tmp_path: Path, rows, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(AuditError, match=message):
        list(read_rows([str(path)], COLUMNS))


def test_bad_paths_and_formats(tmp_path: Path):
    with pytest.raises(AuditError, match="no such file"):
        audit_files(str(tmp_path / "none-*.jsonl"), COLUMNS)
    (tmp_path / "rows.txt").write_text("{}\n")
    with pytest.raises(AuditError, match="cannot tell the format.*--format"):
        list(read_rows([str(tmp_path / "rows.txt")], COLUMNS))
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(AuditError, match=r"broken\.jsonl:2: not valid JSON"):
        list(read_rows([str(tmp_path / "broken.jsonl")], COLUMNS))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flanpipe", "audit", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_exit_codes_reports_and_refusals(tmp_path: Path):
    rows, _ = _planted()
    path = _write(tmp_path / "gen.jsonl", rows)
    failed = _cli(str(path), "--inputs", "instruction", "--targets", "output", "--json", str(tmp_path / "a.json"),
                  "--html", str(tmp_path / "a.html"))
    assert failed.returncode == 1 and "audit FAILED" in failed.stdout and "Traceback" not in failed.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["totals"]["near_duplicate_rows"] == 2 and doc["rows_per_second"] > 0
    page = (tmp_path / "a.html").read_text()
    assert ">Near-duplicates</h2>" in page and ">Contamination</h2>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    passed = _cli(str(path), "--inputs", "instruction", "--targets", "output", "--allow", "empty")
    assert passed.returncode == 0 and "audit passed" in passed.stdout
    missing = _cli(str(path), "--inputs", "prompt", "--targets", "output")
    assert missing.returncode == 1 and "gen.jsonl:1: --inputs prompt: no such field" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) <= 3 and "Traceback" not in missing.stderr
    out, _ = compiled("clean")
    refused = _cli(str(out), "--inputs", "instruction")
    assert refused.returncode == 1 and "--inputs apply to files only" in refused.stderr
