"""Lint finds each problem planted in the bad-template fixture, nothing in the clean one; the CLI gates on errors."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flanpipe.audit import AuditSettings
from flanpipe.audit.lint import Lint
from flanpipe.cli import app
from flanpipe.errors import AuditError
from flanpipe.spec import OptionsFormat

from audit_fixtures import audited, compiled

FMT = OptionsFormat(header="\n\nOPTIONS:", item="\n- {option}")


def _findings(rule: str) -> list[dict[str, Any]]:
    return [f for f in audited("bad")["lint"]["findings"] if f["rule"] == rule]


def _train_rows(dataset: str) -> list[dict[str, Any]]:
    """The distinct (example, variant) rows of a dataset over every split's mixture, as lint sees them."""
    out, _ = compiled("bad")
    rows = {}
    for split in ("natural_language_inference", "sentiment"):
        for r in pq.read_table(out / split / "examples").to_pylist():
            if r["dataset"] == dataset:
                rows.setdefault((r["example_key"], r["variant"]), r)
    return list(rows.values())


def test_clean_fixture_has_no_findings():
    doc = audited("clean")
    assert doc["lint"]["findings"] == [] and doc["status"]["failed"] is False


def test_empty_inputs_and_targets():
    [f] = _findings("empty")
    rows = _train_rows("empty_fields")
    expected = sum(1 for r in rows if not r["inputs"].strip() or not r["targets"].strip())
    assert (f["dataset"], f["severity"], f["count"]) == ("empty_fields", "error", expected) and expected >= 8
    assert {e["note"] for e in f["examples"]} <= {"empty input", "empty target"} and f["examples"]


def test_answer_leak_ignores_the_options_suffix():
    leaks = _findings("answer_leak")
    by_dataset = defaultdict(set)
    for f in leaks:
        by_dataset[f["dataset"]].add(f["template"])
    assert set(by_dataset) == {"leaky", "leaky_label"}  # rte's OPTIONS suffix lists its answer: not a leak
    assert by_dataset["leaky"] and by_dataset["leaky"] <= {0, 1, 2, 3, 4}
    assert by_dataset["leaky_label"] and by_dataset["leaky_label"] <= {0, 1, 2, 3, 4}
    assert all(f["severity"] == "error" and f["examples"] for f in leaks)
    rte_eval = audited("bad")["datasets"]["rte"]["samples"]["eval"]["0"]
    assert rte_eval["inputs"].endswith("OPTIONS:\n- yes\n- no") and rte_eval["targets"] in ("yes", "no")
    assert _findings("answer_in_input") == []


def test_answer_in_every_template_reads_as_an_extractive_task():
    lint = Lint(FMT, {"squadish": "generation"})
    rows = [{"dataset": "squadish", "example_key": f"train:{i}", "variant": 0, "template": i % 10, "turned": False,
             "inputs": f"Passage: the river is {i} miles long. Question: how long is the river?",
             "targets": f"{i} miles"} for i in range(60)]
    lint.add_rows(rows, split="s", source="train")
    rules = {f["rule"] for f in lint.findings()}
    assert "answer_in_input" in rules and "answer_leak" not in rules


def test_unused_variables():
    found = _findings("unused_variables")
    assert {f["dataset"] for f in found} == {"constant"}
    assert found and {f["template"] for f in found} <= {0, 1, 2, 3, 4}
    assert all("the input is the same for all" in f["message"] for f in found)


def test_missing_options():
    [f] = _findings("missing_options")
    assert f["dataset"] == "labels_as_text" and "2 values (" in f["message"]
    assert "'yes'" in f["message"] and "'no'" in f["message"]
    lint = Lint(FMT, {"cls": "classification"})
    base = {"dataset": "cls", "variant": 0, "targets": "yes"}
    lint.add_rows([{**base, "example_key": "a", "template": 0, "turned": False,
                    "inputs": "Is it?\n\nOPTIONS:\n- yes\n- no"},
                   {**base, "example_key": "b", "template": 1, "turned": False, "inputs": "Is it? yes or no"},
                   {**base, "example_key": "c", "template": 2, "turned": True, "inputs": "Write something."}],
                  split="s", source="train")
    [g] = [x for x in lint.findings() if x["rule"] == "missing_options"]
    assert (g["template"], g["count"], g["examples"][0]["example_key"]) == (1, 1, "b")


def test_missing_options_knows_every_configured_style_and_skips_noopt_uses():
    fmt = OptionsFormat(header=["\n\nOPTIONS:", "\n\nPick from:"], item=["\n- {option}", "\n({letter}) {option}"])
    lint = Lint(fmt, {"cls": "classification"})
    base = {"dataset": "cls", "variant": 0, "targets": "yes", "turned": False}
    lint.add_rows([{**base, "example_key": "a", "template": 0, "inputs": "Is it?\n\nPick from:\n(A) yes\n(B) no"},
                   {**base, "example_key": "b", "template": 1, "inputs": "Is it?\n\nOPTIONS:\n- yes\n- no"},
                   {**base, "example_key": "c", "template": 2, "inputs": "Is it?", "format": "zsnoopt"},
                   {**base, "example_key": "d", "template": 3, "inputs": "Is it?", "format": "fsnoopt"},
                   {**base, "example_key": "e", "template": 4, "inputs": "Is it?", "format": "fsopt"}],
                  split="s", source="train")
    [g] = [x for x in lint.findings() if x["rule"] == "missing_options"]
    # a noopt use leaves the suffix out on purpose; an opt use without one is still flagged
    assert (g["template"], g["count"], g["examples"][0]["example_key"]) == (4, 1, "e")


def test_noopt_uses_do_not_make_a_classification_dataset_look_like_generation():
    lint = Lint(FMT, {})
    rows = [{"dataset": "cls", "variant": 0, "targets": "yes" if i % 2 else "no", "turned": False,
             "example_key": f"k{i}", "template": i % 10,
             "inputs": f"Question {i}?" + ("" if i % 4 else "\n\nOPTIONS:\n- no\n- yes"),
             "format": "zsnoopt" if i % 4 else "zsopt"} for i in range(80)]
    lint.add_rows(rows, split="s", source="train")
    assert lint.kind_of("cls") == "classification"
    assert [f for f in lint.findings() if f["rule"] == "missing_options"] == []


def test_control_characters():
    [f] = _findings("control_chars")
    rows = _train_rows("odd_chars")
    expected = sum(1 for r in rows if "\u0007" in r["inputs"] or "\ufffd" in r["inputs"])
    assert (f["dataset"], f["count"]) == ("odd_chars", expected) and expected > 0
    assert "U+0007" in f["message"] and "U+FFFD" in f["message"]


def test_exact_duplicates_within_a_dataset():
    [f] = _findings("duplicates")
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in _train_rows("dupes"):
        groups[(r["inputs"], r["targets"])].append(r["example_key"])
    expected = sum(len(keys) for keys in groups.values() if len(set(keys)) > 1)
    assert (f["dataset"], f["count"]) == ("dupes", expected) and expected >= 20
    assert all(e["note"].startswith("same input and target as") for e in f["examples"])


def test_length_outliers():
    found = {(f["dataset"], f["message"].split()[1]) for f in _findings("length_outlier")}
    assert ("long_tail", "input(s)") in found and ("long_tail", "target(s)") in found
    assert {d for d, _ in found} <= {"long_tail", "empty_fields"}  # empty texts are far from the usual length too
    [inputs] = [f for f in _findings("length_outlier") if f["dataset"] == "long_tail" and "input(s)" in f["message"]]
    assert inputs["count"] == 1 and inputs["examples"][0]["example_key"] == "train:5"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["audit", *args])


def test_cli_exit_code_gates_on_error_rules(tmp_path: Path):
    bad, clean = compiled("bad")[0], compiled("clean")[0]
    result = _cli(str(bad), "--json", str(tmp_path / "a.json"))
    assert result.exit_code == 1 and "FAILED" in result.output
    assert json.loads((tmp_path / "a.json").read_text())["status"]["error_rules_fired"] == ["answer_leak", "empty"]
    assert _cli(str(bad), "--allow", "empty", "--allow", "answer_leak").exit_code == 0
    assert _cli(str(bad), "--allow", "empty", "--allow", "answer_leak", "--error", "duplicates").exit_code == 1
    assert _cli(str(clean), "--error", "length_outlier", "--error", "contamination").exit_code == 0
    unknown = _cli(str(clean), "--error", "dupes")
    assert unknown.exit_code == 1 and "unknown audit rule 'dupes'" in unknown.output
    missing = _cli(str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "no such file" in missing.output
    (tmp_path / "empty").mkdir()
    empty = _cli(str(tmp_path / "empty"))
    assert empty.exit_code == 1 and "not a complete flanpipe output" in empty.output


def test_settings_validate_rule_names():
    assert AuditSettings.of().errors == {"empty", "answer_leak", "held_out_leak"}
    assert AuditSettings.of(errors=["duplicates"], allowed=["empty"]).errors == {"answer_leak", "held_out_leak",
                                                                                 "duplicates"}
    with pytest.raises(AuditError, match="did you mean 'duplicates'"):
        AuditSettings.of(errors=["duplicate"])
    with pytest.raises(AuditError, match="--ngram"):
        AuditSettings.of(ngram=0)
