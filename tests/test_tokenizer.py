"""Tokenizer: the shipped default model, its recorded sha256, T5 ids, batching, pickling, bad files."""

from __future__ import annotations

import pickle

import pytest

from flanpipe.errors import TokenizerError
from flanpipe.tokenizer import DEFAULT_MODEL, Tokenizer, train_tokenizer


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
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_long_texts() * 20), model_writer=model, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, split_by_whitespace=False,
                                   minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "nows.model").write_bytes(model.getvalue())
    tok = Tokenizer.from_file(tmp_path / "nows.model")
    assert not tok.splits_on_whitespace
    texts = _long_texts()
    assert tok.encode_heads(texts, 100) == [ids[:100] for ids in tok.encode_batch(texts)]
