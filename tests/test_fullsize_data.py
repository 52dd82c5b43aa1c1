"""The synthetic full-size collection generator: sizes, keys, determinism, reuse, and that every example compiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flanpipe.collection import load_collection
from flanpipe.sources import read_samples
from flanpipe.templates import CompiledDataset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import fullsize_data as fd  # noqa: E402

FRACTION = 0.002


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.jsonl"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fullsize")
    return out, fd.generate(out, fraction=FRACTION, workers=1)


def test_slices_follow_python_semantics():
    assert fd.slice_size("train[:-200]", {"train": 2490}) == 2290
    assert fd.slice_size("train[:30000]", {"train": 16946}) == 16946
    assert fd.slice_size("train[-600:-500]", {"train": 2259}) == 100
    assert fd.slice_size("train[30200:60200]", {"train": 2414895}) == 30000
    assert fd.slice_size("validation_matched", {"validation_matched": 9815}) == 9815
    with pytest.raises(ValueError):
        fd.slice_size("train[:10%]", {"train": 100})


def test_full_sizes():
    full = fd.sizes(1.0)
    assert len(full) == 70
    assert full["bool_q"] == {"train": 9227, "validation": 200, "test": 3270}
    assert full["wsc273"] == {"test": 273}
    assert full["story_cloze"]["train"] == 1671
    assert 1_450_000 < sum(s.get("train", 0) for s in full.values()) < 1_550_000
    small = fd.sizes(FRACTION)
    assert all(s["train"] >= 40 for s in small.values() if "train" in s)
    assert all(n >= 10 for s in small.values() for n in s.values())


def test_counts_and_unique_keys(generated):
    out, result = generated
    plan = fd.sizes(FRACTION)
    assert result["counts"] == plan and not result["reused"]
    assert result["bytes"] == sum(len(b) for b in files(out).values())
    collection = load_collection()
    for name, splits in plan.items():
        for split, n in splits.items():
            # read_samples raises on a duplicate key; it keys split:index when the dataset has no key
            keys = [key for key, _ in read_samples(collection.datasets[name], split, out)]
            assert len(keys) == n, f"{name}/{split}"
            assert len(set(keys)) == n, f"{name}/{split}"


def test_every_example_passes_its_field_map(generated):
    out, _ = generated
    for name, spec in fd._datasets().items():  # FLAN 2021's: the generator writes no opt-in cluster
        compiled = CompiledDataset(spec, cluster_title="x")
        kept = 0
        for split in spec.source.splits:
            for _, features in read_samples(spec, split, out):
                values = compiled.fields_of(features)
                if values is None:
                    continue
                kept += 1
                for t in range(10):
                    compiled.render(values, t)
        assert kept, name


def test_markers_and_spans_survive_rewriting(generated):
    out, _ = generated
    for line in (out / "wsc273" / "test.jsonl").read_text().splitlines():
        ex = json.loads(line)
        assert ex["text"][ex["pronoun_start"]:ex["pronoun_end"]] == ex["pronoun_text"]
    for line in (out / "record" / "train.jsonl").read_text().splitlines():
        ex = json.loads(line)
        assert "@placeholder" in ex["query"] and "@highlight" in ex["passage"]
    sentences = [json.loads(line)["sentence"] for line in (out / "winogrande" / "train.jsonl").open()]
    assert all("_" in s for s in sentences)  # the blank the options are spliced into


def test_long_fields_reach_real_lengths(generated):
    out, _ = generated
    stats = fd.longest_field_words(out)
    for name in ("cnn_dailymail", "multi_news", "wmt16_translate_deen", "quac"):
        field, words = stats[name]
        assert 0.75 * fd.REAL_WORDS[name] < words < 1.25 * fd.REAL_WORDS[name], (name, field, words)
    # short-text datasets stay short, categorical strings stay as bundled
    assert stats["snli"][1] < 30
    labels = {json.loads(line)["activity_label"] for line in (out / "hellaswag" / "train.jsonl").open()}
    bundled = {json.loads(line)["activity_label"]
               for line in (REPO / "templates" / "samples" / "hellaswag" / "train.jsonl").open()}
    assert labels <= bundled


def test_deterministic_reused_and_regenerated(generated, tmp_path):
    out, _ = generated
    again = fd.generate(tmp_path, fraction=FRACTION, workers=2)  # worker count must not matter
    assert not again["reused"]
    assert files(tmp_path) == files(out)
    stamp = (tmp_path / "cnn_dailymail" / "train.jsonl").stat().st_mtime_ns
    assert fd.generate(tmp_path, fraction=FRACTION)["reused"]
    assert (tmp_path / "cnn_dailymail" / "train.jsonl").stat().st_mtime_ns == stamp
    other = fd.generate(tmp_path, fraction=FRACTION, seed=1, workers=1)
    assert not other["reused"]
    assert json.loads((tmp_path / fd.COMPLETE).read_text())["seed"] == 1
    assert files(tmp_path).keys() == files(out).keys() and files(tmp_path) != files(out)
