"""Reads a compiled split: manifests, the grain train loader, the tokenizer, eval rows, and device placement.

The train loader is a grain pipeline over the split's ArrayRecord shards::

    range(rows) -> shuffle(seed, new order each epoch) -> repeat -> [process::processes]
                -> batch of record indices -> one batched read + decode per batch

so batch ``i`` is a pure function of (seed, i), the iterator state is just the next batch
index, and the global batch does not depend on how many processes or devices share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grain
import jax
import numpy as np
import pyarrow.parquet as pq
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flanpipe import manifest, packing
from flanpipe.errors import OutputError, SpecError, TokenizerError, did_you_mean
from flanpipe.manifest import EvalFile, SplitManifest, TopManifest
from flanpipe.records import decode_example
from flanpipe.schema import Layout, RecordLayout, SpecialIds
from flanpipe.tokenizer import Tokenizer
from trainer.config import TrainerConfig

EVAL_COLUMNS = ("dataset", "split", "example_key", "template", "turned", "inputs", "targets", "options", "answer_index")
Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class EvalSet:
    """One held-out dataset's evaluation rows and how to score them."""

    dataset: str
    file: Path
    kind: Literal["classification", "generation"]
    metric: Literal["accuracy", "bleu", "rouge"]


@dataclass(frozen=True)
class Split:
    """What the trainer needs from ``DIR/manifest.json`` and ``DIR/<split>/manifest.json``."""

    path: Path
    name: str
    layout: Layout
    inputs_length: int
    targets_length: int
    vocab_size: int
    shards: tuple[Path, ...]
    rows: int
    eval_sets: Mapping[str, EvalSet]
    fewshot_eval_sets: Mapping[str, EvalSet]
    prompt_tuning_files: Mapping[str, Path]
    tokenizer_file: Path
    tokenizer_sha256: str
    tokenizer_kind: Literal["sentencepiece", "tokenizer.json"]
    special: SpecialIds  # the ids the rows use, from the manifests (pad, eos, the prepended bos)
    truncate: Literal["right", "left"]

    @property
    def record_layout(self) -> RecordLayout:
        """The packed-record layout every train row must have."""
        return RecordLayout(self.layout, self.inputs_length, self.targets_length)


@dataclass(frozen=True)
class EvalRow:
    """One rendered evaluation example (one template applied to one example)."""

    dataset: str
    split: str
    example_key: str
    template: int
    turned: bool
    inputs: str
    targets: str
    options: tuple[str, ...]
    answer_index: int


# --------------------------------------------------------------------------- manifests
def _eval_sets(entries: Mapping[str, EvalFile], split_dir: Path) -> dict[str, EvalSet]:
    return {d: EvalSet(d, split_dir / e.file, e.kind, e.metric) for d, e in entries.items()}


def open_split(path: str | Path) -> Split:
    """Read and check the manifests of one compiled split directory ``DIR/<split>`` (flanpipe.manifest's models).

    Raises:
      OutputError: a manifest is missing, malformed, of another format version, or the split's special ids differ
        from the top manifest's tokenizer.
    """
    split_dir = Path(path)
    top_path, split_path = split_dir.parent / "manifest.json", split_dir / "manifest.json"
    top, m = manifest.load(top_path, TopManifest), manifest.load(split_path, SplitManifest)
    if m.split not in top.splits:
        raise OutputError(f"{top_path}: splits does not list {m.split!r}{did_you_mean(m.split, top.splits)}")
    for key in ("pad_id", "eos_id", "bos_id"):
        if getattr(m, key) != getattr(top.tokenizer, key):
            raise OutputError(f"{split_path}: {key} is {getattr(m, key)}, but {top_path}'s tokenizer.{key} is "
                              f"{getattr(top.tokenizer, key)}; recompile the output")
    side = top.pipeline.resolved.get("truncate", "right")
    if side not in ("right", "left"):
        raise OutputError(f"{top_path}: pipeline.resolved.truncate: expected 'right' or 'left', got {side!r}")
    return Split(
        path=split_dir, name=m.split, layout=m.layout, inputs_length=m.lengths.inputs,
        targets_length=m.lengths.targets, vocab_size=m.vocab_size,
        shards=tuple(split_dir / s for s in m.train.shards), rows=m.train.rows,
        eval_sets=_eval_sets(m.eval, split_dir), fewshot_eval_sets=_eval_sets(m.fewshot_eval, split_dir),
        prompt_tuning_files={d: split_dir / e.file for d, e in m.prompt_tuning.items()},
        tokenizer_file=top_path.parent / top.tokenizer.file, tokenizer_sha256=top.tokenizer.sha256,
        tokenizer_kind=top.tokenizer.kind, special=SpecialIds(pad=m.pad_id, eos=m.eos_id, bos=m.bos_id),
        # Which end of a too-long input the compiler cut (its pipeline's `truncate`), so eval
        # rows are cut the same way.
        truncate=side,  # type: ignore[arg-type]
    )


def check_split(split: Split, config: TrainerConfig, config_path: str | Path = "<config>") -> None:
    """Refuse a split the model config cannot train on: vocabulary size, layout or lengths differ.

    Raises:
      SpecError: naming the config field, both values, and what to change.
    """
    checks = (
        ("model.vocab_size", config.model.vocab_size, split.vocab_size, "vocab_size"),
        ("model.layout", config.model.layout, split.layout, "layout"),
        ("data.inputs_length", config.data.inputs_length, split.inputs_length, "lengths.inputs"),
        ("data.targets_length", config.data.targets_length, split.targets_length, "lengths.targets"),
    )
    for field, ours, theirs, manifest_field in checks:
        if ours != theirs:
            raise SpecError(
                config_path, None, field,
                f"is {ours!r} but split {split.name!r} has {manifest_field} {theirs!r} "
                f"({split.path / 'manifest.json'}); use a config that matches the split "
                f"(or --set {field}={theirs}) or recompile the split",
            )


def load_tokenizer(split: Split) -> Tokenizer:
    """The split's tokenizer (SentencePiece or tokenizer.json) with the manifest's special ids, checked against
    the manifest's sha256 and vocabulary.

    Raises:
      TokenizerError: the file is missing or differs from what the split was compiled with.
    """
    try:
        blob = split.tokenizer_file.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{split.tokenizer_file}: tokenizer model not found") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != split.tokenizer_sha256:
        raise TokenizerError(
            f"{split.tokenizer_file}: sha256 {digest[:12]}… differs from the manifest's "
            f"{split.tokenizer_sha256[:12]}…; the split was compiled with another tokenizer"
        )
    tokenizer = Tokenizer(blob, kind=split.tokenizer_kind, source=str(split.tokenizer_file), special=split.special)
    if tokenizer.vocab_size != split.vocab_size:
        raise TokenizerError(
            f"{split.tokenizer_file}: {tokenizer.vocab_size} tokens, manifest says {split.vocab_size}")
    return tokenizer


# --------------------------------------------------------------------------- train loader
def train_dataset(
    split: Split,
    *,
    batch_rows: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 0,
    prefetch_batches: int = 0,
) -> grain.IterDataset:
    """Endless, deterministic batches of this process's share of the packed train rows.

    Args:
      split: from ``open_split``.
      batch_rows: rows in the *global* batch; each process yields ``batch_rows // process_count``.
      seed: fixes the order; every epoch is a different permutation.
      process_index, process_count: this process's share (jax.process_index/count()).
      read_threads, prefetch_batches: grain ReadOptions (threads decode whole batches ahead).

    Returns:
      A grain IterDataset of {feature: int32 [rows, length]}; its iterators have get_state/set_state.
    """
    if batch_rows % process_count:
        raise ValueError(f"batch_rows {batch_rows} is not divisible by process_count {process_count}")
    if not split.shards or split.rows == 0:
        raise OutputError(f"{split.path / 'manifest.json'}: the split has no train rows")
    missing = [str(p) for p in split.shards if not p.exists()]
    if missing:
        raise OutputError(f"{split.path}: train shards missing: {', '.join(missing)}")
    source = grain.sources.ArrayRecordDataSource([str(p) for p in split.shards])
    if len(source) != split.rows:
        raise OutputError(
            f"{split.path / 'manifest.json'}: train.rows is {split.rows} but the shards hold {len(source)}")
    layout = split.record_layout

    def read(indices: np.ndarray) -> Batch:
        # One batched read per batch (array_record's __getitems__ is ~25x faster than one by one).
        records = source.__getitems__(indices.tolist())
        rows = []
        for index, record in zip(indices.tolist(), records):
            try:
                rows.append(decode_example(record, layout))
            except ValueError as e:
                raise OutputError(f"{split.path}: train record {index}: {e}") from None
        return {name: np.stack([row[name] for row in rows]) for name in layout.features}

    indices = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    batches = indices[process_index::process_count].batch(
        batch_rows // process_count, drop_remainder=True, batch_fn=lambda xs: np.asarray(xs, np.int64)
    )
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    return batches.map(read).to_iter_dataset(options)


# --------------------------------------------------------------------------- devices
def make_mesh() -> Mesh:
    """A 1-D data-parallel mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the mesh's data (and fsdp, if it has one) axes, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)))


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays split over the mesh's batch axis."""
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()}


def shard_full_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Split a batch that every process holds in full (eval rows) over the mesh's batch axis."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_callback(value.shape, sharding, lambda index, value=value: value[index])
        for name, value in batch.items()
    }


# --------------------------------------------------------------------------- eval rows
def read_eval_rows(file: Path) -> list[EvalRow]:
    """Rows of one ``eval/<dataset>.parquet`` file, in file order.

    Raises:
      OutputError: the file is missing or lacks a column of the eval-set contract.
    """
    if not file.exists():
        raise OutputError(f"{file}: eval set not found")
    table = pq.read_table(file)
    missing = [c for c in EVAL_COLUMNS if c not in table.column_names]
    if missing:
        raise OutputError(f"{file}: missing column(s) {', '.join(missing)}")
    columns = {c: table.column(c).to_pylist() for c in EVAL_COLUMNS}
    return [
        EvalRow(
            dataset=str(columns["dataset"][i]), split=str(columns["split"][i]),
            example_key=str(columns["example_key"][i]), template=int(columns["template"][i]),
            turned=bool(columns["turned"][i]), inputs=columns["inputs"][i], targets=columns["targets"][i],
            options=tuple(columns["options"][i] or ()), answer_index=int(columns["answer_index"][i]),
        )
        for i in range(table.num_rows)
    ]


def featurize(
    input_ids: Sequence[int],
    target_ids: Sequence[int],
    *,
    layout: Layout,
    inputs_length: int,
    targets_length: int,
    special: SpecialIds,
    prompt_length: int = 0,
    truncate: Literal["right", "left"] = "right",
) -> Batch:
    """One unpacked row, built by the compiler's own code (flanpipe.packing.single_row).

    So eval and prompt-tuning rows are exactly what training saw (``special``: the split's ids): inputs
    (after the BOS, if any) and targets each end in EOS after truncation (inputs on the compiler's ``truncate`` side), the prefix-LM mask
    covers inputs + EOS + the first target position, and the loss weights cover targets + EOS.
    ``prompt_length`` extra leading input positions (pad tokens) are reserved for a soft prompt.
    For generation pass ``target_ids=[]``: the first target position holds EOS until decoding
    overwrites it.
    """
    return packing.single_row(list(input_ids), list(target_ids), RecordLayout(layout, inputs_length, targets_length),
                              special=special, side=truncate, prefix=prompt_length)


def stack_rows(rows: Sequence[Batch], batch_size: int) -> Batch:
    """Stack featurized rows into one batch, padding with all-zero rows up to ``batch_size``."""
    out = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    extra = batch_size - len(rows)
    return {name: np.pad(value, ((0, extra), (0, 0))) for name, value in out.items()}


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive chunks of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
