"""Compile the bundled samples with Flan 2022 prompt formats and option styles: shares, noopt inputs, the format
column and counts, eval style columns, the audit, and byte-identical output across runs and worker counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flanpipe.audit import audit_output
from flanpipe.audit.stats import split_options
from flanpipe.compiler import CompileOptions, run_compile
from flanpipe.spec import OptionsFormat

HEADERS = ["\n\nOPTIONS:", "\n\nChoices:", "\n\nPick from:"]
ITEMS = ["\n- {option}", "\n({letter}) {option}", "\n{roman}. {option}"]
FMT = OptionsFormat(header=HEADERS, item=ITEMS)
# A few bundled datasets (40 train examples each), one held-out cluster, 3,000 uses: about 20 s a compile.
PIPELINE = """\
extends: flanpipe:pipelines/flan2021.yaml
name: formats_test
datasets: [rte, cb, sst2, ag_news_subset, copa, xsum]
held_out: [natural_language_inference]
mixture_size: {examples: 3000}
output: {shards: 2}
lengths: {inputs: 2048, targets: 512}
options_format:
  header: ["\\n\\nOPTIONS:", "\\n\\nChoices:", "\\n\\nPick from:"]
  item: ["\\n- {option}", "\\n({letter}) {option}", "\\n{roman}. {option}"]
fewshot:
  max_exemplars: 10
  exemplar_counts: [1, 2, 5, 10]
  max_tokens: 1920
  input_target_separator: "\\n"
  exemplar_separator: "\\n\\n"
formats: {zsopt: 0.25, fsopt: 0.25, zsnoopt: 0.25, fsnoopt: 0.25}
"""
SPLIT = "natural_language_inference"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    (root / "p.yaml").write_text(PIPELINE)
    run_compile(root / "p.yaml", CompileOptions(out=str(root / "out"), cache_dir=str(root / "cache")))
    return root


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / "manifest.json").read_text())["files"]


def _examples(root: Path) -> list[dict]:
    return pq.read_table(root / "out" / SPLIT / "examples").to_pylist()


def test_realized_format_shares_match_the_configuration_and_the_manifest(compiled):
    rows = _examples(compiled)
    counts = Counter(r["format"] for r in rows)
    assert len(rows) == 3000 and set(counts) == {"zsopt", "fsopt", "zsnoopt", "fsnoopt"}
    for n in counts.values():
        assert abs(n / len(rows) - 0.25) < 0.04
    m = json.loads((compiled / "out" / SPLIT / "manifest.json").read_text())
    assert m["counts"]["formats"] == dict(sorted(counts.items()))
    per_dataset = Counter(f"{r['dataset']}/{r['format']}" for r in rows)
    assert m["counts"]["dataset_formats"] == dict(sorted(per_dataset.items()))


def test_noopt_inputs_carry_no_options_and_opt_inputs_use_every_style(compiled):
    classification = {"sst2", "ag_news_subset", "copa"}
    headers: Counter[str] = Counter()
    items: Counter[str] = Counter()
    fs_lengths, zs_lengths = [], []
    for r in _examples(compiled):
        (fs_lengths if r["format"].startswith("fs") else zs_lengths).append(r["input_tokens"])
        if r["dataset"] not in classification or r["turned"]:
            continue
        body, options = split_options(r["inputs"], FMT)
        if r["format"].endswith("noopt"):
            assert options is None, r["inputs"][-200:]
            continue
        assert options, r["inputs"][-200:]
        suffix = r["inputs"][len(body):]
        headers[next(h for h in HEADERS if suffix.startswith(h))] += 1
        rest = suffix[len(next(h for h in HEADERS if suffix.startswith(h))):]
        items[next(i for i, s in zip(ITEMS, ("\n- ", "\n(A) ", "\ni. ")) if rest.startswith(s))] += 1
    total = sum(headers.values())
    assert total > 800  # of 3,000 uses: half have options, 3 of the 4 train datasets classify, some are turned
    for counter in (headers, items):
        assert len(counter) == 3 and all(abs(n / total - 1 / 3) < 0.06 for n in counter.values()), counter
    # few-shot uses carry exemplars: their inputs are several times longer
    assert sum(fs_lengths) / len(fs_lengths) > 2 * sum(zs_lengths) / len(zs_lengths)


def test_eval_sets_record_the_option_style_and_keep_the_options(compiled):
    table = pq.read_table(compiled / "out" / SPLIT / "eval" / "rte.parquet").to_pylist()
    styled = [r for r in table if r["options"]]
    assert styled and all(r["options_header"] in HEADERS and r["options_item"] in ITEMS for r in styled)
    assert all(r["options_header"] is None for r in table if not r["options"])
    for r in styled:
        assert r["options"] == ["yes", "no"] and r["targets"] in r["options"]
        body, options = split_options(r["inputs"], FMT)
        assert options == r["options"] and r["inputs"][len(body):].startswith(r["options_header"])
    # one style per example: all templates of an example share it
    per_key = {}
    for r in styled:
        assert per_key.setdefault(r["example_key"], (r["options_header"], r["options_item"])) == \
            (r["options_header"], r["options_item"])


def test_audit_counts_formats_and_does_not_flag_noopt_uses(compiled):
    doc = audit_output(compiled / "out")
    split = doc["splits"][SPLIT]
    assert {f: v["examples"] for f, v in split["formats"].items()} == \
        json.loads((compiled / "out" / SPLIT / "manifest.json").read_text())["counts"]["formats"]
    assert split["manifest_mismatches"] == []
    assert sum(v["examples"] for v in split["datasets"]["sst2"]["formats"].values()) == \
        split["datasets"]["sst2"]["realized"]
    assert [f for f in doc["lint"]["findings"] if f["rule"] == "missing_options"] == []


def test_compiling_again_and_with_two_workers_gives_the_same_bytes(compiled):
    run_compile(compiled / "p.yaml", CompileOptions(out=str(compiled / "again"), cache_dir=str(compiled / "cache2"),
                                                    workers=2, mode="multi_processing"))
    assert _files(compiled / "again") == _files(compiled / "out")
