"""Prints measured encoding throughput of the two tokenizer kinds on the bundled samples' text.

Usage: python benchmarks/tokenizer_bench.py [--texts 40000] [--batch 1000]
The bundled SentencePiece model, and a byte-level BPE tokenizer.json (vocabulary 8,000) trained here
on the same text, each encode the texts through flanpipe.tokenizer.Tokenizer.encode_batch (what the
render stage calls) in a fresh subprocess, the tokenizer.json twice: with the library's thread pool
and with TOKENIZERS_PARALLELISM=false (what each of several compile workers uses). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sample_texts(n: int) -> list[str]:
    """String fields of the bundled samples, repeated up to ``n`` texts."""
    texts = [v for f in sorted((REPO / "templates" / "samples").rglob("*.jsonl"))
             for line in f.read_text().splitlines() for v in json.loads(line).values()
             if isinstance(v, str) and v.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def measure(path: str, n: int, batch: int) -> dict[str, float]:
    from flanpipe.spec import TokenizerSpec
    from flanpipe.tokenizer import Tokenizer

    # The trained tokenizer.json has no pad token: pad by rule, as a pipeline would have to.
    tok = Tokenizer.from_file(path, TokenizerSpec(path=path, pad="eos") if path.endswith(".json") else None)
    texts = sample_texts(n)
    tok.encode_batch(texts[:batch])  # load and warm up
    start, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(ids) for i in range(0, n, batch) for ids in tok.encode_batch(texts[i:i + batch]))
    wall = time.perf_counter() - start
    return {"texts_per_s": n / wall, "tokens_per_s": tokens / wall, "cpu_over_wall": (time.process_time() - cpu) / wall}


def train_json(out: Path, n: int) -> Path:
    import tokenizers as hf

    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    tok.train_from_iterator(sample_texts(n), hf.trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<|endoftext|>"], initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.texts, args.batch)))
        return
    from flanpipe.tokenizer import DEFAULT_MODEL

    print(f"{os.cpu_count()} cores; {args.texts:,} texts in batches of {args.batch:,}")
    with tempfile.TemporaryDirectory() as tmp:
        bpe = train_json(Path(tmp) / "tokenizer.json", args.texts)
        runs = [("sentencepiece (bundled, 1 thread)", str(DEFAULT_MODEL), {}),
                ("tokenizer.json BPE, library threads", str(bpe), {"TOKENIZERS_PARALLELISM": "true"}),
                ("tokenizer.json BPE, TOKENIZERS_PARALLELISM=false", str(bpe), {"TOKENIZERS_PARALLELISM": "false"})]
        for name, path, env in runs:
            out = subprocess.run([sys.executable, __file__, "--measure", path, "--texts", str(args.texts),
                                  "--batch", str(args.batch)], env={**os.environ, **env}, check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"{name:50s} {r['texts_per_s']:>10,.0f} texts/s {r['tokens_per_s']:>12,.0f} tokens/s "
                  f"(CPU/wall {r['cpu_over_wall']:.2f})")


if __name__ == "__main__":
    main()
