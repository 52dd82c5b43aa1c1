"""Tokenization: load a SentencePiece .model or a Hugging Face tokenizer.json with its special ids, fingerprint
it, encode in batches; train a SentencePiece model."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm
import tokenizers

from flanpipe.errors import TokenizerError
from flanpipe.schema import SpecialIds
from flanpipe.spec import TokenizerSpec

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "flanpipe_sp8k.model"
# A prefix of keep x 8 characters holds at least keep ids for any text of ordinary words
# (about 4 characters per id in English); a shorter yield falls back to the whole text.
_CHARS_PER_ID = 8
Kind = Literal["sentencepiece", "tokenizer.json"]
# Names of special tokens in tokenizer.json files of common model families, tried in order when
# the post-processor does not say which token ends a sequence.
_NAMES = {
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "<|startoftext|>", "[CLS]"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}


class Tokenizer:
    """A tokenizer file's bytes, its kind and the special ids rows use. Pickles as its bytes and ids, so Beam
    workers need no file."""

    def __init__(self, blob: bytes, *, kind: Kind, source: str = "<bytes>", options: TokenizerSpec | None = None,
                 special: SpecialIds | None = None):
        """Args:
          blob: the file's bytes.
          kind: which library reads it.
          source: the file, named in errors.
          options: the pipeline's overrides; ignored when ``special`` is given.
          special: the ids, already resolved (e.g. read back from a manifest); None reads them from the
            model and ``options``.

        Raises:
          TokenizerError: the bytes are not a model of ``kind``, or a special id cannot be found or is wrong.
        """
        self.model_proto, self.kind, self.source = blob, kind, source
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self._loaded: _Backend | None = _load(blob, kind, source)
        model = self._loaded.model_ids()
        self.unk_id, self.model_bos_id = model["unk"], model["bos"]
        self.special = special if special is not None else _resolve(self._loaded, model, options or
                                                                    TokenizerSpec(path=source), source)
        _check_range(self.special, self._loaded.vocab_size, source)
        self.splits_on_whitespace = kind == "sentencepiece" and _splits_on_whitespace(blob)

    @classmethod
    def from_file(cls, path: str | Path, options: TokenizerSpec | None = None) -> Tokenizer:
        """Load a .model or tokenizer.json file (told apart by content: tokenizer.json is a JSON object).

        Raises:
          TokenizerError: the file is missing or unreadable, or its special ids cannot be found.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer model not found")
        blob = path.read_bytes()
        kind: Kind = "tokenizer.json" if blob.lstrip()[:1] == b"{" else "sentencepiece"
        return cls(blob, kind=kind, source=str(path), options=options)

    @property
    def identity(self) -> dict[str, Any]:
        """What makes this tokenizer's token ids: the file's sha256 and the special ids (for cache keys)."""
        return {"sha256": self.sha256, "pad_id": self.special.pad, "eos_id": self.special.eos,
                "bos_id": self.special.bos}

    @property
    def file_name(self) -> str:
        """Name of the copy written into a compiled output."""
        return "tokenizer.model" if self.kind == "sentencepiece" else "tokenizer.json"

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_loaded"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        # Checked when first built; a worker unpickles one copy per Beam stage and may never
        # encode, so the model loads on first use.
        self.__dict__.update(state)

    @property
    def _backend(self) -> _Backend:
        if self._loaded is None:
            self._loaded = _load(self.model_proto, self.kind, self.source)
        return self._loaded

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no BOS or EOS added), encoded in one native call."""
        return self._backend.encode_batch(list(texts))

    def encode_heads(self, texts: Sequence[str], keep: int) -> list[list[int]]:
        """The first ``keep`` token ids of each text (all of them when it has fewer).

        A row never holds more, so a long text is encoded from a prefix cut at a space: with
        ``split_by_whitespace`` (SentencePiece's default) no piece crosses a space, so the prefix's
        ids are exactly the first ids of the whole text. A prefix that yields fewer than ``keep``
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
        """The text of ``ids``, without the special ids rows add (pad, eos, the prepended bos)."""
        drop = {self.special.pad, self.special.eos, self.special.bos}
        return self._backend.decode([int(i) for i in ids if int(i) not in drop])


class _Backend:
    """One library's model: vocabulary size, batched encode/decode, token lookup and its declared special ids."""

    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        raise NotImplementedError

    def model_ids(self) -> dict[str, int | None]:
        """pad/eos/bos/unk as the model declares them; None where it has none."""
        raise NotImplementedError


class _SentencePiece(_Backend):
    def __init__(self, blob: bytes, source: str):
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load_from_serialized_proto(blob)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{source}: not a SentencePiece model nor a tokenizer.json ({e})") from None
        self.vocab_size = self.sp.get_piece_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def token_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def model_ids(self) -> dict[str, int | None]:
        ids = {"pad": self.sp.pad_id(), "eos": self.sp.eos_id(), "bos": self.sp.bos_id(), "unk": self.sp.unk_id()}
        return {k: v if v >= 0 else None for k, v in ids.items()}


class _HfTokenizer(_Backend):
    def __init__(self, blob: bytes, source: str):
        try:
            self.config = json.loads(blob)
            self.tok = tokenizers.Tokenizer.from_str(blob.decode())
        except Exception as e:  # noqa: BLE001 - bad JSON or UTF-8, or the library's own (a bare Exception)
            raise TokenizerError(f"{source}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Multi-threaded in the library (its Rayon pool; TOKENIZERS_PARALLELISM=false makes it serial).
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def model_ids(self) -> dict[str, int | None]:
        """From the post-processor's template (a special token after the text ends it, one before begins it),
        else the added special tokens and the model's unk token by their usual names."""
        out: dict[str, int | None] = {"pad": None, "eos": None, "bos": None, "unk": None}
        post = self.config.get("post_processor") or {}
        steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        for step in steps:
            if step.get("type") == "TemplateProcessing":
                single = step.get("single", [])
                text_at = next((i for i, p in enumerate(single) if "Sequence" in p), None)
                for i, piece in enumerate(single):
                    if "SpecialToken" in piece and text_at is not None:
                        name = "eos" if i > text_at else "bos"
                        out[name] = out[name] if out[name] is not None else self.token_id(piece["SpecialToken"]["id"])
            elif step.get("type") in ("BertProcessing", "RobertaProcessing"):
                out["eos"], out["bos"] = step["sep"][1], step["cls"][1]
        special = {t["content"] for t in self.config.get("added_tokens", []) if t.get("special")}
        unk = (self.config.get("model") or {}).get("unk_token")
        for name, candidates in _NAMES.items():
            if out[name] is None:
                token = next((c for c in candidates if c in special or (name == "unk" and c == unk)), None)
                out[name] = self.token_id(token) if token is not None else None
        if out["unk"] is None and unk:
            out["unk"] = self.token_id(unk)
        return out


def _load(blob: bytes, kind: Kind, source: str) -> _Backend:
    return _SentencePiece(blob, source) if kind == "sentencepiece" else _HfTokenizer(blob, source)


def _resolve(backend: _Backend, model: dict[str, int | None], options: TokenizerSpec, source: str) -> SpecialIds:
    """The special ids: an override (id, or token by name) wins over the model's; pad may come by rule."""

    def chosen(name: str) -> int | None:
        given_id, token = getattr(options, f"{name}_id"), getattr(options, f"{name}_token")
        if given_id is not None:
            return given_id
        if token is not None:
            found = backend.token_id(token)
            if found is None:
                raise TokenizerError(f"{source}: tokenizer.{name}_token: {token!r} is not a token of this model")
            return found
        return model[name]

    eos = chosen("eos")
    if eos is None:
        raise TokenizerError(f"{source}: tokenizer.eos_id: the model declares no end-of-sequence token; "
                             f"set tokenizer.eos_id or tokenizer.eos_token")
    if options.pad is not None:
        pad = eos if options.pad == "eos" else model["unk"]
        if pad is None:
            raise TokenizerError(f"{source}: tokenizer.pad: the model has no unk token to pad with; "
                                 f"set tokenizer.pad: eos or tokenizer.pad_id")
    else:
        pad = chosen("pad")
        if pad is None:
            raise TokenizerError(f"{source}: tokenizer.pad: the model has no pad token; set tokenizer.pad "
                                 f"(eos or unk) or tokenizer.pad_id")
    bos = chosen("bos") if options.bos else None
    if options.bos and bos is None:
        raise TokenizerError(f"{source}: tokenizer.bos: the model declares no beginning-of-sequence token; "
                             f"set tokenizer.bos_id or tokenizer.bos_token")
    return SpecialIds(pad=pad, eos=eos, bos=bos)


def _check_range(special: SpecialIds, vocab_size: int, source: str) -> None:
    for name in ("pad", "eos", "bos"):
        value = getattr(special, name)
        if value is not None and not 0 <= value < vocab_size:
            raise TokenizerError(f"{source}: tokenizer.{name}_id: {value} is outside the vocabulary "
                                 f"(0..{vocab_size - 1})")


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
    """Train a unigram SentencePiece model with T5 ids (pad 0, eos 1, unk 2, no bos), as the bundled one.

    Training is deterministic for the same texts (single thread, no sampling of the input).
    """
    out = Path(out)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9999,
        input_sentence_size=max_sentences, shuffle_input_sentence=False, num_threads=1,
        byte_fallback=True, minloglevel=2, hard_vocab_limit=False, train_extremely_large_corpus=False, max_sentence_length=16384,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out)
    return out
