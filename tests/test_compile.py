"""Compile end to end on a small world: determinism, round trip, cache, atomicity, verify, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np
import pyarrow.parquet as pq
import pytest

from flanpipe.compiler import CompileOptions, run_compile
from flanpipe.errors import OutputError, SpecError, TokenizerError
from flanpipe.packing import unpack
from flanpipe.records import decode_example
from flanpipe.schema import RecordLayout
from flanpipe.tokenizer import Tokenizer
from flanpipe.verify import verify_output

from compile_fixtures import compile_world, make_world


def _compile(world: Path, out: str, **kw):
    if "cache_dir" in kw:
        kw["cache_dir"] = str(kw["cache_dir"])
    return compile_world(world, out, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(root)
    _compile(root, "out")
    return root


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / "manifest.json").read_text())["files"]


def test_output_layout_and_verify(world):
    out = world / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == ["natural_language_inference", "sentiment"]
    split = json.loads((out / "sentiment" / "manifest.json").read_text())
    assert split["train"]["shards"] == ["train/00000-of-00002.array_record", "train/00001-of-00002.array_record"]
    assert set(split["eval"]) == {"senti"} and split["removed_clusters"] == ["sentiment"]
    assert split["summary"]["examples"] == 100
    assert verify_output(out) == []


def test_two_runs_are_byte_identical_with_cold_and_warm_cache(world, tmp_path):
    result = _compile(world, "again", cache_dir=tmp_path / "fresh-cache")
    assert sorted(result.cache_misses) == ["para", "rte", "senti"]
    assert _files(world / "again") == _files(world / "out")
    warm = _compile(world, "warm")
    assert warm.cache_misses == [] and _files(world / "warm") == _files(world / "out")


def test_multi_processing_runner_gives_the_same_bytes(world, tmp_path):
    _compile(world, "mp", workers=2, mode="multi_processing", cache_dir=tmp_path / "mp-cache")
    assert _files(world / "mp") == _files(world / "out")


def test_packed_rows_round_trip_to_the_rendered_examples(world):
    out = world / "out" / "natural_language_inference"
    layout = RecordLayout("decoder_only", 64, 16)
    tok = Tokenizer.from_file(world / "out" / "tokenizer.model")
    eos = json.loads((world / "out" / "manifest.json").read_text())["tokenizer"]["eos_id"]
    assert eos == tok.special.eos == 1  # the world's T5-style model
    examples = pq.read_table(out / "examples" / "00000-of-00002.parquet").to_pylist()
    source = grain.sources.ArrayRecordDataSource([str(out / "train" / "00000-of-00002.array_record")])
    rows = [decode_example(source[i], layout) for i in range(len(source))]
    assert len(rows) == max(e["row"] for e in examples) + 1
    for e in examples:
        seg_in, seg_out = unpack(rows[e["row"]], layout)[e["segment"] - 1]
        want_in = tok.encode_batch([e["inputs"]])[0]
        want_out = tok.encode_batch([e["targets"]])[0]
        if e["input_truncated"]:
            want_in = want_in[:layout.inputs_length - 1]
        assert seg_in.tolist() == want_in + [eos]
        assert seg_out.tolist() == want_out[:layout.targets_length - 1] + [eos]
        assert tok.decode(seg_out) == e["targets"]


def test_segments_isolate_examples_and_loss_is_on_targets_only(world):
    layout = RecordLayout("decoder_only", 64, 16)
    table = pq.read_table(world / "out" / "sentiment" / "train" / "00001-of-00002.parquet").to_pylist()
    for row in table:
        r = {k: np.asarray(v) for k, v in row.items()}
        seg, pos, loss = r["decoder_segment_ids"], r["decoder_positions"], r["decoder_loss_weights"]
        # positions restart at every segment start and the shifted inputs never cross a boundary
        starts = np.flatnonzero(np.diff(np.concatenate([[0], seg])) != 0)
        for s in starts:
            if seg[s] > 0:
                assert pos[s] == 0 and r["decoder_input_tokens"][s] == 0
        for s_id, (inp, tgt) in enumerate(unpack(r, layout), 1):
            mask = seg == s_id
            assert loss[mask].sum() == len(tgt) and tgt[-1] == 1 and inp[-1] == 1  # the world model's eos
            # loss-weighted tokens are exactly the target part; the causal prefix covers input + 1
            assert r["decoder_causal_attention"][mask].sum() == len(inp) + 1
        assert loss[seg == 0].sum() == 0


def test_realized_mixture_matches_rates(world):
    split = json.loads((world / "out" / "natural_language_inference" / "manifest.json").read_text())
    total = split["summary"]["examples"]
    for d, planned in split["planned_rates"].items():
        # largest-remainder allocation: realized share is within one example of the plan
        assert abs(split["realized_rates"][d] - planned) <= 1 / total + 1e-12


def test_editing_one_template_rerenders_only_that_dataset(world, tmp_path):
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(world, copy, ignore=shutil.ignore_patterns("out", "again", "warm", "mp"))
    pipe = copy / "pipeline.yaml"
    pipe.write_text(pipe.read_text().replace(f"dir: {world / 'samples'}", f"dir: {copy / 'samples'}"))
    _compile(copy, "one")
    senti = copy / "templates" / "sentiment" / "senti.yaml"
    senti.write_text(senti.read_text().replace("Variant 3: summarise", "Variant 3: please summarise"))
    assert _compile(copy, "two").cache_misses == ["senti"]


def test_verify_detects_tampering_and_incomplete_output(world, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(world / "out", bad)
    shard = bad / "sentiment" / "train" / "00000-of-00002.parquet"
    shard.write_bytes(shard.read_bytes() + b"x")
    problems = verify_output(bad)
    assert any("00000-of-00002.parquet: sha256" in p for p in problems)
    (bad / "manifest.json").unlink()
    assert "no manifest.json" in verify_output(bad)[0]


def test_bad_inputs_fail_before_the_job(world, tmp_path):
    pipe = world / "pipeline.yaml"
    no_tok = tmp_path / "p1.yaml"
    no_tok.write_text(pipe.read_text().replace("tokenizer: tok.model", f"tokenizer: {world / 'missing.model'}"))
    with pytest.raises(TokenizerError, match="missing.model: tokenizer model not found"):
        run_compile(no_tok, CompileOptions(out=tmp_path / "o1", templates=world / "templates"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    not_sp = tmp_path / "p2.yaml"
    not_sp.write_text(pipe.read_text().replace("tokenizer: tok.model", f"tokenizer: {junk}"))
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        run_compile(not_sp, CompileOptions(out=tmp_path / "o2", templates=world / "templates"))
    other = tmp_path / "p3.yaml"
    other.write_text(pipe.read_text().replace("name: base", "name: other")
                     .replace("tokenizer: tok.model", f"tokenizer: {world / 'tok.model'}"))
    with pytest.raises(OutputError, match="holds the output of pipeline 'base', not 'other'.*--overwrite"):
        run_compile(other, CompileOptions(out=world / "out", templates=world / "templates"))
    with pytest.raises(SpecError, match="--split: unknown split 'nli'"):
        run_compile(pipe, CompileOptions(out=tmp_path / "o3", templates=world / "templates", splits=("nli",)))


FEWSHOT = """
fewshot:
  max_exemplars: 4
  max_tokens: 200
  input_target_separator: "\\nAnswer: "
  exemplar_separator: "\\n\\n"
"""


def test_fewshot_pipeline_builds_fewshot_train_and_eval_sets(tmp_path):
    make_world(tmp_path, pipeline_extra=FEWSHOT)
    result = _compile(tmp_path, "out")
    split = json.loads((tmp_path / "out" / "sentiment" / "manifest.json").read_text())
    assert set(split["fewshot_eval"]) == {"senti"}
    zero = pq.read_table(tmp_path / "out" / "sentiment" / "eval" / "senti.parquet").to_pylist()
    few = pq.read_table(tmp_path / "out" / "sentiment" / "fewshot_eval" / "senti.parquet").to_pylist()
    assert len(few) == len(zero)
    tok = Tokenizer.from_file(tmp_path / "out" / "tokenizer.model")
    with_shots = 0
    for z, f in zip(zero, few):
        assert f["inputs"].endswith(z["inputs"]) and f["targets"] == z["targets"]
        prefix = f["inputs"][: -len(z["inputs"])]
        if prefix:
            with_shots += 1
            assert "\nAnswer: " in prefix
            assert len(tok.encode_batch([prefix])[0]) <= 200 - len(tok.encode_batch([z["inputs"]])[0])
    assert with_shots > len(few) // 2
    examples = pq.read_table(tmp_path / "out" / "natural_language_inference" / "examples").to_pylist()
    assert sum("\nAnswer: " in e["inputs"] for e in examples) > len(examples) // 2
    assert result.manifest["pipeline"]["resolved"]["fewshot"]["max_exemplars"] == 4


def test_a_second_compile_into_a_busy_directory_is_refused(world, tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".compile.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another flanpipe compile is writing this directory"):
            _compile(world, str(out))
    _compile(world, str(out))  # free again
    assert verify_output(out) == [] and not (out / ".compile.lock").exists()


def test_splits_with_the_same_mixture_are_computed_once_and_copied(tmp_path):
    make_world(tmp_path)
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(pipe.read_text().replace("held_out: [natural_language_inference, sentiment]",
                                             "held_out: [natural_language_inference, paraphrase, sentiment]"))
    result = _compile(tmp_path, "out")
    nli, para = (json.loads((tmp_path / "out" / s / "manifest.json").read_text())
                 for s in ("natural_language_inference", "paraphrase"))
    # NLI and paraphrase remove each other: one train mixture, packed once, copied into the other split
    assert nli["train"]["computed_in"] == para["train"]["computed_in"] == "natural_language_inference"
    shards = [f for f in nli["files"] if f.startswith(("train/", "examples/"))]
    assert shards and all(nli["files"][f] == para["files"][f] for f in shards)
    assert set(nli["eval"]) == {"rte"} and set(para["eval"]) == {"para"}  # the eval sets differ
    senti = json.loads((tmp_path / "out" / "sentiment" / "manifest.json").read_text())
    assert senti["train"]["computed_in"] == "sentiment"
    assert verify_output(tmp_path / "out") == [] and len(result.manifest["splits"]) == 3


def test_a_pipeline_of_the_chain_of_thought_cluster_compiles_on_the_bundled_samples(tmp_path):
    """The opt-in cluster, named by a pipeline: trained on in one split, held out (eval sets) in the other."""
    pipeline = tmp_path / "cot.yaml"
    pipeline.write_text(f"extends: {Path(__file__).resolve().parent.parent / 'pipelines' / 'flan2021.yaml'}\n"
                        "name: cot\nclusters: [chain_of_thought, sentiment]\n"
                        "held_out: [chain_of_thought, sentiment]\nmixture_size: {examples: 400}\noutput: {shards: 1}\n")
    result = run_compile(pipeline, CompileOptions(out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))
    out = tmp_path / "out"
    assert verify_output(str(out)) == []
    cot = {"esnli", "gsm8k", "qasc"}
    trained = pq.read_table(out / "sentiment" / "examples").to_pylist()
    assert {e["dataset"] for e in trained} == cot and len(trained) == 400
    for e in trained:
        assert e["targets"].strip() and "<<" not in e["targets"]  # gsm8k's calculator annotations are removed
    held = json.loads((out / "chain_of_thought" / "manifest.json").read_text())
    assert set(held["eval"]) == cot and held["removed_clusters"] == ["natural_language_inference", "chain_of_thought"]
    assert {info["metric"] for info in held["eval"].values()} == {"rouge"}
    rows = pq.read_table(out / "chain_of_thought" / "eval" / "gsm8k.parquet").to_pylist()
    assert len(rows) == 10 * (10 + 10) and {r["template"] for r in rows} == set(range(10))
    assert all(r["targets"].rstrip(".").split()[-1].isdigit() for r in rows if not r["turned"])
    assert result.manifest["summary"]["sentiment"]["turned"] > 0
