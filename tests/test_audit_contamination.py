"""Leakage check and n-gram contamination: planted overlaps found exactly, nothing in the clean fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flanpipe.audit import AuditSettings, audit_output
from flanpipe.audit.contamination import Contamination, EvalSet, held_out_check, ngram_hashes
from flanpipe.audit.lint import normalize

from audit_fixtures import audited, compiled


def test_planted_overlaps_are_found_with_clean_and_dirty_id_lists():
    out, planted = compiled("bad")
    doc = audited("bad")
    for split, sets in planted["dirty"].items():
        for dataset, dirty in sets.items():
            c = doc["splits"][split]["contamination"][dataset]
            keys = pq.read_table(out / split / "eval" / f"{dataset}.parquet")["example_key"].to_pylist()
            assert c["dirty_ids"] == dirty and len(dirty) >= 3
            assert sorted(c["dirty_ids"] + c["clean_ids"]) == sorted(set(keys))
            assert (c["dirty"], c["clean"], c["examples"]) == (len(dirty), 20 - len(dirty), 20)
            assert c["dirty_share"] == len(dirty) / 20
            for m in c["matches"]:
                assert m["train_dataset"] == "copycat" and len(m["ngram"].split()) == 13
                assert m["ngram"] in normalize(m["inputs"])
    short = planted["short_copy"]["natural_language_inference"]["rte"]
    assert short and set(short) <= set(doc["splits"]["natural_language_inference"]["contamination"]["rte"]["clean_ids"])
    assert doc["totals"]["dirty_eval_examples"] == 7


def test_shorter_ngrams_catch_the_short_copy():
    out, planted = compiled("bad")
    doc = audit_output(out, AuditSettings(ngram=8))
    dirty = doc["splits"]["natural_language_inference"]["contamination"]["rte"]["dirty_ids"]
    assert set(planted["short_copy"]["natural_language_inference"]["rte"]) <= set(dirty)


def test_clean_fixture_has_no_contamination_and_passes_the_held_out_check():
    doc = audited("clean")
    for split, s in doc["splits"].items():
        assert s["leakage"]["ok"] and s["leakage"]["leaked"] == []
        assert not set(s["leakage"]["train_clusters"]) & set(s["removed_clusters"])
        for c in s["contamination"].values():
            assert c["dirty"] == 0 and c["dirty_ids"] == [] and len(c["clean_ids"]) == c["examples"] == 20
    assert doc["contamination"]["ngrams_scanned"] > 0 and doc["contamination"]["examples_scanned"] == 200


def test_held_out_check_is_exact(tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(compiled("clean")[0], out)
    path = out / "sentiment" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["removed_clusters"] = ["sentiment", "paraphrase"]  # para trains in this split: now a leak
    path.write_text(json.dumps(manifest))
    doc = audit_output(out)
    leak = doc["splits"]["sentiment"]["leakage"]
    assert leak["ok"] is False and leak["leaked"] == [{"dataset": "para", "cluster": "paraphrase", "rows": 50}]
    [f] = [f for f in doc["lint"]["findings"] if f["rule"] == "held_out_leak"]
    assert (f["dataset"], f["severity"], f["count"]) == ("para", "error", 50) and doc["status"]["failed"]
    # the examples' own cluster column counts too, even when the manifest maps the dataset elsewhere
    assert held_out_check(["x"], {("d", "x"): 3}, {"d": "y"})["leaked"] == [{"dataset": "d", "cluster": "y", "rows": 3}]


def test_ngram_hashes_are_per_text_case_and_punctuation_blind():
    h, doc, start = ngram_hashes(pa.array(["A b, c d!", "a B c-d", "c d e"]), 3)
    assert doc.tolist() == [0, 0, 1, 1, 2] and start.tolist() == [0, 1, 4, 5, 8]
    assert h[0] == h[2] and h[1] == h[3]  # "a b c", "b c d" in both spellings
    assert len(set(h.tolist())) == 3  # "c d e" is new; no n-gram spans two texts
    again, _, _ = ngram_hashes(pa.array(["a b c"]), 3)
    assert again[0] == h[0]
    assert len(ngram_hashes(pa.array(["too short"]), 13)[0]) == 0
    assert ngram_hashes(pa.array(["Ça va très bien mon ami"]), 2)[0].shape == (5,)  # 6 words: accents stay inside


def test_template_text_shared_by_most_eval_examples_is_not_contamination():
    instruction = "please read the following passage very carefully and then answer the question below it"
    rows = [{"dataset": "e", "split": "test", "example_key": f"test:{i}", "template": 0, "turned": False,
             "inputs": f"{instruction} {' '.join(f'w{i}x{j}' for j in range(14))}", "targets": "t", "options": [],
             "answer_index": -1} for i in range(6)]
    eval_set = EvalSet.build("e", pa.Table.from_pylist(rows), 13, 0.5)
    assert eval_set.boilerplate > 0
    scan = Contamination([eval_set], 13, batch_rows=2)
    train = [{"dataset": "tr", "example_key": "k1", "inputs": instruction + " and more", "targets": "x"},
             {"dataset": "tr", "example_key": "k2", "inputs": rows[4]["inputs"][len(instruction):], "targets": ""},
             {"dataset": "tr", "example_key": "k3", "inputs": "unrelated", "targets": "y"}]
    scan.scan(pa.Table.from_pylist(train))
    result = scan.result("s")["e"]
    assert result["dirty_ids"] == ["test:4"] and result["matches"][0]["train_example_key"] == "k2"
    assert scan.examples == 3 and scan.ngrams == 4 + 2  # 16 words of k1, 14 of k2
