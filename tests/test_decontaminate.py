"""Decontamination at compile time: exactly the planted overlaps are dropped, counted, and the audit finds none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compile_fixtures import compile_world, make_world

from flanpipe.audit import audit_output
from flanpipe.audit.report import render_html
from flanpipe.decontaminate import Decontamination, contaminated, index_of
from flanpipe.ngrams import ngram_hashes
from flanpipe.plan import load_plan
from flanpipe.report import decontamination_lines
from flanpipe.sources import read_examples

LONG = [" ".join(f"zeta{k}q{i}" for i in range(20)) + "." for k in range(3)]  # 20 words met nowhere else
# (dataset, split, row, field, text): rte's test premises 0/1 and senti's test text 0 are eval content
EVAL = [("rte", "test", 0, "premise", LONG[0]), ("rte", "test", 1, "premise", LONG[1]),
        ("senti", "test", 0, "text", LONG[2])]
# senti trains in the NLI split (eval: rte), rte and para in the sentiment split (eval: senti)
HELD_OUT = [("senti", 3, "text", "Some words first. " + LONG[0]), ("senti", 7, "text", LONG[1] + " And after."),
            ("para", 5, "text", LONG[2])]
OWN_EVAL = [("senti", 11, "text", LONG[2]), ("rte", 4, "premise", LONG[1])]  # only all_eval drops these


def _unique_ends(root: Path) -> None:
    """Give every rte sentence its own first and last word. The fixtures draw words from a vocabulary of 20, and
    rte's templates set a dozen fixed words next to each field, so "instruction + the field's first word" would
    be an n-gram shared by many examples of the dataset: content by the audit's boilerplate rule (which
    all_eval, checking rte against its own eval set, then rightly removes; see docs/mixtures.md)."""
    for split in ("train", "validation", "test"):
        path = root / "samples" / "rte" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for i, r in enumerate(rows):
            for field in ("premise", "hypothesis"):
                r[field] = f"{field[0]}{split}{i}a {r[field].rstrip('.')} {field[0]}{split}{i}z."
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _set(root: Path, dataset: str, split: str, row: int, field: str, text: str) -> None:
    path = root / "samples" / dataset / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[row][field] = text
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _world(root: Path, extra: str = "") -> Path:
    pipeline = make_world(root, train=60, pipeline_extra=extra)
    # every train example is used (each mixture draws at least all of its datasets' examples)
    pipeline.write_text(pipeline.read_text().replace("mixture_size: {examples: 100}", "mixture_size: {examples: 400}"))
    _unique_ends(root)
    for dataset, split, row, field, text in EVAL:
        _set(root, dataset, split, row, field, text)
    for dataset, row, field, text in HELD_OUT + OWN_EVAL:
        _set(root, dataset, "train", row, field, text)
    return root


def _keys(root: Path, planted: list[tuple[str, int, str, str]]) -> dict[str, list[str]]:
    plan = load_plan(root / "pipeline.yaml", templates=root / "templates")
    out: dict[str, list[str]] = {}
    for dataset, row, _, _ in planted:
        keys = [k for k, _ in read_examples(plan.collection.datasets[dataset], "train", plan.source)]
        out.setdefault(dataset, []).append(keys[row])
    return out


def _dirty(out: Path) -> dict[str, int]:
    audit = audit_output(out)
    return {f"{s}/{d}": c["dirty"] for s, v in audit["splits"].items() for d, c in v["contamination"].items()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    root = _world(tmp_path_factory.mktemp("plain"))
    compile_world(root, "out")
    return root


def test_the_planted_overlaps_are_contamination_without_decontaminate(plain):
    dirty = _dirty(plain / "out")
    assert dirty["natural_language_inference/rte"] == 2 and dirty["sentiment/senti"] == 1
    top = json.loads((plain / "out" / "manifest.json").read_text())
    assert "decontamination" not in top and "decontaminated" not in top["datasets"]["senti"]["read"]["train"]


@pytest.mark.parametrize("against, planted", [("held_out", HELD_OUT), ("all_eval", HELD_OUT + OWN_EVAL)])
def test_decontaminate_drops_exactly_the_planted_examples_and_the_audit_finds_none(tmp_path, against, planted):
    root = _world(tmp_path, f"decontaminate: {{ngram: 13, against: {against}}}\n")
    compile_world(root, "out")
    expected = _keys(root, planted)
    top = json.loads((root / "out" / "manifest.json").read_text())
    datasets = top["decontamination"]["datasets"]
    assert {d: sorted(v["keys"]) for d, v in datasets.items() if v["dropped"]} == {
        d: sorted(k) for d, k in expected.items()}
    assert {d: v["dropped"] for d, v in datasets.items()} == {d: len(expected.get(d, [])) for d in ("para", "rte",
                                                                                                     "senti")}
    assert top["decontamination"]["dropped"] == len(planted)
    for d in ("para", "rte", "senti"):
        read = top["datasets"][d]["read"]["train"]
        assert read["read"] == 60 and read["decontaminated"] == len(expected.get(d, []))
        assert read["kept"] == 60 - len(expected.get(d, []))
    nli = json.loads((root / "out" / "natural_language_inference" / "manifest.json").read_text())
    assert nli["train_examples_available"] == {"senti": 60 - len(expected["senti"])}
    # the mixture (400 uses of the clean senti examples) holds every clean example and no planted one
    seen = set()
    for path in (root / "out" / "natural_language_inference" / "examples").glob("*.parquet"):
        seen |= set(pq.read_table(path, columns=["example_key"]).column("example_key").to_pylist())
    all_keys = {k for k, _ in read_examples(load_plan(root / "pipeline.yaml", templates=root / "templates")
                                            .collection.datasets["senti"], "train",
                                            load_plan(root / "pipeline.yaml", templates=root / "templates").source)}
    assert seen == all_keys - set(expected["senti"])
    assert set(_dirty(root / "out").values()) == {0}
    audit = audit_output(root / "out")
    assert audit["datasets"]["senti"]["decontaminated"] == len(expected["senti"])
    assert audit["decontamination"]["dropped"] == len(planted)
    assert f"The compile dropped {len(planted)} train examples" in render_html(audit)
    lines = decontamination_lines(top)
    assert len(lines) == len(expected) and any(f"dropped {len(expected['senti'])} train example(s) of senti" in line
                                               for line in lines)


def test_an_example_is_contaminated_by_any_of_its_texts():
    eval_ngrams, _, _ = ngram_hashes(pa.array([LONG[0]]), 13)
    d = index_of(13, {"e": np.unique(eval_ngrams)})
    assert isinstance(d, Decontamination) and d.against == ("e",)
    dirty = contaminated([["short text", LONG[0][:40]], ["x", "y " + LONG[0]], []], d)
    assert dirty.tolist() == [False, True, False]
    assert index_of(13, {"e": np.unique(eval_ngrams)}).digest == d.digest != index_of(12, {"e": eval_ngrams}).digest


def test_a_decontaminated_compile_is_byte_identical_on_two_workers(tmp_path):
    root = _world(tmp_path, "decontaminate: {ngram: 13, against: held_out}\n")
    compile_world(root, "out")
    compile_world(root, "mp", workers=2, mode="multi_processing", cache_dir=str(tmp_path / "cache-2"))
    files = [json.loads((root / o / "manifest.json").read_text())["files"] for o in ("out", "mp")]
    assert files[0] == files[1]
