"""The bundled collection: every dataset file validates, and renders all 10 templates on its samples."""

from __future__ import annotations

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
    assert len(collection.taxonomy.clusters) == 12


def test_every_listed_dataset_has_a_file():
    collection = load_collection()
    listed = {d for c in collection.taxonomy.clusters.values() for d in c.datasets + c.eval_only}
    assert listed == set(collection.datasets)
    assert len(listed) == 70


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
