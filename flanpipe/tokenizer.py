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


class Tokenizer:
    """A SentencePiece model plus its fingerprint. Pickles as its bytes, so Beam workers need no file."""

    def __init__(self, model_proto: bytes, *, source: str = "<bytes>"):
        self.model_proto = model_proto
        self.source = source
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self._sp = _load(model_proto, source)

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
        return {"model_proto": self.model_proto, "source": self.source}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["model_proto"], source=state["source"])  # type: ignore[misc, arg-type]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no EOS added), encoded in one native call."""
        return self._sp.encode(list(texts), out_type=int, num_threads=1)

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
