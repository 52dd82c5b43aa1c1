"""Prints measured figures of `flanpipe audit FILE`: rows/s and peak RSS on generated instruction rows.

Usage: python benchmarks/audit_files_bench.py [--rows 1000000] [--out DIR] [--keep]

Writes DIR/rows.jsonl (a temp dir by default): ``instruction``/``output`` rows of Zipfian words
(instructions ~40 words, outputs ~60, log-normal lengths), with planted problems: 0.1% exact copies,
0.1% near-copies (one word of the output changed), 0.01% empty outputs and 20 rows carrying the
premise of a bundled RTE test example. Then runs the audit end to end in a child process (the same
code as `flanpipe audit rows.jsonl --inputs instruction --targets output`, against the bundled eval
sets) and prints:
  rows, file size, wall time, the rows pass's rows/s (read + lint + contamination + MinHash +
  grouping, as the audit document records it), peak RSS of the child, and whether every planted
  problem was found (counts side by side). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# VmHWM: the child's own peak RSS
CHILD = """import json, re, sys
from flanpipe.audit import audit_files
from flanpipe.audit.rows import Columns
doc = audit_files(sys.argv[1], Columns(inputs="instruction", targets="output"))
rules = {}
for f in doc["lint"]["findings"]:
    rules[f["rule"]] = rules.get(f["rule"], 0) + f["count"]
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(json.dumps({"rules": rules, "rows_per_second": doc["rows_per_second"], "rows_seconds": doc["rows_seconds"],
                  "seconds": doc["seconds"], "groups": doc["near_duplicates"]["groups"],
                  "dirty_rows": doc["totals"]["dirty_rows"], "dirty_eval": doc["totals"]["dirty_eval_examples"],
                  "peak_mib": peak}))
"""


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write the rows; returns how many of each planted problem there are."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)], dtype=object)
    premise = json.loads((REPO / "templates/samples/rte/test.jsonl").read_text().splitlines()[0])["premise"]
    copies = near = max(1, rows // 1000)
    empty = max(1, rows // 10_000)
    dirty = 20
    fresh = rows - copies - near - empty - dirty
    planted = {"copies": copies, "near": near, "empty": empty, "dirty": dirty}
    kept: list[dict[str, str]] = []
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, fresh, 10_000):
            n = min(10_000, fresh - start)
            lengths = np.maximum(6, rng.lognormal(np.log([[40], [60]]), 0.5, (2, n)).astype(np.int64))
            ids = np.minimum(rng.zipf(1.15, int(lengths.sum())) - 1, len(vocab) - 1)
            words = vocab[ids]
            ends = np.cumsum(lengths.T.ravel())
            texts = [" ".join(words[e - k:e]) for e, k in zip(ends.tolist(), lengths.T.ravel().tolist())]
            for i in range(n):
                row = {"instruction": texts[2 * i], "output": texts[2 * i + 1]}
                if len(kept) < copies:
                    kept.append(row)
                f.write(json.dumps(row) + "\n")
        for row in kept:
            f.write(json.dumps(row) + "\n")
            words = row["output"].split()
            words[-1] = "changedword"
            f.write(json.dumps({"instruction": row["instruction"], "output": " ".join(words)}) + "\n")
        for i in range(empty):
            f.write(json.dumps({"instruction": f"Say nothing about item {i}.", "output": ""}) + "\n")
        for i in range(dirty):
            f.write(json.dumps({"instruction": f"Question {i}: does it follow? {premise}", "output": "yes"}) + "\n")
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="audit-files-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "rows.jsonl"
    started = time.perf_counter()
    planted = generate(path, args.rows)
    print(f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=False,
                         cwd=REPO)
    wall = time.perf_counter() - started
    if run.returncode:
        sys.exit(f"audit failed:\n{run.stderr[-3000:]}")
    r = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"audit wall time:         {wall:,.1f} s (eval sets + rows pass + report assembly)")
    print(f"rows pass:               {r['rows_seconds']:,.1f} s = {r['rows_per_second']:,} rows/s")
    print(f"peak RSS (child):        {r['peak_mib']:,} MiB")
    print(f"exact copies:            planted {planted['copies']:,} pairs; duplicates rule counts "
          f"{r['rules'].get('duplicates', 0):,} rows (2 per pair)")
    print(f"near-copies:             planted {planted['near']:,}; near-duplicate groups {r['groups']:,}")
    print(f"empty outputs:           planted {planted['empty']:,}; empty rule counts {r['rules'].get('empty', 0):,}")
    print(f"rows with an RTE premise: planted {planted['dirty']}; rows with an eval n-gram {r['dirty_rows']:,}; "
          f"dirty eval examples {r['dirty_eval']}")
    if not args.keep and args.out is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
