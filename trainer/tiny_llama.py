"""A tiny random Llama checkpoint with its own BPE tokenizer.json: a stand-in for a downloaded one.

    python -m trainer.tiny_llama --out runs/tiny-llama [--vocab-size 2048] [--seed 0]

It exercises the whole pretrained-checkpoint path (compile with the model's tokenizer, train
from ``init_from: hf_llama``, export, reload in transformers) on a laptop, with nothing
downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on the bundled
samples' text, with Llama's special ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no pad), and the
model a 2-layer ``LlamaForCausalLM`` (grouped-query attention, untied embeddings) written with
``save_pretrained``. Needs ``transformers`` and ``torch`` (the test extra plus torch).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from flanpipe.paths import TEMPLATES_DIR

SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as Llama's
_SAMPLES = TEMPLATES_DIR / "samples"  # the checkout's, or the installed wheel's bundled copy


def sample_texts(samples: Path = _SAMPLES) -> Iterator[str]:
    """Every string field of every bundled sample record (the tokenizer's training text)."""
    for file in sorted(samples.glob("*/*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            yield from _strings(json.loads(line))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def write_tokenizer(out: Path, vocab_size: int) -> Path:
    """OUT/tokenizer.json: byte-level BPE, ``<s> $A </s>`` post-processor, so eos and bos are found from it."""
    import tokenizers as hf

    tok = hf.Tokenizer(hf.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_texts(), trainer)
    tok.post_processor = hf.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def write_model(out: Path, vocab_size: int, seed: int) -> None:
    """OUT/config.json + OUT/model.safetensors: a random 2-layer LlamaForCausalLM."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=1024, rope_theta=10_000.0, bos_token_id=1, eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(out)


def make(out: str | Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Write the tokenizer and the model into OUT; returns OUT."""
    import tokenizers as hf

    out = Path(out)
    vocab = hf.Tokenizer.from_file(str(write_tokenizer(out, vocab_size))).get_vocab_size()
    write_model(out, vocab, seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Directory for tokenizer.json, config.json, model.safetensors")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights")
    args = parser.parse_args()
    print(make(args.out, vocab_size=args.vocab_size, seed=args.seed))


if __name__ == "__main__":
    main()
