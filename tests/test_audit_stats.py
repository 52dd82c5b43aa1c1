"""Audit statistics against compiled fixtures with known counts, and the JSON against its documented schema."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flanpipe.audit.stats import SplitStats, option_balance, split_options
from flanpipe.spec import OptionsFormat
from flanpipe.templates import options_suffix

from audit_fixtures import audited, compiled

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "audit.schema.json"
FMT = OptionsFormat(header="\n\nOPTIONS:", item="\n- {option}")


@pytest.fixture(scope="module")
def clean() -> tuple[Path, dict[str, Any]]:
    return compiled("clean")[0], audited("clean")


def _split_manifest(out: Path, split: str) -> dict[str, Any]:
    return json.loads((out / split / "manifest.json").read_text())


def test_counts_planned_vs_realized_per_split_cluster_dataset(clean):
    out, doc = clean
    nli, senti = doc["splits"]["natural_language_inference"], doc["splits"]["sentiment"]
    assert nli["summary"]["examples"] == senti["summary"]["examples"] == 100
    assert {d: (v["planned"], v["realized"], v["available"]) for d, v in senti["datasets"].items()} == {
        "para": (50, 50, 40), "rte": (50, 50, 40)}
    assert {d: (v["planned"], v["realized"]) for d, v in nli["datasets"].items()} == {"senti": (100, 100)}
    assert {c: (v["planned"], v["realized"], v["datasets"]) for c, v in senti["clusters"].items()} == {
        "natural_language_inference": (50, 50, 1), "paraphrase": (50, 50, 1)}
    assert senti["datasets"]["rte"]["distinct_examples"] == 40 and senti["datasets"]["rte"]["repeated_uses"] == 10
    for split in doc["splits"]:
        m = _split_manifest(out, split)
        assert doc["splits"][split]["manifest_mismatches"] == []
        for key in ("examples", "rows", "tokens", "input_truncated", "target_truncated", "turned"):
            assert doc["splits"][split]["summary"][key] == m["summary"][key]
        assert {f"{d}/{t}": e["examples"] for d, v in doc["splits"][split]["datasets"].items()
                for t, e in v["templates"].items()} == m["counts"]["templates"]
    assert doc["totals"]["train_examples"] == 200 and doc["totals"]["splits"] == 2


def test_lengths_truncation_and_turned_share_match_the_examples(clean):
    out, doc = clean
    table = pq.read_table(out / "sentiment" / "examples")
    rte = table.filter(pc.equal(table["dataset"], "rte"))
    stats = doc["splits"]["sentiment"]["datasets"]["rte"]
    lengths = rte["input_tokens"].to_numpy()
    assert stats["input_tokens"]["count"] == 50 and stats["input_tokens"]["max"] == int(lengths.max()) == 64
    assert stats["input_tokens"]["p50"] == float(np.percentile(lengths, 50))
    assert stats["input_truncated"] == pc.sum(rte["input_truncated"]).as_py()
    assert stats["turned"] == 13 and stats["turned_share"] == 13 / 50
    assert {t: e["turned"] for t, e in stats["templates"].items() if e["turned"]} == {"8": True, "9": True}
    hist = doc["splits"]["sentiment"]["lengths"]["input_tokens"]["histogram"]
    assert sum(hist["counts"]) == 100 and hist["edges"][0] == 0 and hist["edges"][-1] >= 64


def test_examples_whose_target_was_cut_are_listed():
    out, _ = compiled("bad")
    doc = audited("bad")
    for split, s in doc["splits"].items():
        table = pq.read_table(out / split / "examples", columns=["dataset", "example_key", "target_truncated"])
        cut = table.filter(table["target_truncated"]).to_pylist()
        assert cut, "the fixture plants a target longer than the target length"
        assert {r["dataset"] for r in cut} == {"long_tail"}
        assert s["datasets"]["long_tail"]["truncated_targets"] == sorted({r["example_key"] for r in cut}) == ["train:6"]
        assert s["summary"]["target_truncated"] == len(cut)


def test_packing_efficiency_per_shard_matches_the_packed_rows(clean):
    out, doc = clean
    for split, s in doc["splits"].items():
        m = _split_manifest(out, split)
        assert [sh["file"] for sh in s["shards"]] == [p.replace(".array_record", ".parquet")
                                                      for p in m["train"]["shards"]]
        assert sum(sh["rows"] for sh in s["shards"]) == m["train"]["rows"]
        for sh in s["shards"]:
            segments = pq.read_table(out / split / sh["file"], columns=["decoder_segment_ids"])
            flat = np.concatenate(segments["decoder_segment_ids"].to_pylist())
            assert sh["tokens"] == int((flat != 0).sum())
            assert sh["packing_efficiency"] == pytest.approx(sh["tokens"] / (sh["rows"] * 80))
        assert s["summary"]["packing_efficiency"] == pytest.approx(m["summary"]["packing_efficiency"])
        assert s["manifest_mismatches"] == []  # padding holds the manifest's pad_id


@pytest.mark.parametrize("pad_id,bad", [(0, 0), (2, 2)])
def test_padding_is_checked_against_the_manifests_pad_id(pad_id, bad):
    # The first row ends in 2 padding positions (segment 0) holding 0; the second row has none.
    table = pa.table({"decoder_segment_ids": [[1, 1, 0, 0], [1, 1, 2, 2]],
                      "decoder_target_tokens": [[5, 1, 0, 0], [6, 1, 0, 1]]})
    stats = SplitStats({"pad_id": pad_id, "lengths": {"inputs": 2, "targets": 2}, "layout": "decoder_only"}, FMT, {})
    stats.add_packed("train/x.parquet", table, 4)
    found = [m for m in stats.result()["manifest_mismatches"] if m.startswith("padding")]
    assert found == ([f"padding: {bad} positions hold an id other than the manifest's pad_id {pad_id}"] if bad else [])


def test_option_balance_of_classification_targets(clean):
    _, doc = clean
    train = doc["splits"]["sentiment"]["datasets"]["rte"]["options"]
    assert train["rows"] == 37 and set(train["labels"]) == {"yes", "no"}  # 50 rows - 13 turned
    assert sum(train["labels"].values()) == sum(train["positions"].values()) == 37
    evaluated = doc["splits"]["natural_language_inference"]["eval"]["rte"]
    # 20 examples (labels alternate) x 8 non-turned templates
    assert evaluated["options"]["labels"] == {"no": 80, "yes": 80}
    assert evaluated["options"]["positions"] == {"0": 80, "1": 80}
    assert evaluated["options"]["majority_share"] == 0.5 and evaluated["options"]["entropy_ratio"] == 1.0
    assert evaluated["rows"] == 200 and evaluated["examples"] == {"test": 10, "validation": 10}
    assert evaluated["turned_rows"] == 40 and evaluated["templates"] == 10
    assert doc["splits"]["sentiment"]["datasets"]["para"]["options"] is None
    skewed = option_balance({"a": 9, "b": 1}, {0: 9, 1: 1})
    assert skewed["majority_share"] == 0.9 and 0 < skewed["entropy_ratio"] < 0.5


def test_split_options_parses_only_a_real_suffix():
    assert split_options("Q?\n\nOPTIONS:\n- yes\n- no", FMT) == ("Q?", ["yes", "no"])
    assert split_options("Q?\n\nOPTIONS:\n- a\n- b c", FMT) == ("Q?", ["a", "b c"])
    assert split_options("a text that ends with OPTIONS: here", FMT) == ("a text that ends with OPTIONS: here", None)
    assert split_options("Q?\n\nOPTIONS: yes", FMT)[1] is None
    custom = OptionsFormat(header=" Choices:", item=" [{option}]")
    assert split_options("Q? Choices: [x] [y z]", custom) == ("Q?", ["x", "y z"])


def test_split_options_reads_every_listed_header_and_item_style():
    fmt = OptionsFormat(header=["\n\nOPTIONS:", "\n\nChoices:", "\n\nPick from:"],
                        item=["\n- {option}", "\n({letter}) {option}", "\n{roman}. {option}"])
    for h in range(3):
        for i in range(3):
            text = "Q? (A) is a letter" + options_suffix(["yes", "no (B) maybe", "iii. x"], fmt, (h, i))
            assert split_options(text, fmt) == ("Q? (A) is a letter", ["yes", "no (B) maybe", "iii. x"]), (h, i)
    assert split_options("Q?\n\nChoices:\n(B) yes\n(C) no", fmt)[1] is None  # markers do not start at A
    assert split_options("Q?\n\nPick from:\nii. yes", fmt)[1] is None  # nor at i
    assert split_options("Q?\n\nPick from: yes", fmt)[1] is None  # no item style
    # an option may hold a line break: what follows the first marker is one option when no second marker follows
    assert split_options("Q?\n\nChoices:\n(A) yes\n(C) no", fmt) == ("Q?", ["yes\n(C) no"])
    assert split_options("Q?", fmt) == ("Q?", None)


def _check(value: Any, schema: dict[str, Any], defs: dict[str, Any], where: str) -> list[str]:
    """A small JSON Schema subset: $ref, type, required, properties, additionalProperties, items, enum."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    types = schema.get("type")
    names = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        ok = any((t == "integer" and isinstance(value, int) and not isinstance(value, bool))
                 or (t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool))
                 or (t in names and isinstance(value, names[t])) for t in allowed)
        if not ok:
            return [f"{where}: {type(value).__name__} is not {allowed}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    problems = []
    if isinstance(value, dict):
        problems += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for k, v in value.items():
            sub = props.get(k, schema.get("additionalProperties"))
            if sub is False:
                problems.append(f"{where}: unexpected key {k}")
            elif isinstance(sub, dict):
                problems += _check(v, sub, defs, f"{where}.{k}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            problems += _check(v, schema["items"], defs, f"{where}[{i}]")
    return problems


@pytest.mark.parametrize("kind", ["clean", "bad"])
def test_audit_json_follows_the_documented_schema(kind):
    schema = json.loads(SCHEMA.read_text())
    doc = json.loads(json.dumps(audited(kind)))  # what --json writes
    assert _check(doc, schema, schema["$defs"], "$") == []
    assert not math.isnan(doc["totals"]["packing_efficiency"])
    documented = (SCHEMA.parent.parent / "audit.md").read_text()
    for key in schema["properties"]:
        assert f"`{key}`" in documented, f"docs/audit.md does not describe {key}"
    assert Counter(f["rule"] for f in doc["lint"]["findings"]) == Counter(
        {r: v["findings"] for r, v in doc["lint"]["rules"].items() if v["findings"]})
