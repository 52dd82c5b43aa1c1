"""trainer.data: manifests, the refusal of mismatched splits, the grain loader and featurization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trainer_fixtures as fx

from flanpipe import packing
from flanpipe.errors import OutputError, SpecError, TokenizerError
from flanpipe.schema import RecordLayout, SpecialIds
from trainer import data
from trainer.config import load_config

T5 = SpecialIds(pad=0, eos=1)  # the fixture tokenizer's ids
TINY = Path(__file__).resolve().parent.parent / "trainer" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.shared_split(tmp_path_factory)


@pytest.fixture
def split_copy(split_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(split_dir.parent, tmp_path / "out")
    return tmp_path / "out" / split_dir.name


def _first(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def test_open_split_reads_both_manifests(split_dir: Path) -> None:
    split = data.open_split(split_dir)
    assert (split.name, split.layout, split.inputs_length, split.targets_length) == ("heldout", "decoder_only", 48, 16)
    assert split.vocab_size == fx.VOCAB and len(split.shards) == 2 and split.rows > 50
    assert set(split.eval_sets) == {"colors", "copy", "echo"} and set(split.fewshot_eval_sets) == {"colors"}
    assert split.eval_sets["colors"].kind == "classification" and split.eval_sets["echo"].metric == "rouge"
    assert data.load_tokenizer(split).vocab_size == fx.VOCAB and split.special == SpecialIds(pad=0, eos=1)


@pytest.mark.parametrize(
    ("override", "field"),
    [("model.vocab_size=100", "model.vocab_size"), ("model.layout=encoder_decoder", "model.layout"),
     ("data.inputs_length=32", "data.inputs_length"), ("data.targets_length=8", "data.targets_length")],
)
def test_mismatched_split_is_refused_with_a_clear_error(split_dir: Path, override: str, field: str) -> None:
    config = load_config(TINY, [override])
    with pytest.raises(SpecError) as e:
        data.check_split(data.open_split(split_dir), config, TINY)
    message = str(e.value)
    assert field in message and "heldout" in message and "manifest.json" in message
    if field == "model.vocab_size":
        assert "is 100 but split 'heldout' has vocab_size 128" in message and "--set model.vocab_size=128" in message


def test_malformed_split_directories_raise_output_errors(split_copy: Path) -> None:
    top = split_copy.parent / "manifest.json"
    manifest = json.loads(top.read_text())
    top.write_text(json.dumps(dict(manifest, format="flanpipe/0")))
    with pytest.raises(OutputError, match="format is 'flanpipe/0'"):
        data.open_split(split_copy)
    top.write_text(json.dumps(manifest))
    split_manifest = split_copy / "manifest.json"
    sm = json.loads(split_manifest.read_text())
    split_manifest.write_text(json.dumps(dict(sm, train=dict(sm["train"], rows=sm["train"]["rows"] + 1))))
    with pytest.raises(OutputError, match="train.rows is"):
        data.train_dataset(data.open_split(split_copy), batch_rows=8, seed=0)
    del sm["lengths"]
    split_manifest.write_text(json.dumps(sm))
    with pytest.raises(OutputError, match="lengths: required field is missing"):
        data.open_split(split_copy)
    with pytest.raises(OutputError, match="not found"):
        data.open_split(split_copy.parent / "nope")


def test_tokenizer_that_differs_from_the_manifest_is_refused(split_copy: Path) -> None:
    tokenizer = split_copy.parent / "tokenizer.model"
    tokenizer.write_bytes(tokenizer.read_bytes() + b"x")
    with pytest.raises(TokenizerError, match="sha256"):
        data.load_tokenizer(data.open_split(split_copy))


def test_loader_is_deterministic_per_seed(split_dir: Path) -> None:
    split = data.open_split(split_dir)
    a = _first(iter(data.train_dataset(split, batch_rows=8, seed=1)), 3)
    b = _first(iter(data.train_dataset(split, batch_rows=8, seed=1, read_threads=2, prefetch_batches=4)), 3)
    c = _first(iter(data.train_dataset(split, batch_rows=8, seed=2)), 3)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not all(np.array_equal(x["decoder_target_tokens"], z["decoder_target_tokens"]) for x, z in zip(a, c))
    assert a[0]["decoder_target_tokens"].shape == (8, 64) and a[0]["decoder_target_tokens"].dtype == np.int32


def test_each_epoch_is_a_permutation_of_all_rows(split_dir: Path) -> None:
    split = data.open_split(split_dir)
    rows = split.rows
    it = iter(data.train_dataset(split, batch_rows=1, seed=0))
    epoch1 = [next(it)["decoder_target_tokens"][0].tobytes() for _ in range(rows)]
    epoch2 = [next(it)["decoder_target_tokens"][0].tobytes() for _ in range(rows)]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    assert len(set(epoch1)) > rows * 0.9  # nearly all packed rows are distinct


def test_processes_split_the_global_batch(split_dir: Path) -> None:
    split = data.open_split(split_dir)
    whole = _first(iter(data.train_dataset(split, batch_rows=8, seed=0)), 2)
    parts = [_first(iter(data.train_dataset(split, batch_rows=8, seed=0, process_index=p, process_count=2)), 2)
             for p in range(2)]
    for step in range(2):
        assert parts[0][step]["decoder_target_tokens"].shape == (4, 64)
        union = np.concatenate([parts[p][step]["decoder_target_tokens"] for p in range(2)])
        assert sorted(map(bytes, union)) == sorted(map(bytes, whole[step]["decoder_target_tokens"]))


def test_iterator_state_resumes_with_the_exact_next_batch(split_dir: Path) -> None:
    split = data.open_split(split_dir)
    it = iter(data.train_dataset(split, batch_rows=8, seed=0, read_threads=2, prefetch_batches=2))
    _first(it, 3)
    state = it.get_state()
    expected = next(it)
    resumed = iter(data.train_dataset(split, batch_rows=8, seed=0))
    resumed.set_state(state)
    got = next(resumed)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("layout", ["decoder_only", "encoder_decoder"])
@pytest.mark.parametrize("truncate", ["right", "left"])
def test_featurize_builds_the_rows_the_compiler_packs(layout: str, truncate: str) -> None:
    inputs, targets = [5, 6, 7, 8, 9, 10, 11, 12, 13], [8, 9]  # inputs longer than 8 - 1: truncated
    record_layout = RecordLayout(layout, 8, 4)  # type: ignore[arg-type]
    items = packing.Items.from_lists([inputs], [targets])
    t = packing.trim(items, record_layout, side=truncate)
    one = packing.Placement(np.zeros(1, np.int64), np.ones(1, np.int64), 1)
    compiled = {k: v[0] for k, v in packing.build_rows(items, t, one, record_layout, special=T5).items()}
    kept_in = items.input_values[t.input_start[0]:t.input_start[0] + t.input_kept[0]].tolist() + [T5.eos]
    kept_out = items.target_values[:t.target_kept[0]].tolist() + [T5.eos]
    fixture = fx.pack([(kept_in, kept_out)], record_layout)[0]
    row = data.featurize(inputs, targets, layout=layout, inputs_length=8, targets_length=4,  # type: ignore[arg-type]
                         special=T5, truncate=truncate)  # type: ignore[arg-type]
    assert set(row) == set(compiled) == set(fixture)
    for name in row:
        assert row[name].tolist() == compiled[name].tolist() == fixture[name].tolist(), name
    if layout == "decoder_only":
        assert row["decoder_causal_attention"].tolist() == [1] * 9 + [0] * 3  # inputs + EOS + first target
        assert row["decoder_loss_weights"].tolist() == [0] * 8 + [1] * 3 + [0]


def test_featurize_reserves_prompt_slots_and_truncates() -> None:
    row = data.featurize(list(range(2, 20)), list(range(30, 40)), layout="decoder_only", inputs_length=8,
                         targets_length=4, special=T5, prompt_length=3)
    assert row["decoder_target_tokens"].tolist() == [0, 0, 0, 2, 3, 4, 5, 6, 7, 8, 1, 30, 31, 32, 1]
    assert row["decoder_causal_attention"].tolist() == [1] * 12 + [0] * 3
    assert row["decoder_loss_weights"].tolist() == [0] * 11 + [1] * 4
    assert row["decoder_positions"].tolist() == list(range(15))
