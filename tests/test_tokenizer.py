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
    assert tok._sp.pad_id() == 0 and tok._sp.eos_id() == 1 and tok._sp.unk_id() == 2


def test_bad_model_files(tmp_path):
    with pytest.raises(TokenizerError, match="nope.model: tokenizer model not found"):
        Tokenizer.from_file(tmp_path / "nope.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        Tokenizer.from_file(junk)
