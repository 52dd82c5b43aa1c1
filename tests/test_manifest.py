"""Manifests: one pydantic model read by compile, verify, audit and the trainer; errors name file and field."""

from __future__ import annotations

import json

import pytest

from flanpipe import manifest
from flanpipe.errors import OutputError
from flanpipe.manifest import FORMAT, SplitManifest, TopManifest
from flanpipe.schema import RecordLayout

SHARDS = [
    {"rows": 10, "examples": 40, "tokens": 1000, "input_truncated": 1, "target_truncated": 2, "turned": 3,
     "datasets": {"a": 30, "b": 10}, "templates": {"a/0": 30, "b/-1": 10}, "bound": {"full": 0, "rest": [1000]}},
    {"rows": 5, "examples": 20, "tokens": 500, "input_truncated": 0, "target_truncated": 0, "turned": 1,
     "datasets": {"a": 20}, "templates": {"a/1": 20}, "bound": {"full": 1, "rest": [372]}},
]
LAYOUT = RecordLayout("decoder_only", 100, 28)


def test_summary_and_counts_add_up_the_shards():
    s = manifest.summarize(SHARDS, LAYOUT)
    assert (s.examples, s.rows, s.tokens, s.turned) == (60, 15, 1500, 4)
    assert s.lower_bound_rows == 1 + 11 and s.packing_efficiency == pytest.approx(1500 / (15 * 128))
    c = manifest.counts(SHARDS, {"a": "x", "b": "y"})
    assert c.datasets == {"a": 50, "b": 10} and c.clusters == {"x": 50, "y": 10}
    assert c.templates == {"a/0": 30, "a/1": 20, "b/-1": 10}


def test_load_reports_the_file_and_the_field(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(OutputError, match="manifest.json: not found"):
        manifest.load(path, TopManifest)
    path.write_text("{not json")
    with pytest.raises(OutputError, match=r"manifest.json:1: not valid JSON"):
        manifest.load(path, TopManifest)
    path.write_text(json.dumps({"format": "flanpipe/1"}))
    with pytest.raises(OutputError, match="format is 'flanpipe/1', this flanpipe reads 'flanpipe/2'"):
        manifest.load(path, SplitManifest)
    path.write_text(json.dumps({"format": FORMAT, "split": "s"}))
    with pytest.raises(OutputError, match="manifest.json: layout: required field is missing"):
        manifest.load(path, SplitManifest)


def test_models_refuse_unknown_fields():
    summary = manifest.summarize(SHARDS, LAYOUT).model_dump()
    with pytest.raises(ValueError, match="extra"):
        manifest.Summary.model_validate({**summary, "surprise": 1})


def test_format_counts_add_up_and_are_absent_without_formats():
    plain = manifest.counts([SHARDS[0], SHARDS[1]], {"a": "c1", "b": "c2"})
    assert "formats" not in plain.model_dump(mode="json") and "dataset_formats" not in plain.model_dump(mode="json")
    with_formats = [{**SHARDS[0], "formats": {"a/zsopt": 2, "a/fsnoopt": 1}},
                    {**SHARDS[1], "formats": {"a/zsopt": 1, "b/fsnoopt": 4}}]
    tally = manifest.counts(with_formats, {"a": "c1", "b": "c2"})
    assert tally.formats == {"fsnoopt": 5, "zsopt": 3}
    assert tally.dataset_formats == {"a/fsnoopt": 1, "a/zsopt": 3, "b/fsnoopt": 4}
    assert manifest.Counts.model_validate(tally.model_dump(mode="json")) == tally
