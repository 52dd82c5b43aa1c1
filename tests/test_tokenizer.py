"""Tokenizer: the shipped default model, its recorded sha256, T5 ids, batching, pickling, bad files; models with
other ids (Llama-style SentencePiece, BPE tokenizer.json) compiled, unpacked and decoded back; id overrides."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import grain
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import tokenizers as hf

from flanpipe.errors import SpecError, TokenizerError
from flanpipe.packing import unpack
from flanpipe.records import decode_example
from flanpipe.schema import RecordLayout, SpecialIds
from flanpipe.spec import TokenizerSpec, load_pipeline
from flanpipe.tokenizer import DEFAULT_MODEL, Tokenizer, train_tokenizer
from flanpipe.verify import verify_output
from trainer import data

from compile_fixtures import compile_world, make_world
from conftest import PIPE


def test_default_model_matches_its_recorded_sha256():
    recorded = DEFAULT_MODEL.with_name(DEFAULT_MODEL.name + ".sha256").read_text().split()[0]
    tok = Tokenizer.from_file(DEFAULT_MODEL)
    assert tok.sha256 == recorded
    assert tok.vocab_size == 8000


def test_encode_batch_round_trips_and_pickles():
    tok = Tokenizer.from_file(DEFAULT_MODEL)
    texts = ["Translate the following from German to English:", "Premise: the museum opened in 1901. ünïcødé"]
    ids = tok.encode_batch(texts)
    assert [tok.decode(i) for i in ids] == texts
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.sha256 == tok.sha256 and clone.encode_batch(texts) == ids


def test_training_is_deterministic_and_uses_t5_ids(tmp_path):
    texts = [f"sentence number {i} about rivers and {i % 7} bridges" for i in range(300)]
    a = train_tokenizer(texts, tmp_path / "a.model", vocab_size=300)
    b = train_tokenizer(texts, tmp_path / "b.model", vocab_size=300)
    assert a.read_bytes() == b.read_bytes()
    tok = Tokenizer.from_file(a)
    assert (tok.special.pad, tok.special.eos, tok.special.bos, tok.unk_id) == (0, 1, None, 2)


def test_bad_model_files(tmp_path):
    with pytest.raises(TokenizerError, match="nope.model: tokenizer model not found"):
        Tokenizer.from_file(tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        Tokenizer.from_file(junk)


def _long_texts() -> list[str]:
    words = "the river ran past seven old mills where bakers sold bread at dawn ünïcødé 1901".split()
    return [" ".join(words[(i * j) % len(words)] for j in range(n)) for i, n in enumerate([3, 50, 400, 2500, 9000])]


def test_heads_are_exactly_the_first_ids_of_the_whole_text():
    tok = Tokenizer.from_file(DEFAULT_MODEL)
    assert tok.splits_on_whitespace
    texts = _long_texts() + ["x" * 20_000, "a" + " " * 9000 + "b"]  # no space to cut at; a long run of spaces
    for keep in (1, 7, 256, 1024):
        assert tok.encode_heads(texts, keep) == [ids[:keep] for ids in tok.encode_batch(texts)]


def test_heads_of_a_model_that_does_not_split_on_whitespace_encode_whole_texts(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_long_texts() * 20), model_writer=model, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, split_by_whitespace=False,
                                   minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "nows.model").write_bytes(model.getvalue())
    tok = Tokenizer.from_file(tmp_path / "nows.model")
    assert not tok.splits_on_whitespace
    texts = _long_texts()
    assert tok.encode_heads(texts, 100) == [ids[:100] for ids in tok.encode_batch(texts)]


# --------------------------------------------------------------------------- other models, other ids
# Two tokenizers unlike the bundled one, built here (nothing is downloaded): a SentencePiece model with
# Llama's ids (unk 0, bos 1, eos 2, no pad) and a byte-level BPE tokenizer.json trained with `tokenizers`.
LENGTHS = "lengths: {inputs: 512, targets: 128}"  # long enough that no example of the world is cut


def _world_texts(root: Path) -> list[str]:
    """The world's sample texts and its templates' wording: what the tokenizers learn from."""
    texts = [v for f in sorted((root / "samples").rglob("*.jsonl")) for line in f.read_text().splitlines()
             for v in json.loads(line).values() if isinstance(v, str)]
    return texts + [line for f in sorted((root / "templates").rglob("*.yaml")) for line in f.read_text().splitlines()]


def _llama_sp(root: Path, texts: list[str]) -> Path:
    """Llama-style ids; identity normalization, byte fallback (any character encodes)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=700, model_type="bpe", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, byte_fallback=True, normalization_rule_name="identity", num_threads=1, minloglevel=2,
        hard_vocab_limit=False)
    path = root / "llama.model"
    path.write_bytes(model.getvalue())
    return path


def _sp_normalized(text: str) -> str:
    """What the Llama-style model gives back: identity normalization, but SentencePiece's default
    remove_extra_whitespaces drops leading and trailing spaces and collapses runs of spaces (only U+0020:
    newlines and every other character come back as they were, through byte fallback if need be)."""
    return " ".join(part for part in text.split(" ") if part)


def _bpe_json(root: Path, texts: list[str], *, eos_in_template: bool = True) -> Path:
    """Byte-level BPE (GPT-2 style, no normalizer: decode(encode(text)) == text exactly) with <pad> and </s>
    special tokens; the post-processor's template "$A </s>" declares </s> as the end of a sequence."""
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    specials = ["<pad>", "<mark>", "</s>"] if eos_in_template else ["<pad>"]
    tok.train_from_iterator(texts, hf.trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if eos_in_template:
        tok.post_processor = hf.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    path = root / "tokenizer.json"
    tok.save(str(path))
    return path


def _pipeline(root: Path, tokenizer: str) -> None:
    pipe = root / "pipeline.yaml"
    text = pipe.read_text()
    for old, new in (("tokenizer: tok.model", f"tokenizer: {tokenizer}"), ("lengths: {inputs: 64, targets: 16}", LENGTHS),
                     ("held_out: [natural_language_inference, sentiment]", "held_out: [sentiment]")):
        assert old in text, old
        text = text.replace(old, new)
    pipe.write_text(text)


def _check_compiled(out: Path, tok: Tokenizer, normalized, *, pad: int, eos: int, bos: int | None) -> int:
    """Unpack every train row of the split and decode it: returns the number of segments checked."""
    top = json.loads((out / "manifest.json").read_text())
    split = json.loads((out / "sentiment" / "manifest.json").read_text())
    assert (top["tokenizer"]["pad_id"], top["tokenizer"]["eos_id"], top["tokenizer"]["bos_id"]) == (pad, eos, bos)
    assert (split["pad_id"], split["eos_id"], split["bos_id"]) == (pad, eos, bos)
    layout = RecordLayout("decoder_only", 512, 128)
    checked = padded = 0
    for shard in sorted((out / "sentiment" / "train").glob("*.array_record")):
        source = grain.sources.ArrayRecordDataSource([str(shard)])
        rows = [decode_example(source[i], layout) for i in range(len(source))]
        for e in pq.read_table(shard.with_suffix(".parquet").parent.parent / "examples" /
                               f"{shard.stem}.parquet").to_pylist():
            assert not e["input_truncated"] and not e["target_truncated"]
            row = rows[e["row"]]
            seg_in, seg_out = (s.tolist() for s in unpack(row, layout)[e["segment"] - 1])
            assert seg_in[-1] == eos and seg_out[-1] == eos  # each part ends with the model's eos
            if bos is not None:
                assert seg_in[0] == bos
            text_in = seg_in[1 if bos is not None else 0:-1]
            assert eos not in text_in and eos not in seg_out[:-1]
            assert tok._backend.decode(text_in) == normalized(e["inputs"])
            assert tok._backend.decode(seg_out[:-1]) == normalized(e["targets"])
            checked += 1
        for row in rows:  # padding (segment 0) and every segment's first decoder input are the pad id
            free = row["decoder_segment_ids"] == 0
            padded += int(free.sum())
            assert set(row["decoder_target_tokens"][free].tolist()) <= {pad}
            assert set(row["decoder_input_tokens"][row["decoder_positions"] == 0].tolist()) == {pad}
    assert padded > 0
    return checked


def test_llama_style_sentencepiece_compiles_pads_by_rule_and_round_trips(tmp_path):
    make_world(tmp_path)
    model = _llama_sp(tmp_path, _world_texts(tmp_path))
    _pipeline(tmp_path, "tok.model")
    (tmp_path / "tok.model").unlink()  # the world's T5-style model: the pipeline must not use it
    plain = (tmp_path / "pipeline.yaml").read_text()
    # A model without a pad token and no rule: refused, naming the key to set.
    (tmp_path / "pipeline.yaml").write_text(plain.replace("tokenizer: tok.model", f"tokenizer: {model}"))
    with pytest.raises(TokenizerError, match=r"llama.model: tokenizer.pad: the model has no pad token; set "
                                             r"tokenizer.pad \(eos or unk\) or tokenizer.pad_id$"):
        compile_world(tmp_path)
    (tmp_path / "pipeline.yaml").write_text(
        plain.replace("tokenizer: tok.model", "tokenizer: {path: llama.model, pad: unk, bos: true}"))
    result = compile_world(tmp_path)
    assert sorted(result.cache_misses) == ["para", "rte", "senti"]
    out = tmp_path / "out"
    top = json.loads((out / "manifest.json").read_text())
    assert top["tokenizer"]["file"] == "tokenizer.model" and top["tokenizer"]["kind"] == "sentencepiece"
    assert top["tokenizer"]["unk_id"] == 0
    tok = Tokenizer.from_file(out / "tokenizer.model", TokenizerSpec(path="x", pad="unk", bos=True))
    assert tok.special == SpecialIds(pad=0, eos=2, bos=1)
    assert _check_compiled(out, tok, _sp_normalized, pad=0, eos=2, bos=1) == 100
    assert verify_output(str(out)) == []
    # The trainer reads the ids from the manifests, not from constants.
    split = data.open_split(out / "sentiment")
    assert split.special == SpecialIds(pad=0, eos=2, bos=1) and data.load_tokenizer(split).vocab_size == 700
    batch = next(iter(data.train_dataset(split, batch_rows=4, seed=0)))
    assert set(batch["decoder_target_tokens"][batch["decoder_segment_ids"] == 0].tolist()) == {0}
    # Only the pad rule changes: new ids, so a new cache entry for every dataset, never the stale one.
    (tmp_path / "pipeline.yaml").write_text(
        plain.replace("tokenizer: tok.model", "tokenizer: {path: llama.model, pad: eos, bos: true}"))
    again = compile_world(tmp_path, "out2")
    assert sorted(again.cache_misses) == ["para", "rte", "senti"]
    assert _check_compiled(tmp_path / "out2", tok, _sp_normalized, pad=2, eos=2, bos=1) == 100
    keys = [json.loads((tmp_path / o / "manifest.json").read_text())["datasets"]["rte"]["cache_key"]
            for o in ("out", "out2")]
    assert keys[0] != keys[1]
    split = data.open_split(tmp_path / "out2" / "sentiment")
    row = data.featurize([7, 8], [9], layout="decoder_only", inputs_length=6, targets_length=3, special=split.special)
    assert row["decoder_target_tokens"].tolist() == [1, 7, 8, 2, 9, 2, 2, 2, 2]  # BOS ... EOS, padded with eos
    assert row["decoder_input_tokens"].tolist()[:2] == [2, 1]  # the segment start is fed the pad id


def test_bpe_tokenizer_json_reads_its_ids_and_round_trips(tmp_path):
    make_world(tmp_path)
    path = _bpe_json(tmp_path, _world_texts(tmp_path))
    _pipeline(tmp_path, path.name)
    tok = Tokenizer.from_file(path)
    assert tok.kind == "tokenizer.json" and tok.special == SpecialIds(pad=0, eos=2)  # <pad>, and "$A </s>"
    assert pickle.loads(pickle.dumps(tok)).encode_batch(["a b"]) == tok.encode_batch(["a b"])
    result = compile_world(tmp_path, workers=2, mode="multi_processing")
    assert sorted(result.cache_misses) == ["para", "rte", "senti"]
    out = tmp_path / "out"
    top = json.loads((out / "manifest.json").read_text())
    assert (top["tokenizer"]["file"], top["tokenizer"]["kind"]) == ("tokenizer.json", "tokenizer.json")
    assert (out / "tokenizer.json").read_bytes() == path.read_bytes()
    assert _check_compiled(out, tok, lambda text: text, pad=0, eos=2, bos=None) == 100
    assert verify_output(str(out)) == []  # the tokenizer.json copy is among the checked files
    split = data.open_split(out / "sentiment")
    loaded = data.load_tokenizer(split)
    assert split.special == SpecialIds(pad=0, eos=2) and loaded.decode(loaded.encode_batch(["Héllo  x"])[0]) == "Héllo  x"
    # Overrides by token name and id; a cache miss again (same file, other ids).
    _pipeline_tok(tmp_path, "{path: tokenizer.json, eos_token: <mark>, pad_id: 2}")
    again = compile_world(tmp_path, "out2")
    assert sorted(again.cache_misses) == ["para", "rte", "senti"]
    assert _check_compiled(tmp_path / "out2", tok, lambda text: text, pad=2, eos=1, bos=None) == 100


def _pipeline_tok(root: Path, tokenizer: str) -> None:
    pipe = root / "pipeline.yaml"
    pipe.write_text(re.sub(r"^tokenizer: .*$", f"tokenizer: {tokenizer}", pipe.read_text(), flags=re.MULTILINE))


def test_tokenizer_json_special_ids_from_names_and_errors(tmp_path):
    texts = ["the river ran past seven old mills"] * 20
    no_eos = _bpe_json(tmp_path, texts, eos_in_template=False)
    with pytest.raises(TokenizerError, match=r"tokenizer.json: tokenizer.eos_id: the model declares no "
                                             r"end-of-sequence token; set tokenizer.eos_id or tokenizer.eos_token$"):
        Tokenizer.from_file(no_eos)
    tok = Tokenizer.from_file(no_eos, TokenizerSpec(path="x", eos_id=5))
    assert tok.special == SpecialIds(pad=0, eos=5)
    with pytest.raises(TokenizerError, match=r"tokenizer.json: tokenizer.eos_token: '</s>' is not a token"):
        Tokenizer.from_file(no_eos, TokenizerSpec(path="x", eos_token="</s>"))
    with pytest.raises(TokenizerError, match=r"tokenizer.json: tokenizer.eos_id: 100000 is outside the vocabulary"):
        Tokenizer.from_file(no_eos, TokenizerSpec(path="x", eos_id=100000))
    with pytest.raises(TokenizerError, match=r"tokenizer.json: tokenizer.bos: the model declares no "
                                             r"beginning-of-sequence token"):
        Tokenizer.from_file(no_eos, TokenizerSpec(path="x", eos_id=5, bos=True))
    # By the usual names of added special tokens, when there is no post-processor.
    named = hf.Tokenizer(hf.models.BPE())
    named.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    named.train_from_iterator(texts, hf.trainers.BpeTrainer(vocab_size=300, special_tokens=[
        "<|endoftext|>", "<|begin_of_text|>"], show_progress=False))
    named.save(str(tmp_path / "named.json"))
    with pytest.raises(TokenizerError, match="named.json: tokenizer.pad: the model has no pad token"):
        Tokenizer.from_file(tmp_path / "named.json")
    tok = Tokenizer.from_file(tmp_path / "named.json", TokenizerSpec(path="x", pad="eos", bos=True))
    assert tok.special == SpecialIds(pad=0, eos=0, bos=1)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(TokenizerError, match=r"bad.json: not a valid tokenizer.json \("):
        Tokenizer.from_file(bad)


@pytest.mark.parametrize("tokenizer,message", [
    ("{path: t.json, eos_id: 2, eos_token: </s>}", "tokenizer: eos_id and eos_token both choose the eos token"),
    ("{path: t.json, pad: eos, pad_id: 0}", "tokenizer: pad_id and pad both choose the pad token"),
    ("{path: t.json, bos_id: 1}", "tokenizer: bos_id/bos_token choose the token prepended with bos: true"),
    ("{path: t.json, pad: first}", "tokenizer.pad: "),
    ("{eos_id: 2}", "tokenizer.path: required field is missing"),
])
def test_conflicting_tokenizer_overrides_are_one_line_spec_errors(tmp_path, tokenizer, message):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPE.replace("tokenizer: tok.model", f"tokenizer: {tokenizer}"))
    with pytest.raises(SpecError) as e:
        load_pipeline(pipe)
    assert str(e.value).startswith(f"{pipe}:4: ") and message in str(e.value) and "\n" not in str(e.value)


def test_worker_processes_encode_tokenizer_json_on_one_thread_unless_told(tmp_path, monkeypatch):
    from flanpipe.compiler import _tokenizer_threads

    tok = Tokenizer.from_file(_bpe_json(tmp_path, ["the river ran past seven old mills"] * 20))
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with _tokenizer_threads(tok, 2):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # inherited by the worker processes
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    with _tokenizer_threads(tok, 1), _tokenizer_threads(Tokenizer.from_file(DEFAULT_MODEL), 2):
        assert "TOKENIZERS_PARALLELISM" not in os.environ  # one process: the library's threads; SentencePiece
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    with _tokenizer_threads(tok, 2):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"  # the user's choice stands
