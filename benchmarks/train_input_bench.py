"""Prints the trainer's input pipeline throughput (batches/s) beside the tiny model's train steps/s on CPU.

    python benchmarks/train_input_bench.py [--data DIR/<split>] [--config trainer/configs/tiny.yaml]

Without --data it writes a synthetic split with tests/trainer_fixtures.py into a temp dir.
The loader keeps up when its batches/s exceeds the model's steps/s; the model lines compare
steps/s on one batch kept on the device, on one host batch copied in every step, and fed by
the grain loader.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import trainer_fixtures  # noqa: E402  (test helper that writes the synthetic split)

from trainer import data, model, train  # noqa: E402
from trainer.config import load_config  # noqa: E402


def loader_rate(split: data.Split, *, batch_rows: int, threads: int, prefetch: int, batches: int) -> float:
    """Batches per second read + decoded by the grain loader (after one warm-up batch)."""
    it = iter(data.train_dataset(split, batch_rows=batch_rows, seed=0, read_threads=threads, prefetch_batches=prefetch))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def step_rate(split: data.Split, config_path: Path, *, steps: int, feed: str) -> float:
    """Train steps per second of the config's model.

    feed: "device" reuses one batch already on the device (no input cost at all), "host" copies
    one host batch to the device every step, "loader" takes every batch from the grain loader.
    """
    cfg = load_config(config_path)
    mesh = data.make_mesh()
    it = iter(data.train_dataset(split, batch_rows=cfg.batch_rows, seed=0, read_threads=cfg.data.read_threads,
                                 prefetch_batches=cfg.data.prefetch_batches))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.device_put(model.init_params(cfg.model, jax.random.key(0)), replicated)
    opt_state = train.make_optimizer(cfg.optimizer).init(params)
    host = next(it)
    fixed = data.to_global(host, mesh)
    step = functools.partial(train.train_step, model_config=cfg.model, optimizer_config=cfg.optimizer)
    for _ in range(3):  # compile and warm up
        params, opt_state, metrics = step(params, opt_state, fixed)
    jax.block_until_ready(metrics)
    next_batch = {"device": lambda: fixed, "host": lambda: data.to_global(host, mesh),
                  "loader": lambda: data.to_global(next(it), mesh)}[feed]
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, metrics = step(params, opt_state, next_batch())
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="Compiled split directory DIR/<split> (default: synthetic).")
    parser.add_argument("--config", type=Path, default=REPO / "trainer" / "configs" / "tiny.yaml")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split_dir = args.data or trainer_fixtures.write_split(Path(tmp), copies=40, shards=4)
        split = data.open_split(split_dir)
        cfg = load_config(args.config)
        print(f"split {split.path} ({split.rows} rows of {split.record_layout.sequence_length} tokens); "
              f"config {cfg.name}: batch {cfg.batch_rows} rows, {model.count_params(cfg.model):,} params, "
              f"{jax.device_count()} {jax.default_backend()} device(s)")
        for threads, prefetch in ((0, 0), (cfg.data.read_threads, cfg.data.prefetch_batches)):
            rate = loader_rate(split, batch_rows=cfg.batch_rows, threads=threads, prefetch=prefetch,
                               batches=args.batches)
            print(f"loader  read_threads={threads} prefetch={prefetch}: {rate:8.1f} batches/s "
                  f"({rate * cfg.batch_rows * split.record_layout.sequence_length:,.0f} tokens/s)")
        rates = {feed: step_rate(split, args.config, steps=args.steps, feed=feed)
                 for feed in ("device", "host", "loader")}
        print(f"model   one batch kept on device:     {rates['device']:8.1f} steps/s")
        print(f"model   one host batch copied in:     {rates['host']:8.1f} steps/s")
        print(f"model   fed by the grain loader:      {rates['loader']:8.1f} steps/s "
              f"({rates['loader'] / rates['host']:.0%} of the host-batch rate)")


if __name__ == "__main__":
    main()
