"""Reading prepared TFDS data (array_record) without TensorFlow, on a tiny dataset built in a tmp dir.

The tiny dataset is prepared by TFDS itself (a GeneratorBasedBuilder defined here and
``download_and_prepare(file_format='array_record')``), which works without TensorFlow, so the files
on disk (dataset_info.json, features.json, *.array_record-00000-of-00001) are the real layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tensorflow_datasets as tfds

from flanpipe import tfds_source  # noqa: E402
from flanpipe.errors import SourceError  # noqa: E402
from flanpipe.sources import count_examples, read_examples, source_fingerprint  # noqa: E402
from flanpipe.spec import DatasetSpec, TfdsDataSource, load_dataset_file  # noqa: E402
from flanpipe.templates import CompiledDataset, to_python  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RTE = REPO / "templates" / "natural_language_inference" / "rte.yaml"
N_TRAIN, N_VALIDATION = 30, 7


class FlanpipeTinyRte(tfds.core.GeneratorBasedBuilder):
    """An RTE-shaped dataset (+ a nested Sequence feature) with deterministic content."""

    VERSION = tfds.core.Version("1.0.2")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="rte")]

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "premise": tfds.features.Text(),
            "hypothesis": tfds.features.Text(),
            "idx": np.int32,
            "label": tfds.features.ClassLabel(names=["entailment", "not_entailment"]),
            "answers": tfds.features.Sequence({"text": tfds.features.Text(), "answer_start": np.int32}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, N_TRAIN), "validation": self._generate_examples(100, N_VALIDATION)}

    def _generate_examples(self, first, n):
        for i in range(first, first + n):
            yield i, {"premise": f"Premise number {i} é.", "hypothesis": f"Hypothesis {i}.", "idx": i,
                      "label": i % 2, "answers": {"text": [f"a{i}", "b"], "answer_start": [i, 0]}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tfds")
    FlanpipeTinyRte(data_dir=str(root)).download_and_prepare(file_format="array_record")
    return str(root)


def tiny_spec(**source) -> DatasetSpec:
    """The real rte.yaml, pointed at the tiny builder with slices that fit it."""
    spec, _ = load_dataset_file(RTE)
    src = {"tfds": "flanpipe_tiny_rte/rte:1.0.2",
           "splits": {"train": "train[:-10]", "validation": "train[-10:]", "test": "validation"}, "key": "idx"}
    src.update(source)
    return spec.model_copy(update={"source": spec.source.model_validate(src)})


# ------------------------------------------------------------------ reading
def test_layout_is_real_array_record(data_dir):
    d = Path(data_dir) / "flanpipe_tiny_rte" / "rte" / "1.0.2"
    names = {p.name for p in d.iterdir()}
    assert {"dataset_info.json", "features.json", "flanpipe_tiny_rte-train.array_record-00000-of-00001"} <= names
    assert json.loads((d / "dataset_info.json").read_text())["fileFormat"] == "array_record"


def test_split_sizes_follow_slices(data_dir):
    spec = tiny_spec()
    assert [tfds_source.split_size(spec, s, data_dir) for s in ("train", "validation", "test")] == [20, 10, 7]
    spec = tiny_spec(splits={"train": "train[25:]", "validation": "train[50%:]", "test": "validation[:0]"})
    assert [tfds_source.split_size(spec, s, data_dir) for s in ("train", "validation", "test")] == [5, 15, 0]
    assert list(tfds_source.read_split(spec, "test", data_dir)) == []


def test_read_split_slices_partition_the_split(data_dir, monkeypatch):
    monkeypatch.setattr(tfds_source, "BATCH", 3)  # several batches, one partial
    spec = tiny_spec()
    train = list(tfds_source.read_split(spec, "train", data_dir))
    validation = list(tfds_source.read_split(spec, "validation", data_dir))
    assert [i for i, _ in train] == list(range(20)) and [i for i, _ in validation] == list(range(10))
    ids = [int(f["idx"]) for _, f in train + validation]
    assert sorted(ids) == list(range(N_TRAIN))  # the two slices partition TFDS 'train' exactly
    whole = [int(f["idx"]) for _, f in tfds_source.read_split(tiny_spec(splits={"train": "train", "test": "validation"}),
                                                               "train", data_dir)]
    assert whole[:20] + whole[20:] == ids  # stored order, the slices are contiguous runs of it
    test = [to_python(f) for _, f in tfds_source.read_split(spec, "test", data_dir)]
    assert sorted(f["idx"] for f in test) == list(range(100, 100 + N_VALIDATION))
    one = next(f for f in test if f["idx"] == 101)
    assert one == {"premise": "Premise number 101 é.", "hypothesis": "Hypothesis 101.", "idx": 101, "label": 1,
                   "answers": {"text": ["a101", "b"], "answer_start": [101, 0]}}
    assert isinstance(train[0][1]["premise"], bytes)  # raw TFDS values; to_python decodes


def test_fingerprint(data_dir, tmp_path):
    spec = tiny_spec()
    a = tfds_source.fingerprint(spec, data_dir)
    assert a == tfds_source.fingerprint(spec, data_dir)
    assert a != tfds_source.fingerprint(tiny_spec(splits={"train": "train[:-11]", "validation": "train[-10:]",
                                                          "test": "validation"}), data_dir)
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    assert tfds_source.fingerprint(spec, str(copy)) == a  # content, not location
    info = copy / "flanpipe_tiny_rte" / "rte" / "1.0.2" / "dataset_info.json"
    info.write_text(info.read_text().replace('"30"', '"29"'))
    assert tfds_source.fingerprint(spec, str(copy)) != a


# ------------------------------------------------------------------ errors
def test_missing_data_dir(tmp_path):
    with pytest.raises(SourceError) as e:
        tfds_source.split_size(tiny_spec(), "train", str(tmp_path / "nope"))
    msg = str(e.value)
    assert "dataset 'rte' (templates/natural_language_inference/rte.yaml, tfds: flanpipe_tiny_rte/rte:1.0.2)" in msg
    assert "nope' does not exist" in msg
    assert f"tfds build flanpipe_tiny_rte/rte:1.0.2 --data_dir={tmp_path / 'nope'} --file_format=array_record" in msg


def test_not_prepared(data_dir, tmp_path):
    with pytest.raises(SourceError, match=r"not prepared in data_dir .*super_glue/rte/1\.0\.2 does not exist\. "
                                          r"Prepare it with: tfds build super_glue/rte:1\.0\.2 --data_dir=.* "
                                          r"--file_format=array_record"):
        list(tfds_source.read_split(tiny_spec(tfds="super_glue/rte:1.0.2"), "train", data_dir))
    with pytest.raises(SourceError, match=r"prepared versions there: 1\.0\.2; the dataset file pins 9\.9\.9.*"
                                          r"tfds build flanpipe_tiny_rte/rte:9\.9\.9"):
        tfds_source.split_size(tiny_spec(tfds="flanpipe_tiny_rte/rte:9.9.9"), "train", data_dir)
    with pytest.raises(SourceError, match="not prepared"):
        tfds_source.fingerprint(tiny_spec(tfds="flanpipe_tiny_rte/rte:9.9.9"), data_dir)
    half = tmp_path / "flanpipe_tiny_rte" / "rte" / "1.0.2"
    half.mkdir(parents=True)
    with pytest.raises(SourceError, match="exists but has no dataset_info.json"):
        tfds_source.split_size(tiny_spec(), "train", str(tmp_path))


def test_not_array_record(data_dir, tmp_path):
    shutil.copytree(data_dir, tmp_path, dirs_exist_ok=True)
    info = tmp_path / "flanpipe_tiny_rte" / "rte" / "1.0.2" / "dataset_info.json"
    data = json.loads(info.read_text())
    data["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"prepared in 'tfrecord' format, but flanpipe reads only 'array_record'.*"
                                          r"tfds build flanpipe_tiny_rte/rte:1\.0\.2 .*--file_format=array_record"):
        list(tfds_source.read_split(tiny_spec(), "train", str(tmp_path)))
    del data["fileFormat"]  # TFDS's default when absent is tfrecord
    info.write_text(json.dumps(data))
    with pytest.raises(SourceError, match="'tfrecord' format"):
        tfds_source.split_size(tiny_spec(), "train", str(tmp_path))


@pytest.mark.parametrize("expr, message", [
    ("train[:30000]", r"slice 'train\[:30000\]' does not fit TFDS split 'train' of 30 examples"),
    ("train[-200:]", r"slice 'train\[-200:\]' does not fit TFDS split 'train' of 30 examples"),
    ("train[:-40]", r"does not fit TFDS split 'train' of 30 examples"),
    ("train[20:10]", r"slice 'train\[20:10\]' of TFDS split 'train' \(30 examples\) is empty"),
    ("validation_matched", r"names TFDS split 'validation_matched', which the prepared data does not have "
                           r"\(it has: train, validation\)"),
])
def test_bad_slices(data_dir, expr, message):
    # TFDS does not clamp: a bound beyond the split raises, and we name the dataset and the slice.
    spec = tiny_spec(splits={"train": expr, "test": "validation"})
    with pytest.raises(SourceError, match=message):
        tfds_source.split_size(spec, "train", data_dir)
    with pytest.raises(SourceError, match=r"dataset 'rte' \(templates/natural_language_inference/rte\.yaml"):
        list(tfds_source.read_split(spec, "train", data_dir))


def test_missing_feature(data_dir):
    spec, _ = load_dataset_file(RTE)
    fields = dict(spec.fields)
    fields["premise"] = fields["premise"].model_copy(update={"feature": "sentence1"})
    bad = tiny_spec().model_copy(update={"fields": fields})
    with pytest.raises(SourceError, match=r"dataset 'rte' .*: fields\.premise reads feature 'sentence1', which the "
                                          r"prepared data at .*1\.0\.2 does not have: no feature 'sentence1' at the top "
                                          r"level \(there: answers, hypothesis, idx, label, premise\)"):
        tfds_source.split_size(bad, "train", data_dir)
    with pytest.raises(SourceError, match=r"source\.key reads feature 'id'"):
        list(tfds_source.read_split(tiny_spec(key="id"), "train", data_dir))


def test_feature_paths_nested(data_dir):
    features = tfds.builder_from_directory(f"{data_dir}/flanpipe_tiny_rte/rte/1.0.2").info.features
    assert tfds_source.missing_feature(features, "answers/text") is None
    assert tfds_source.missing_feature(features, "answers/answer_start") is None
    assert "no feature 'start' under 'answers' (there: answer_start, text)" in tfds_source.missing_feature(
        features, "answers/start")
    assert "'premise' has no sub-features (it is Text)" in tfds_source.missing_feature(features, "premise/x")
    tr = tfds.features.FeaturesDict({"translation": tfds.features.Translation(languages=["de", "en"])})
    assert tfds_source.missing_feature(tr, "translation/de") is None
    assert "no feature 'fr'" in tfds_source.missing_feature(tr, "translation/fr")
    tvl = tfds.features.FeaturesDict({"t": tfds.features.TranslationVariableLanguages(languages=["de", "en"])})
    assert tfds_source.missing_feature(tvl, "t/language") is None


# ------------------------------------------------------------------ end to end
def test_end_to_end_renders_rte_from_tfds(data_dir):
    spec = tiny_spec()
    source = TfdsDataSource(kind="tfds", data_dir=data_dir)
    assert count_examples(spec, "train", source) == 20
    assert len(source_fingerprint(spec, source)) == 64
    compiled = CompiledDataset(spec, cluster_title="Natural language inference")
    examples = list(read_examples(spec, "test", source))
    assert sorted(k for k, _ in examples) == sorted(f"test:{i}" for i in range(100, 107))  # key: idx
    for key, features in examples:
        values = compiled.fields_of(features)
        assert values["answer"] == ["yes", "no"][int(key.split(":")[1]) % 2]
        for t in range(len(spec.templates)):
            r = compiled.render(values, t)
            assert "{{" not in r.inputs and r.inputs and r.targets
        assert f"Premise number {key.split(':')[1]} é." in compiled.render(values, 0).inputs
    train_keys = [k for k, _ in read_examples(spec, "train", source)]
    assert len(set(train_keys)) == 20 and all(k.startswith("train:") for k in train_keys)


# ------------------------------------------------------------------ before the data: flanpipe sources / plan
def _tfds_world(root: Path, data_dir: str) -> Path:
    """templates/ with rte on the prepared tiny builder and two datasets on builders not prepared; a pipeline."""
    from conftest import PIPE, TINY_TAXONOMY, generation_yaml

    rte = RTE.read_text().replace("super_glue/rte:1.0.2", "flanpipe_tiny_rte/rte:1.0.2").replace(
        'splits: {train: "train[:-200]", validation: "train[-200:]", test: validation}',
        'splits: {train: "train[:-10]", validation: "train[-10:]", test: validation}')
    (root / "templates" / "natural_language_inference").mkdir(parents=True)
    (root / "templates" / "natural_language_inference" / "rte.yaml").write_text(rte)
    for name, cluster in (("para", "paraphrase"), ("senti", "sentiment")):
        (root / "templates" / cluster).mkdir()
        (root / "templates" / cluster / f"{name}.yaml").write_text(generation_yaml(name, cluster))
    (root / "templates" / "taxonomy.yaml").write_text(TINY_TAXONOMY)
    pipe = root / "pipeline.yaml"
    pipe.write_text(PIPE.replace("source: {kind: samples}", f"source: {{kind: tfds, data_dir: {data_dir}}}")
                    .replace("tokenizer: tok.model", f"tokenizer: {REPO / 'flanpipe' / 'assets' / 'flanpipe_sp8k.model'}")
                    .replace("held_out: [natural_language_inference]", "held_out: [sentiment]"))
    return pipe


def test_sources_lists_what_is_prepared_and_how_to_prepare_the_rest(data_dir, tmp_path):
    from typer.testing import CliRunner

    from flanpipe.cli import app

    pipe = _tfds_world(tmp_path, data_dir)
    script = tmp_path / "prepare.sh"
    result = CliRunner().invoke(app, ["sources", str(pipe), "--templates", str(tmp_path / "templates"),
                                      "--script", str(script)])
    assert result.exit_code == 1, result.output  # not everything is ready
    out = result.output
    assert "1 of 3 dataset(s) ready" in out and "rte" in out and "demo/para:1.0.0" in out
    from flanpipe.plan import load_plan
    from flanpipe.sources import availability

    plan = load_plan(pipe, templates=tmp_path / "templates", require_data=False)
    rows = {r.dataset: r for r in availability([plan.collection.datasets[d] for d in plan.datasets], plan.source)}
    assert rows["rte"].ready and rows["rte"].counts == {"train": 20, "validation": 10, "test": 7}  # sliced
    assert not rows["para"].ready and "does not exist" in rows["para"].state
    assert rows["para"].command == f"tfds build demo/para:1.0.0 --data_dir={data_dir} --file_format=array_record"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    commands = [line for line in text.splitlines() if line.startswith("tfds build")]
    assert commands == [f"tfds build demo/{n}:1.0.0 --data_dir={data_dir} --file_format=array_record"
                        for n in ("para", "senti")]


def test_plan_works_before_the_data_is_there(data_dir, tmp_path):
    from typer.testing import CliRunner

    from flanpipe.cli import app
    from flanpipe.plan import load_plan

    pipe = _tfds_world(tmp_path, data_dir)
    plan = load_plan(pipe, templates=tmp_path / "templates", require_data=False)
    assert plan.counts == {"para": None, "rte": 20, "senti": None}
    assert plan.splits[0].train == ("rte", "para") and plan.splits[0].rates == {}
    with pytest.raises(SourceError, match="demo/para:1.0.0"):
        load_plan(pipe, templates=tmp_path / "templates")  # a compile needs the data
    result = CliRunner().invoke(app, ["plan", str(pipe), "--templates", str(tmp_path / "templates"), "--rates"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "2 dataset(s) not prepared, counts and rates unknown: para, senti" in result.output
    assert "20 + 1 unknown" in result.output


def test_status_of_one_dataset(data_dir, tmp_path):
    ready = tfds_source.status(tiny_spec(), data_dir)
    assert ready.prepared and ready.counts == {"train": 20, "validation": 10, "test": 7}
    missing = tfds_source.status(tiny_spec(tfds="flanpipe_tiny_rte/rte:9.9.9"), data_dir)
    assert not missing.prepared and "prepared versions there: 1.0.2" in missing.state
    assert missing.command.startswith("tfds build flanpipe_tiny_rte/rte:9.9.9 ")
    too_big = tfds_source.status(tiny_spec(splits={"train": "train[:500]", "test": "validation"}), data_dir)
    assert not too_big.prepared and "does not fit" in too_big.state
