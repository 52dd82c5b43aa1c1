"""SentencePiece tokenization: load and fingerprint a model, encode in batches, train a model."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from flanpipe.errors import TokenizerError
from flanpipe.schema import EOS_ID, PAD_ID

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "flanpipe_sp8k.model"
# A prefix of keep x 8 characters holds at least keep ids for any text of ordinary words
# (about 4 characters per id in English); a shorter yield falls back to the whole text.
_CHARS_PER_ID = 8


class Tokenizer:
    """A SentencePiece model plus its fingerprint. Pickles as its bytes, so Beam workers need no file."""

    def __init__(self, model_proto: bytes, *, source: str = "<bytes>"):
        self.model_proto = model_proto
        self.source = source
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self._loaded: spm.SentencePieceProcessor | None = _load(model_proto, source)
        self.splits_on_whitespace = _splits_on_whitespace(model_proto)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a .model file.

        Raises:
          TokenizerError: the file is missing, not a SentencePiece model, or its pad/eos ids are not 0/1.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer model not found")
        return cls(path.read_bytes(), source=str(path))

    def __getstate__(self) -> dict[str, object]:
        return {"model_proto": self.model_proto, "source": self.source, "sha256": self.sha256,
                "splits_on_whitespace": self.splits_on_whitespace}

    def __setstate__(self, state: dict[str, object]) -> None:
        # Checked when first built; a worker unpickles one copy per Beam stage and may never
        # encode, so the model loads on first use.
        self.__dict__.update(state)
        self._loaded = None

    @property
    def _sp(self) -> spm.SentencePieceProcessor:
        if self._loaded is None:
            self._loaded = _load(self.model_proto, self.source)
        return self._loaded

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no EOS added), encoded in one native call."""
        return self._sp.encode(list(texts), out_type=int, num_threads=1)

    def encode_heads(self, texts: Sequence[str], keep: int) -> list[list[int]]:
        """The first ``keep`` token ids of each text (all of them when it has fewer).

        A row never holds more, so a long text is encoded from a prefix cut at a space: with
        ``split_by_whitespace`` (the default) no piece crosses a space, so the prefix's ids
        are exactly the first ids of the whole text. A prefix that yields fewer than ``keep``
        ids is encoded again in full. Other models encode every text in full.
        """
        limit = keep * _CHARS_PER_ID
        if not self.splits_on_whitespace:
            return [ids[:keep] for ids in self.encode_batch(texts)]
        heads = []
        for text in texts:
            cut = text.rfind(" ", 0, limit) if len(text) > limit else -1
            heads.append(text[:cut] if cut > 0 else text)
        out = self.encode_batch(heads)
        short = [i for i, (text, head, ids) in enumerate(zip(texts, heads, out)) if head is not text and len(ids) < keep]
        for i, ids in zip(short, self.encode_batch([texts[i] for i in short])):
            out[i] = ids
        return [ids[:keep] if len(ids) > keep else ids for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids if i not in (PAD_ID, EOS_ID)])


def _load(model_proto: bytes, source: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(model_proto)
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"{source}: not a SentencePiece model ({e})") from None
    if sp.pad_id() != PAD_ID or sp.eos_id() != EOS_ID:
        raise TokenizerError(f"{source}: expected pad id {PAD_ID} and eos id {EOS_ID} (the T5 convention), "
                             f"got pad {sp.pad_id()} and eos {sp.eos_id()}")
    return sp


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Top-level fields of a serialized protobuf message: number -> values (varints as ints, the rest as bytes)."""
    out: dict[int, list[int | bytes]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.setdefault(number, []).append(value)
        elif wire == 2:
            size, i = _varint(data, i)
            out.setdefault(number, []).append(data[i:i + size])
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _splits_on_whitespace(model_proto: bytes) -> bool:
    """Whether no piece of the model crosses a space: TrainerSpec.split_by_whitespace (field 22, default true)
    and not treat_whitespace_as_suffix (field 24) -- read from the ModelProto's trainer_spec (field 2)."""
    try:
        specs = _fields(model_proto).get(2, [])
        trainer = _fields(specs[0]) if specs and isinstance(specs[0], bytes) else {}
    except (ValueError, IndexError):
        return False
    return bool(trainer.get(22, [1])[-1]) and not trainer.get(24, [0])[-1]


def train_tokenizer(texts: Iterable[str], out: str | Path, *, vocab_size: int = 8000,
                    max_sentences: int = 2_000_000) -> Path:
    """Train a unigram SentencePiece model with T5 ids (pad 0, eos 1, unk 2, no bos).

    Training is deterministic for the same texts (single thread, no sampling of the input).
    """
    out = Path(out)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=2, bos_id=-1, character_coverage=0.9999,
        input_sentence_size=max_sentences, shuffle_input_sentence=False, num_threads=1,
        byte_fallback=True, minloglevel=2, hard_vocab_limit=False, train_extremely_large_corpus=False, max_sentence_length=16384,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out)
    return out
