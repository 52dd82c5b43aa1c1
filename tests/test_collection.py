"""The bundled collection: every dataset file validates, and renders all 10 templates on its samples."""

from __future__ import annotations

import re

import pytest

from flanpipe.collection import TEMPLATES_DIR, dataset_files, load_collection
from flanpipe.sources import read_samples
from flanpipe.spec import load_dataset_file
from flanpipe.templates import CompiledDataset

DATASET_FILES = dataset_files(TEMPLATES_DIR)
MIN_SAMPLES = {"train": 40, "validation": 10, "test": 10}


def test_collection_loads_clean():
    problems: list = []
    collection = load_collection(errors=problems)
    assert problems == []
    # FLAN 2021's 12 clusters are the default collection; Flan 2022's chain of thought is opt-in
    assert len(collection.taxonomy.default_clusters()) == 12
    assert [c for c in collection.taxonomy.clusters if c not in collection.taxonomy.default_clusters()] == [
        "chain_of_thought"]


def test_every_listed_dataset_has_a_file():
    collection = load_collection()
    listed = {d for c in collection.taxonomy.clusters.values() for d in c.datasets + c.eval_only}
    assert listed == set(collection.datasets)
    flan2021 = {d for name in collection.taxonomy.default_clusters()
                for d in collection.taxonomy.clusters[name].datasets + collection.taxonomy.clusters[name].eval_only}
    assert len(flan2021) == 70
    assert listed - flan2021 == {"esnli", "gsm8k", "qasc"}


@pytest.mark.parametrize("path", DATASET_FILES, ids=lambda p: p.stem)
def test_dataset_renders_every_template_on_its_samples(path):
    spec, located = load_dataset_file(path)
    compiled = CompiledDataset(spec, located, cluster_title="Cluster")
    assert len(spec.templates) == 10 and sum(t.turned for t in spec.templates) <= 3  # the paper's ten
    for split in spec.source.splits:
        rows = list(read_samples(spec, split))
        assert len(rows) >= MIN_SAMPLES[split], f"{spec.name}/{split}: {len(rows)} samples"
        kept = 0
        for key, features in rows:
            values = compiled.fields_of(features)
            if values is None:
                continue
            kept += 1
            for t, template in enumerate(spec.templates):
                r = compiled.render(values, t)
                assert r.inputs.strip() and r.targets.strip(), f"{spec.name} {key} template {t}: empty render"
                if spec.kind == "classification" and not template.turned:
                    assert r.targets in r.options, f"{spec.name} {key} template {t}: target not an option"
                    assert r.inputs.endswith(r.options[-1])
            for mode in ("dataset_name", "none"):
                r = compiled.render(values, 0, mode=mode)
                assert r.inputs.strip() and r.targets.strip()
        assert kept >= MIN_SAMPLES[split] * 0.8, f"{spec.name}/{split}: filter dropped too many samples"


CLASSIFICATION_FILES = [p for p in DATASET_FILES if "kind: classification" in p.read_text()]


@pytest.mark.parametrize("path", CLASSIFICATION_FILES, ids=lambda p: p.stem)
def test_classification_labels_cover_several_options(path):
    spec, located = load_dataset_file(path)
    assert spec.kind == "classification"
    compiled = CompiledDataset(spec, located)
    split = "train" if "train" in spec.source.splits else "test"  # wsc273 has only a test split
    answers = {v["options"].index(v["answer"]) for _, f in read_samples(spec, split)
               if (v := compiled.fields_of(f)) is not None}
    assert len(answers) >= 2, f"{spec.name}: {split} samples use only answer positions {answers}"


COT_FILES = [p for p in DATASET_FILES if p.parent.name == "chain_of_thought"]


@pytest.mark.parametrize("path", COT_FILES, ids=lambda p: p.stem)
def test_chain_of_thought_targets_are_reasoning_then_the_answer(path):
    """Every non-turned target is the reasoning followed by the answer, on every sample; turned ones ask for the
    question (or a sentence of the pair) and contain the answer in the input."""
    spec, located = load_dataset_file(path)
    compiled = CompiledDataset(spec, located, cluster_title="Chain of thought")
    assert spec.kind == "generation" and 1 <= sum(t.turned for t in spec.templates) <= 3
    answer_field = {"gsm8k": "result", "esnli": "verdict", "qasc": "answer_text"}[spec.name]
    reasoning = {"gsm8k": ["reasoning"], "esnli": ["reason"], "qasc": ["fact_a", "fact_b"]}[spec.name]
    for split in spec.source.splits:
        for key, features in read_samples(spec, split):
            values = compiled.fields_of(features)
            assert values is not None, f"{spec.name}/{split} {key}: filtered out"
            answer = str(values[answer_field])
            assert answer and "<<" not in str(values[reasoning[0]])
            for t, template in enumerate(spec.templates):
                r = compiled.render(values, t)
                if template.turned:
                    stated = answer in r.inputs or values.get("relation", answer) in r.inputs  # esnli: or in words
                    assert stated and r.targets in (values.get("question"), values.get("hypothesis"),
                                                                values.get("premise")), (spec.name, key, t)
                    continue
                assert r.targets.rstrip(".").endswith(answer), (spec.name, key, t, r.targets)
                start = r.targets.index(str(values[reasoning[0]]))
                assert start == 0 and all(str(values[f]) in r.targets[:-len(answer) - 1] for f in reasoning), (
                    spec.name, key, t, r.targets)


def test_gsm8k_fields_split_the_solution_at_its_final_number():
    spec, located = load_dataset_file(TEMPLATES_DIR / "chain_of_thought" / "gsm8k.yaml")
    compiled = CompiledDataset(spec, located)
    values = compiled.fields_of({"question": "Q?", "answer": "He has 3*4 = <<3*4=12>>12 eggs.\n"
                                                             "He sells 12-2 = <<12-2=10>>10.\n#### 10"})
    assert values["reasoning"] == "He has 3*4 = 12 eggs.\nHe sells 12-2 = 10."
    assert values["result"] == "10"
    assert compiled.fields_of({"question": "Q?", "answer": "no final line"}) is None  # dropped by the filter
    for key, features in read_samples(spec, "train"):  # the samples carry the builder's own split of `answer`
        values = compiled.fields_of(features)
        assert values["result"] == features["short_answer"], key
        assert values["reasoning"].splitlines() == [
            line for line in _without_calculator(features["annotation"]).splitlines() if line.strip()], key


def _without_calculator(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)
