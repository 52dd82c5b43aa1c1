"""Prints measured compile figures: throughput vs bare SentencePiece, packing vs the lower bound, splits cost, RSS.

Usage: python benchmarks/compile_bench.py [--pipeline pipelines/flan2021.yaml] [--scale 10]
Each measurement runs the real `flanpipe compile` in a subprocess (fresh cache where it matters) and
reads the figures from the manifests; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from flanpipe.packing import best_fit_decreasing, next_fit
from flanpipe.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


def compile_run(pipeline: Path, out: Path, cache: Path, *extra: str) -> tuple[float, float]:
    """Run a compile in a child process; return (wall seconds, child peak RSS in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flanpipe.cli", "compile", str(pipeline), "--out", str(out),
                    "--cache-dir", str(cache), "--overwrite", "--quiet", *extra], check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def scaled_pipeline(pipeline: Path, tmp: Path, factor: int) -> Path:
    """The pipeline with its mixture size multiplied by ``factor`` (paths kept relative to the original)."""
    text = pipeline.read_text()
    examples = int(text.split("mixture_size: {examples: ")[1].split("}")[0])
    out = pipeline.parent / f".bench-{factor}x-{os.getpid()}.yaml"
    out.write_text(f"extends: {pipeline.name}\nmixture_size: {{examples: {examples * factor}}}\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pipeline", type=Path, default=REPO / "pipelines" / "flan2021.yaml")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        split = json.loads(subprocess.run(
            [sys.executable, "-c", "import sys,json; from flanpipe.plan import load_plan; "
             "print(json.dumps([s.name for s in load_plan(sys.argv[1]).splits]))", str(args.pipeline)],
            check=True, capture_output=True, text=True).stdout)[0]
        # Cold compiles, alternated and repeated (this machine's timings vary by a third run to run): medians.
        ones, alls = [], []
        for r in range(args.repeats):
            ones.append(compile_run(args.pipeline, tmp / "one", tmp / f"cache-one-{r}", "--split", split)[0])
            wall, rss_1x = compile_run(args.pipeline, tmp / "all", tmp / f"cache-all-{r}")
            alls.append(wall)
        cold_one, cold_all = statistics.median(ones), statistics.median(alls)
        warm_all, _ = compile_run(args.pipeline, tmp / "all", tmp / "cache-all-0")
        top = json.loads((tmp / "all" / "manifest.json").read_text())
        examples = sum(s["examples"] for s in top["summary"].values())
        print(f"compile, {len(top['splits'])} splits, cold cache : {cold_all:7.1f} s  "
              f"({examples:,} mixture examples, {examples / cold_all:,.0f} examples/s on 1 worker)")
        print(f"compile, all splits, warm cache        : {warm_all:7.1f} s")
        print(f"compile, one split ({split}), cold cache: {cold_one:7.1f} s -> all/one = {cold_all / cold_one:.2f}x "
              f"(medians of {args.repeats}; one {min(ones):.1f}-{max(ones):.1f} s, all {min(alls):.1f}-{max(alls):.1f} s)")

        # Bare SentencePiece on the same rendered text (the floor cost of the compile).
        tok = Tokenizer.from_file(tmp / "all" / "tokenizer.model")
        texts: list[str] = []
        lengths: list[int] = []
        for s in top["splits"]:
            t = pq.read_table(tmp / "all" / s / "examples", columns=["inputs", "targets", "input_tokens",
                                                                       "target_tokens"])
            texts += t.column("inputs").to_pylist() + t.column("targets").to_pylist()
            lengths += (np.asarray(t.column("input_tokens")) + np.asarray(t.column("target_tokens"))).tolist()
        start = time.perf_counter()
        for i in range(0, len(texts), 1000):
            tok.encode_batch(texts[i:i + 1000])
        bare = time.perf_counter() - start
        per_s_bare = examples / bare
        print(f"bare SentencePiece on the same text     : {bare:7.2f} s ({per_s_bare:,.0f} examples/s); "
              f"compile/bare throughput ratio = {(examples / warm_all) / per_s_bare:.3f} (warm), "
              f"{(examples / cold_all) / per_s_bare:.3f} (cold)")

        # Packing vs the lower bound, and seqio's next-fit, on the realized length mix.
        capacity = top["pipeline"]["resolved"]["lengths"]["inputs"] + top["pipeline"]["resolved"]["lengths"]["targets"]
        window = top["pipeline"]["resolved"]["packing"]["window"]
        bound = math.ceil(sum(lengths) / capacity)
        bfd = sum(len(best_fit_decreasing([(n,) for n in lengths[i:i + window]], (capacity,)))
                  for i in range(0, len(lengths), window))
        nf = len(next_fit([(n,) for n in lengths], (capacity,)))
        print(f"packing: lower bound {bound:,} rows; best-fit-decreasing (window {window:,}) {bfd:,} = "
              f"{bfd / bound:.4f}x; next-fit {nf:,} = {nf / bound:.4f}x")

        big = scaled_pipeline(args.pipeline, tmp, args.scale)
        try:
            _, rss_big = compile_run(big, tmp / "big", tmp / "cache-all-0")
        finally:
            big.unlink()
        print(f"peak RSS: 1x mixture {rss_1x:,.0f} MiB; {args.scale}x mixture {rss_big:,.0f} MiB "
              f"(ratio {rss_big / rss_1x:.2f})")


if __name__ == "__main__":
    main()
