"""Read stage: one source split of a dataset -> filtered (and for train: capped, mix-ordered) field chunks, Arrow.

Train examples are kept under the cap by a stable hash and stored in the order every
mixture uses them (the mix order), so a shard's block of uses is a contiguous run of rows.
Eval splits keep their source order. Each chunk holds ``CHUNK_ROWS`` examples as
``(row, index, key, key_hash, features)``: the source features the field map reads,
JSON-encoded (safe to share: no pickle). The template fields are computed again when a
chunk is rendered: expressions often copy a long feature several times over (a document, its
articles, the articles joined), which would multiply what is stored and parsed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from flanpipe.decontaminate import Dropped, clean
from flanpipe.errors import TemplateError
from flanpipe.hashing import CAP, MIX_ORDER, mix64, stable_hash
from flanpipe.jobs import DatasetJob
from flanpipe.sources import read_examples
from flanpipe.spec import FilesSource, HuggingFaceSource, SamplesSource
from flanpipe.store import read_table, write_table
from flanpipe.files import write_json
from flanpipe.templates import CompiledDataset

CHUNK_ROWS = 2048  # examples per stored chunk: the unit of rendering, so several workers share a dataset

FIELDS_SCHEMA = pa.schema([
    ("row", pa.int32()),  # position in the stored order (train: the mix order)
    ("index", pa.int32()),  # position among the kept examples in source order (round-robin templates)
    ("key", pa.string()),
    ("key_hash", pa.uint64()),  # stable_hash(seed, "example", dataset, key): every later choice derives from it
    ("features", pa.string()),  # the source features the field map reads, JSON
])


@dataclass(frozen=True)
class ReadCounts:
    read: int
    filtered: int
    capped: int
    kept: int
    bad: int = 0  # dropped as bad (bad_examples: skip)
    decontaminated: int | None = None  # dropped as sharing an n-gram with eval sets (None: not checked)

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "filtered": self.filtered, "capped": self.capped, "kept": self.kept,
                "bad": self.bad, **({} if self.decontaminated is None else {"decontaminated": self.decontaminated})}


@dataclass
class BadExamples:
    """Examples dropped under ``bad_examples: skip``: how many per reason (the field at fault), and the first few."""

    reasons: dict[str, int] = field(default_factory=dict)
    first: list[list[str]] = field(default_factory=list)  # [key, message]
    shown: int = 5

    def add(self, key: str, error: TemplateError) -> None:
        reason = error.field or "example"
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.first) < self.shown:
            self.first.append([key, str(error)])

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def as_dict(self) -> dict[str, Any]:
        return {"reasons": dict(sorted(self.reasons.items())), "first": self.first}


_BAD = ""  # _encode's answer for a bad example that is skipped (None: the filter dropped it)


def key_hash(seed: int, dataset: str, key: str) -> int:
    return stable_hash(seed, "example", dataset, key)


def _encode(compiled: CompiledDataset, key: str, features: dict[str, Any], plain: bool = False,
            bad: BadExamples | None = None) -> str | None:
    """The features the example's fields are made of, as JSON; None when the dataset's filter drops it.

    A dataset with a filter computes the fields here (to apply it), and so does every dataset
    when bad examples are skipped (``bad`` collects them; ``_BAD`` is returned); the others
    compute them when rendering, where a bad example stops the job with the same error.
    """
    try:
        if compiled.filter is not None or bad is not None:
            if compiled.fields_of(features, key=key) is None:
                return None
        try:
            return json.dumps(compiled.features_used(features, plain=plain), ensure_ascii=False,
                              separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise compiled.error(("fields",), f"a feature value is not plain data ({e})").for_example(key) from None
    except TemplateError as e:
        if bad is None:
            raise
        bad.add(key, e)
        return _BAD


def select_train(compiled: CompiledDataset, examples: Iterable[tuple[str, dict[str, Any]]], *, seed: int,
                 cap: int, plain: bool = False, bad: BadExamples | None = None
                 ) -> tuple[list[tuple[int, str, int, str]], ReadCounts]:
    """The kept train examples as (index, key, key_hash, features JSON) in mix order, and the counts.

    At most ``2 * cap`` candidates are held at once: whenever more pile up, the ones whose
    cap hash ranks beyond ``cap`` are dropped, as they would be at the end. ``plain``: the
    examples are already plain Python (a JSONL source), so TFDS values need no conversion.
    """
    dataset = compiled.spec.name
    held: list[tuple[int, str, int, str]] = []  # (source position, key, key_hash, features)
    read = filtered = 0

    def top(candidates: list[tuple[int, str, int, str]]) -> list[tuple[int, str, int, str]]:
        """The ``cap`` candidates of smallest cap hash (ties: source position), in source order."""
        hashes = mix64(np.fromiter((c[2] for c in candidates), np.uint64, count=len(candidates)), CAP)
        positions = np.fromiter((c[0] for c in candidates), np.int64, count=len(candidates))
        keep = np.sort(np.lexsort((positions, hashes))[:cap])
        return [candidates[i] for i in keep.tolist()]

    for key, features in examples:
        position = read
        read += 1
        fields = _encode(compiled, key, features, plain, bad)
        if fields is None:
            filtered += 1
            continue
        if fields is _BAD:
            continue
        held.append((position, key, key_hash(seed, dataset, key), fields))
        if len(held) >= 2 * cap:
            held = top(held)
    skipped = bad.count if bad is not None else 0
    kept_before_cap = read - filtered - skipped
    if len(held) > cap:
        held = top(held)
    # held is in source order: each example's round-robin index is its position among the kept
    order_hash = mix64(np.fromiter((c[2] for c in held), np.uint64, count=len(held)), MIX_ORDER)
    order = np.lexsort((np.arange(len(held)), order_hash)).tolist()
    rows = [(i, held[i][1], held[i][2], held[i][3]) for i in order]
    return rows, ReadCounts(read, filtered, kept_before_cap - len(rows), len(rows), skipped)


def chunk_tables(rows: Iterable[tuple[int, str, int, str]], start_row: int = 0) -> Iterator[pa.Table]:
    """Tables of ``CHUNK_ROWS`` consecutive rows (index, key, key_hash, fields)."""
    batch: list[tuple[int, str, int, str]] = []
    row = start_row
    for item in rows:
        batch.append(item)
        if len(batch) == CHUNK_ROWS:
            yield _table(batch, row)
            row += len(batch)
            batch = []
    if batch:
        yield _table(batch, row)


def _table(batch: list[tuple[int, str, int, str]], first_row: int) -> pa.Table:
    return pa.table({
        "row": pa.array(range(first_row, first_row + len(batch)), pa.int32()),
        "index": pa.array([b[0] for b in batch], pa.int32()),
        "key": pa.array([b[1] for b in batch], pa.string()),
        "key_hash": pa.array([b[2] for b in batch], pa.uint64()),
        "features": pa.array([b[3] for b in batch], pa.string()),
    }, schema=FIELDS_SCHEMA)


def read_split(job: DatasetJob, split: str) -> dict[str, Any]:
    """Read one split of a dataset into the store (chunks, then read.json); returns read.json's content."""
    started, cpu = time.perf_counter(), time.process_time()
    compiled, entry = job.compiled, job.entry
    examples = read_examples(job.spec, split, job.source)
    # JSONL samples and files of its own: values are plain Python already
    plain = isinstance(job.source, SamplesSource) or isinstance(job.spec.source, (FilesSource, HuggingFaceSource))
    bad = BadExamples() if job.settings.bad_examples == "skip" else None
    against = job.decontaminate if split == "train" else None
    dropped = Dropped()
    if split == "train":
        if against is not None:  # before the cap: it keeps clean examples
            examples = clean(compiled, examples, against, dropped, mode=job.settings.instructions,
                             options_format=job.settings.options_format, plain=plain)
        rows, counts = select_train(compiled, examples, seed=job.settings.seed, cap=job.settings.cap, plain=plain,
                                    bad=bad)
        if against is not None:
            counts = replace(counts, read=counts.read + dropped.count, decontaminated=dropped.count)
        tables: Iterator[pa.Table] = chunk_tables(rows)
    else:
        tally = {"read": 0, "filtered": 0}
        tables = chunk_tables(_eval_rows(compiled, examples, job.settings.seed, tally, plain, bad))
    chunks = 0
    for chunk, table in enumerate(tables):
        write_table(entry.fields(split, chunk), table)
        chunks = chunk + 1
    if split != "train":
        skipped = bad.count if bad is not None else 0
        counts = ReadCounts(tally["read"], tally["filtered"], 0, tally["read"] - tally["filtered"] - skipped, skipped)
    meta = {"dataset": job.name, "split": split, "counts": counts.as_dict(), "rows": counts.kept,
            "bad": bad.as_dict() if bad is not None and bad.count else None,
            **({"decontaminated": dropped.as_dict(against)} if against is not None else {}),
            "chunks": chunks, "chunk_rows": CHUNK_ROWS, "seconds": round(time.perf_counter() - started, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3)}
    write_json(entry.read_meta(split), meta, unique_tmp=True)  # last: its presence means the read is complete
    return meta


def eval_chunks_in_memory(job: DatasetJob, split: str) -> Iterator[pa.Table]:
    """An eval split's field chunks as ``read_split`` stores them, without the store (for the driver)."""
    plain = isinstance(job.source, SamplesSource) or isinstance(job.spec.source, (FilesSource, HuggingFaceSource))
    bad = BadExamples() if job.settings.bad_examples == "skip" else None
    rows = _eval_rows(job.compiled, read_examples(job.spec, split, job.source), job.settings.seed,
                      {"read": 0, "filtered": 0}, plain, bad)
    return chunk_tables(rows)


def _eval_rows(compiled: CompiledDataset, examples: Iterable[tuple[str, dict[str, Any]]], seed: int,
               tally: dict[str, int], plain: bool, bad: BadExamples | None) -> Iterator[tuple[int, str, int, str]]:
    """Kept eval examples in source order, streamed (an eval split may be large)."""
    kept = 0
    for key, features in examples:
        tally["read"] += 1
        fields = _encode(compiled, key, features, plain, bad)
        if fields is None:
            tally["filtered"] += 1
            continue
        if fields is _BAD:
            continue
        yield kept, key, key_hash(seed, compiled.spec.name, key), fields
        kept += 1


def fields_of(compiled: CompiledDataset, table: pa.Table) -> list[dict[str, Any]]:
    """The template fields of every example of a stored chunk (the filter kept them all when it was read)."""
    out = []
    for key, text in zip(table.column("key").to_pylist(), table.column("features").to_pylist()):
        values = compiled.fields_of(json.loads(text), plain=True, key=key)
        if values is None:  # pragma: no cover - expressions are pure, so the filter agrees with the read
            raise AssertionError(f"{compiled.spec.name}: example {key!r} passed the filter when read, not now")
        out.append(values)
    return out


def load_chunk(job: DatasetJob, split: str, chunk: int) -> pa.Table:
    return read_table(job.entry.fields(split, chunk))
