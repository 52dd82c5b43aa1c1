"""Compile pipelines/flan2021.yaml on a synthetic collection of FLAN 2021's real size; print measured figures.

Usage: python benchmarks/fullsize_bench.py [--data-dir D] [--work-dir W] [--fraction 0.1] [--workers 2]
                                           [--scenario 20k|paper ...] [--splits one|all ...]

The collection (benchmarks/fullsize_data.py: each dataset's real train count after its split
slice, at most 30,000 — about 1.49M examples — realistic text lengths, eval splits of their real
size) is generated once into --data-dir and reused. Every compile runs the real
`flanpipe compile` in a subprocess with a fresh cache, for (a) 20,000 examples per mixture and
(b) the paper's mixture size (30,000 steps x 8,192 tokens), one split and all 10. It prints:
wall time; peak RSS of every process (driver and workers, sampled from /proc); prepared train
examples per second per core vs bare single-thread SentencePiece encoding of the same rendered
text; output MB/s while shards are written vs the disk's sequential bandwidth (dd, same disk);
packed rows vs ceil(tokens / row length), next-fit beside it; and each target as met or not.
`--fraction 0.05` runs the same at 5% of the size for a quick look. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import fullsize_data  # noqa: E402

from flanpipe.packing import bound_parts, lower_bound, next_fit, pack  # noqa: E402
from flanpipe.store import read_table  # noqa: E402
from flanpipe.tokenizer import Tokenizer  # noqa: E402

PIPELINE = REPO / "pipelines" / "flan2021.yaml"
TOKENIZER = REPO / "flanpipe" / "assets" / "flanpipe_sp8k.model"
SIZES = {"20k": "{examples: 20000}", "paper": "{steps: 30000, batch_tokens: 8192}"}
ONE_SPLIT = "natural_language_inference"


# ----------------------------------------------------------------- measuring a process tree
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out = [pid]
    for k in kids.get(pid, []):
        out += _tree(k, kids)
    return out


def _status(pid: int) -> tuple[int, str] | None:
    """(peak RSS in MiB, command line) of a live process."""
    try:
        peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM"))
        return peak // 1024, Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except (OSError, StopIteration):
        return None


@dataclass
class Run:
    wall: float = 0.0
    peaks: dict[int, tuple[int, str]] = field(default_factory=dict)
    first_shard: float | None = None  # seconds after start when a train shard first appeared
    returncode: int = 0


def run_measured(cmd: list[str], out: Path, log: Path) -> Run:
    """Run ``cmd``; sample the peak RSS of it and every descendant, and when shards start appearing in ``out``."""
    run = Run()
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in _tree(proc.pid, _children()):
                got = _status(pid)
                if got and "python" in got[1] and not got[1].startswith("/bin/sh") \
                        and got[0] >= run.peaks.get(pid, (0, ""))[0]:
                    run.peaks[pid] = got
            if run.first_shard is None and glob.glob(str(out / "*" / "train" / "*.partial")):
                run.first_shard = time.perf_counter() - start
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run.returncode = proc.wait()
    run.wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    return run


def disk_bandwidth(directory: Path, mb: int = 1024) -> float:
    """Sequential write MB/s of the disk holding ``directory`` (dd, flushed to the device before it ends)."""
    target = directory / "dd.bench"
    res = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mb}", "conv=fdatasync"],
                         capture_output=True, text=True)
    target.unlink(missing_ok=True)
    line = res.stderr.strip().splitlines()[-1]  # "... bytes (...) copied, 2.1 s, 512 MB/s"
    seconds = float(line.split(" copied, ")[1].split(" s")[0])
    return mb * (1 << 20) / 1e6 / seconds


# ----------------------------------------------------------------- figures from a compiled output
def output_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def prepare_figures(cache: Path) -> dict[str, float]:
    """Train examples prepared and the worker CPU seconds spent reading and rendering them (from the store).

    CPU time, not wall time: this machine's speed varies by a third from minute to minute, and
    the two workers share two cores with the driver; the bare SentencePiece floor is timed the same way.
    """
    seconds = examples = 0.0
    for meta in glob.glob(str(cache / "*" / "*" / "train" / "read.json")):
        seconds += json.loads(Path(meta).read_text())["cpu_seconds"]
    for stats in glob.glob(str(cache / "*" / "*" / "train" / "v*-*.json")):
        s = json.loads(Path(stats).read_text())
        seconds += s["cpu_seconds"]
        examples += s["examples"]
    return {"examples": examples, "seconds": seconds}


def bare_sentencepiece(cache: Path, limit: int) -> dict[str, float]:
    """Bare single-thread encoding of the rendered train text (variant 0) in batches of 1,000.

    ``full``: every text whole; ``heads``: the compile's own truncation-aware encoding (only
    what a row can hold), for comparison.
    """
    tok = Tokenizer.from_file(TOKENIZER)
    texts: list[str] = []
    paths = sorted(glob.glob(str(cache / "*" / "*" / "train" / "v0-*.arrow")))
    tables = [read_table(path, columns=["inputs", "targets"]) for path in paths]
    # the same share of every chunk of every dataset: a sample with the collection's own mix of lengths
    share = min(1.0, limit / max(1, sum(t.num_rows for t in tables)))
    for t in tables:
        part = t.slice(0, math.ceil(t.num_rows * share))
        texts += part.column("inputs").to_pylist() + part.column("targets").to_pylist()
    n = len(texts) // 2
    start = time.process_time()
    for i in range(0, len(texts), 1000):
        tok.encode_batch(texts[i:i + 1000])
    full = time.process_time() - start
    start = time.process_time()
    for i in range(0, len(texts), 1000):
        tok.encode_heads(texts[i:i + 1000], 1024)
    heads = time.process_time() - start
    return {"full": n / full, "heads": n / heads}


def packing_figures(out: Path) -> dict[str, Any]:
    top = json.loads((out / "manifest.json").read_text())
    rows = sum(s["rows"] for s in top["summary"].values())
    bound = sum(s["lower_bound_rows"] for s in top["summary"].values())
    lengths = top["pipeline"]["resolved"]["lengths"]
    capacity = lengths["inputs"] + lengths["targets"]
    # Greedy next-fit (seqio) on the same examples of one split, in a seeded random order.
    split = top["splits"][0]
    t = pq.read_table(out / split / "examples", columns=["input_tokens", "target_tokens"])
    sizes = (np.asarray(t["input_tokens"]) + np.asarray(t["target_tokens"])).astype(np.int64)
    sizes = sizes[np.random.default_rng(0).permutation(len(sizes))]
    nf = len(next_fit([(int(s),) for s in sizes], (capacity,)))
    split_bound = top["summary"][split]["lower_bound_rows"]
    # The encoder-decoder packer on the same length mix (inputs and targets each with their EOS,
    # after truncation, which is the same for both layouts), in the compile's windows.
    pairs = np.stack([np.asarray(t["input_tokens"]), np.asarray(t["target_tokens"])], axis=1).astype(np.int64)
    pairs = pairs[np.random.default_rng(0).permutation(len(pairs))]
    capacity2 = (lengths["inputs"], lengths["targets"])
    window = top["pipeline"]["resolved"]["packing"]["window"]
    start = time.perf_counter()
    rows2 = sum(pack(pairs[i:i + window], capacity2).rows for i in range(0, len(pairs), window))
    seconds2 = time.perf_counter() - start
    bound2 = lower_bound(*bound_parts(pairs, capacity2), capacity2)
    volume2 = max(math.ceil(pairs[:, 0].sum() / capacity2[0]), math.ceil(pairs[:, 1].sum() / capacity2[1]))
    return {"rows": rows, "bound": bound, "ratio": rows / bound if bound else 0.0,
            "next_fit_ratio": nf / split_bound if split_bound else 0.0, "next_fit_split": split,
            "encdec": {"rows": rows2, "bound": bound2, "volume": volume2, "per_s": len(pairs) / seconds2},
            "examples": sum(s["examples"] for s in top["summary"].values()),
            "tokens": sum(s["tokens"] for s in top["summary"].values())}


# ----------------------------------------------------------------- the benchmark
def pipeline_file(work: Path, data: Path, scenario: str) -> Path:
    path = work / f"flan2021-{scenario}.yaml"
    path.write_text(f"extends: {PIPELINE}\nsource: {{kind: samples, dir: {data}}}\ntokenizer: {TOKENIZER}\n"
                    f"mixture_size: {SIZES[scenario]}\n")
    return path


def compile_once(work: Path, data: Path, scenario: str, splits: str, workers: int) -> dict[str, Any]:
    name = f"{scenario}-{splits}"
    out, cache = work / f"out-{name}", work / f"cache-{name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "flanpipe.cli", "compile", str(pipeline_file(work, data, scenario)), "--out",
           str(out), "--cache-dir", str(cache), "--workers", str(workers), "--quiet"]
    if splits == "one":
        cmd += ["--split", ONE_SPLIT]
    run = run_measured(cmd, out, work / f"{name}.log")
    if run.returncode:
        print(f"  {name}: compile failed (exit {run.returncode}); see {work / f'{name}.log'}")
        return {"name": name, "failed": True}
    result = {"name": name, "run": run, "bytes": output_bytes(out), "prepare": prepare_figures(cache),
              "packing": packing_figures(out), "out": out, "cache": cache}
    return result


def report(r: dict[str, Any], workers: int, bare: dict[str, float] | None, dd: float) -> dict[str, Any]:
    run: Run = r["run"]
    print(f"\n== {r['name']}: {run.wall:,.0f} s wall ({run.wall / 60:.1f} min), "
          f"{r['packing']['examples']:,} mixture examples, {r['packing']['tokens']:,} tokens, "
          f"{r['bytes'] / 1e9:.2f} GB written")
    for pid, (peak, cmd) in sorted(run.peaks.items(), key=lambda kv: -kv[1][0]):
        role = "worker" if "sdk_worker_main" in cmd else "driver"
        print(f"   peak RSS {peak:6,d} MiB  {role} (pid {pid})")
    prep = r["prepare"]
    per_core = prep["examples"] / prep["seconds"] if prep["seconds"] else 0.0
    line = f"   prepare: {prep['examples']:,.0f} train examples in {prep['seconds']:,.0f} worker CPU-s = {per_core:,.0f}/s per core"
    if bare:
        line += (f"; bare SentencePiece {bare['full']:,.0f}/s (whole texts), {bare['heads']:,.0f}/s (row-sized heads) "
                 f"-> ratio {per_core / bare['full']:.3f} / {per_core / bare['heads']:.3f}")
    print(line)
    write_s = run.wall - (run.first_shard or 0.0)
    mbps = r["bytes"] / 1e6 / write_s if write_s > 0 else 0.0
    print(f"   write phase: {write_s:,.0f} s from the first shard to the end, {mbps:,.0f} MB/s "
          f"= {mbps / dd:.0%} of dd's {dd:,.0f} MB/s")
    p = r["packing"]
    print(f"   packing: {p['rows']:,} rows vs lower bound {p['bound']:,} = {p['ratio']:.4f}x; "
          f"next-fit on {p['next_fit_split']}: {p['next_fit_ratio']:.4f}x")
    e = p["encdec"]
    print(f"   encoder_decoder packer on {p['next_fit_split']}'s length mix: {e['rows']:,} rows vs lower bound "
          f"{e['bound']:,} = {e['rows'] / e['bound']:.4f}x (vs volume alone {e['volume']:,}: "
          f"{e['rows'] / e['volume']:.4f}x), {e['per_s']:,.0f} examples/s")
    return {"bare": bare["full"] if bare else 0.0, "wall": run.wall, "peak": max((v[0] for v in run.peaks.values()), default=0), "per_core": per_core,
            "mbps": mbps, "packing": p["ratio"], "encdec": e["rows"] / e["bound"], "encdec_per_s": e["per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "flanpipe-fullsize")
    ap.add_argument("--work-dir", type=Path, default=None, help="outputs and caches (default: a temp dir, removed)")
    ap.add_argument("--fraction", type=float, default=1.0, help="scale every dataset (e.g. 0.05 for a quick look)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scenario", action="append", choices=sorted(SIZES), help="default: both")
    ap.add_argument("--splits", action="append", choices=["one", "all"], help="default: both")
    args = ap.parse_args()
    scenarios, split_sets = args.scenario or ["20k", "paper"], args.splits or ["one", "all"]
    data = args.data_dir if args.fraction == 1.0 else args.data_dir.with_name(f"{args.data_dir.name}-{args.fraction}")
    started = time.perf_counter()
    made = fullsize_data.generate(data, fraction=args.fraction)
    print(f"collection: {made['train_examples']:,} train examples, {made['bytes'] / 1e9:.2f} GB of JSONL in {data} "
          f"({'reused' if made.get('reused') else f'generated in {time.perf_counter() - started:.0f} s'})")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flanpipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dd = disk_bandwidth(work)
    print(f"disk: dd sequential write {dd:,.0f} MB/s ({work}); {os.cpu_count()} cores; --workers {args.workers}")
    results: dict[str, dict[str, Any]] = {}
    bare = None
    try:
        for scenario in scenarios:
            for splits in split_sets:
                r = compile_once(work, data, scenario, splits, args.workers)
                if r.get("failed"):
                    continue
                bare = bare_sentencepiece(r["cache"], limit=200_000)  # right after each compile, its own text
                results[r["name"]] = report(r, args.workers, bare, dd)
                shutil.rmtree(r["out"], ignore_errors=True)
                shutil.rmtree(r["cache"], ignore_errors=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n== targets (2 cores)")
    paper = results.get("paper-all")
    if paper:
        verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        print(f"   all 10 splits at the paper's size < 15 min: {paper['wall'] / 60:.1f} min -> {verdict(paper['wall'] < 900)}")
        print(f"   peak RSS per process < 2 GB: {paper['peak']:,} MiB -> {verdict(paper['peak'] < 2048)}")
        if paper["bare"]:
            ratio = paper["per_core"] / paper["bare"]
            print(f"   prepare >= 0.5x bare SentencePiece per core: {ratio:.3f}x -> {verdict(ratio >= 0.5)}")
        print(f"   write >= 25% of dd bandwidth: {paper['mbps'] / dd:.0%} -> {verdict(paper['mbps'] / dd >= 0.25)}")
        print(f"   packing <= 1.002x the lower bound: {paper['packing']:.4f}x -> {verdict(paper['packing'] <= 1.002)}")
        print(f"   encoder_decoder packing <= 1.01x the lower bound at >= 100k examples/s: {paper['encdec']:.4f}x, "
              f"{paper['encdec_per_s']:,.0f}/s -> {verdict(paper['encdec'] <= 1.01 and paper['encdec_per_s'] >= 1e5)}")
    for scenario in scenarios:
        one, every = results.get(f"{scenario}-one"), results.get(f"{scenario}-all")
        if one and every:
            print(f"   {scenario}: all splits / one split = {every['wall'] / one['wall']:.2f}x")
    if args.fraction != 1.0:
        print(f"   (at {args.fraction:.0%} of the full size: the targets are for the full size)")


if __name__ == "__main__":
    main()
