"""Live progress of a running compile, from what each stage has committed (works on every runner, no Beam metrics)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from flanpipe import storage
from flanpipe.files import read_json
from flanpipe.jobs import JobContext
from flanpipe.write import STATS_DIR


@dataclass(frozen=True)
class Snapshot:
    """How far the job is: datasets fully read and rendered (variant 0 and eval rows), shards and eval sets written."""

    datasets_done: int
    datasets: int
    chunks_done: int
    chunks: int  # known so far: a dataset's chunks are known once it is read
    shards_done: int
    shards: int
    evals_done: int
    evals: int


def snapshot(ctx: JobContext, known: dict[tuple[str, str], int] | None = None) -> Snapshot:
    """Count the committed marker files of the store and the output (one listing per dataset and split).

    ``known`` memoizes each read split's chunk count between calls (read.json never changes).
    """
    known = {} if known is None else known
    datasets_done = chunks_done = chunks = 0
    for job in ctx.datasets.values():
        files = set(storage.list_files(job.entry.root))
        complete = True
        for split in job.splits:
            meta = f"{split}/read.json"
            if meta not in files:
                complete = False
                continue
            if (job.name, split) not in known:
                known[job.name, split] = int(read_json(job.entry.read_meta(split))["chunks"])
            n = known[job.name, split]
            prefix = "v0" if split == "train" else "eval"
            done = sum(f"{split}/{prefix}-{c:05d}.json" in files for c in range(n))
            chunks += n
            chunks_done += done
            complete = complete and done == n
        datasets_done += complete
    shards_done = evals_done = 0
    for s in ctx.splits:
        names = storage.list_files(storage.join(ctx.out_dir, s.name, STATS_DIR))
        evals_done += sum(n.startswith("eval-") for n in names)
        shards_done += sum(not n.startswith("eval-") for n in names)
    return Snapshot(datasets_done, len(ctx.datasets), chunks_done, chunks, shards_done,
                    len(ctx.splits) * ctx.shards, evals_done, sum(len(s.eval) for s in ctx.splits))


class Watcher:
    """Calls ``report(snapshot)`` every ``interval`` seconds in a background thread until stopped."""

    def __init__(self, ctx: JobContext, report: Callable[[Snapshot], None], interval: float = 1.0):
        self.ctx, self.report, self.interval = ctx, report, interval
        self._stop = threading.Event()
        self._known: dict[tuple[str, str], int] = {}
        self._thread = threading.Thread(target=self._run, name="flanpipe-progress", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report(snapshot(self.ctx, self._known))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.report(snapshot(self.ctx, self._known))
            except (OSError, ValueError, KeyError):  # a file caught mid-rename: the next poll sees it
                continue
