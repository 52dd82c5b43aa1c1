"""Prints measured audit figures on a synthetic mixture: contamination scan rate and whole-audit rate.

Usage: python benchmarks/audit_bench.py [--examples 300000] [--eval-sets 8] [--ngram 13] [--out DIR]

A synthetic compiled output (one split, FLAN-like lengths: inputs ~120 words, targets ~15, Zipfian
vocabulary of 50k words) is written to DIR (a temp dir by default) with eval sets of 500 examples x
10 templates, 5% of whose examples are copied into the train text. It prints:
  1. the contamination scan alone (n-grams/s and examples/s) and whether it found exactly the planted copies;
  2. `audit_output` end to end in a child process (statistics + lint + contamination), examples/s, peak RSS;
  3. the projected time for the paper's full mixture (30k steps x 8,192 tokens per split).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flanpipe.audit.contamination import Contamination, EvalSet
from flanpipe.manifest import FORMAT, SplitManifest, Summary, TopManifest
from flanpipe.mixing import allocate

SHARDS = 16
# VmHWM: the child's own peak RSS (ru_maxrss of a child would include the parent's pages at fork time)
CHILD = """import re, sys
from flanpipe.audit import audit_output
n = len(audit_output(sys.argv[1])["lint"]["findings"])
print(n, int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024)
"""
TEMPLATES = [f"Template {t}: read the text and do what it asks, in your own words please." for t in range(10)]


def texts(rng: np.random.Generator, vocab: np.ndarray, n: int, mean_words: float) -> list[str]:
    """``n`` texts of Zipfian words with log-normal lengths around ``mean_words``."""
    lengths = np.maximum(1, rng.lognormal(np.log(mean_words), 0.6, n).astype(np.int64))
    ids = np.minimum(rng.zipf(1.2, int(lengths.sum())) - 1, len(vocab) - 1)
    words = vocab[ids]
    ends = np.cumsum(lengths)
    return [" ".join(words[e - n_:e]) for e, n_ in zip(ends.tolist(), lengths.tolist())]


def write_output(root: Path, examples: int, eval_sets: int, seed: int = 0) -> dict[str, list[str]]:
    """A compiled-output layout with one split; returns the planted dirty ids per eval set."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)], dtype=object)
    split = root / "heldout"
    planted: dict[str, list[str]] = {}
    copies: list[str] = []
    eval_info = {}
    for e in range(eval_sets):
        name = f"eval{e}"
        content = texts(rng, vocab, 500, 120)
        rows = [{"dataset": name, "split": "test", "example_key": f"test:{i}", "template": t, "turned": False,
                 "inputs": f"{TEMPLATES[t]}\n\n{c}", "targets": c.split()[0], "options": [], "answer_index": -1}
                for i, c in enumerate(content) for t in range(10)]
        (split / "eval").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), split / "eval" / f"{name}.parquet")
        dirty = sorted(rng.choice(500, 25, replace=False).tolist())
        planted[name] = sorted(f"test:{i}" for i in dirty)
        copies += [content[i] for i in dirty]
        eval_info[name] = {"file": f"eval/{name}.parquet", "kind": "generation", "metric": "rouge"}
    inputs = texts(rng, vocab, examples, 120)
    targets = texts(rng, vocab, examples, 15)
    for i, c in zip(rng.choice(examples, len(copies), replace=False).tolist(), copies):
        inputs[i] = f"Summarise: {c}"
    datasets = [f"train{d}" for d in range(40)]
    names = np.array(datasets, dtype=object)[rng.integers(0, len(datasets), examples)]
    for shard, part in enumerate(np.array_split(np.arange(examples), SHARDS)):
        n = len(part)
        in_tok = np.minimum([len(inputs[i].split()) for i in part], 1024).astype(np.int32)
        out_tok = np.minimum([len(targets[i].split()) for i in part], 256).astype(np.int32)
        table = pa.table({
            "dataset": names[part].tolist(), "cluster": ["c"] * n, "example_key": [f"train:{i}" for i in part],
            "variant": np.zeros(n, np.int32), "template": (part % 10).astype(np.int32), "turned": np.zeros(n, bool),
            "inputs": [inputs[i] for i in part], "targets": [targets[i] for i in part], "input_tokens": in_tok,
            "target_tokens": out_tok, "input_truncated": in_tok >= 1024, "target_truncated": out_tok >= 256,
            "row": np.arange(n, dtype=np.int32), "segment": np.ones(n, np.int32)})
        (split / "examples").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, split / "examples" / f"{shard:05d}-of-{SHARDS:05d}.parquet")
        segments = [np.concatenate([np.ones(a + b, np.int32), np.zeros(1280 - a - b, np.int32)])
                    for a, b in zip(in_tok[:200].tolist(), out_tok[:200].tolist())]
        (split / "train").mkdir(parents=True, exist_ok=True)
        name = f"{shard:05d}-of-{SHARDS:05d}.parquet"
        pq.write_table(pa.table({"decoder_segment_ids": segments}), split / "train" / name)
    rates = {d: 1 / len(datasets) for d in datasets}
    # The manifests through the compiler's own models (the audit validates them with these).
    summary = Summary(examples=examples, rows=examples, tokens=0, lower_bound_rows=0, packing_efficiency=0.0,
                      input_truncated=0, target_truncated=0, turned=0)
    (split / "manifest.json").write_text(SplitManifest(
        format=FORMAT, split="heldout", layout="decoder_only", lengths={"inputs": 1024, "targets": 256},
        vocab_size=50_000, pad_id=0, eos_id=1, removed_clusters=["heldout"],
        train={"shards": [], "rows": examples, "computed_in": "heldout"}, eval=eval_info, fewshot_eval={},
        prompt_tuning={}, summary=summary, counts={"clusters": {}, "datasets": {}, "templates": {}},
        train_examples_available={d: examples for d in datasets}, planned_rates=rates,
        planned_examples=allocate(rates, examples), realized_rates={}, files={}).model_dump_json())
    (root / "manifest.json").write_text(TopManifest(
        format=FORMAT, pipeline={"name": "bench", "hash": "0" * 64, "file": "bench.yaml", "resolved": {
            "options_format": {"header": "\n\nOPTIONS:", "item": "\n- {option}"}}},
        tokenizer={"file": "tokenizer.model", "sha256": "0" * 64, "vocab_size": 50_000, "source": "none"},
        versions={}, splits=["heldout"], summary={"heldout": summary}, files={},
        datasets={**{d: {"cache_key": "0", "cluster": "c", "read": {}} for d in datasets},
                  **{e: {"cache_key": "0", "cluster": "heldout", "read": {}} for e in eval_info}}).model_dump_json())
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300_000)
    parser.add_argument("--eval-sets", type=int, default=8)
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    start = time.perf_counter()
    planted = write_output(root, args.examples, args.eval_sets)
    print(f"synthetic mixture: {args.examples:,} examples, {args.eval_sets} eval sets x 500 examples x 10 templates "
          f"written in {time.perf_counter() - start:.1f}s ({root})")

    split = root / "heldout"
    start = time.perf_counter()
    sets = [EvalSet.build(f"eval{e}", pq.read_table(split / "eval" / f"eval{e}.parquet"), args.ngram, 0.5)
            for e in range(args.eval_sets)]
    built = time.perf_counter() - start
    scan = Contamination(sets, args.ngram)
    for path in sorted((split / "examples").glob("*.parquet")):
        scan.scan(pq.read_table(path, columns=["dataset", "example_key", "inputs", "targets"]))
    result = scan.result("heldout")
    exact = all(sorted(result[name]["dirty_ids"]) == ids for name, ids in planted.items())
    rate = scan.ngrams / scan.seconds
    print(f"contamination scan: {scan.ngrams:,} train {args.ngram}-grams in {scan.seconds:.1f}s = "
          f"{rate / 1e6:.2f}M n-grams/s, {scan.examples / scan.seconds:,.0f} examples/s "
          f"(eval index: {len(scan.index):,} n-grams, built in {built:.1f}s); planted copies found exactly: {exact}")
    dirty = sum(r["dirty"] for r in result.values())
    total = sum(r["examples"] for r in result.values())
    print(f"contamination rate: {dirty}/{total} eval examples dirty ({dirty / total:.1%}; planted 5%)")

    # in a child process, so its peak RSS is the audit's alone (not the synthetic data's)
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, str(root)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    findings, peak = child.stdout.split()
    print(f"whole audit (stats + lint + contamination, child process incl. imports): {wall:.1f}s = "
          f"{args.examples / wall:,.0f} examples/s; peak RSS {int(peak):,} MiB; {findings} findings")
    words = pq.read_table(split / "examples", columns=["input_tokens", "target_tokens"])  # word counts here
    mean_tokens = 1.3 * (np.mean(words["input_tokens"]) + np.mean(words["target_tokens"])) + 2  # ~1.3 tokens/word
    full = 30_000 * 8_192 / mean_tokens
    print(f"paper-size mixture (30k steps x 8,192 tokens = ~{full / 1e6:.1f}M examples of ~{mean_tokens:.0f} tokens "
          f"per split): contamination scan ~{full / (scan.examples / scan.seconds):.0f}s, whole audit "
          f"~{full / (args.examples / wall) / 60:.1f} min per split at these rates")


if __name__ == "__main__":
    main()
