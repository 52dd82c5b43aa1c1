"""Content-addressed cache of rendered + tokenized datasets, shared by every held-out split and compile."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flanpipe import __version__, storage
from flanpipe.mixing import mix_order
from flanpipe.prepare import FewShotRenderer, RenderSettings, fields_kept, keep_capped, render_eval, render_train, variants_available
from flanpipe.sources import read_examples
from flanpipe.spec import DatasetSpec, SamplesSource, TfdsDataSource
from flanpipe.templates import CompiledDataset
from flanpipe.tokenizer import Tokenizer
from flanpipe.writers import read_json, write_json, write_parquet

CACHE_FORMAT = 2


@dataclass(frozen=True)
class DatasetJob:
    """Everything needed to prepare one dataset on a worker (picklable; no file re-parsing needed)."""

    spec: DatasetSpec
    cluster_title: str
    spec_sha256: str  # of the dataset file's bytes
    source: SamplesSource | TfdsDataSource
    source_fingerprint: str
    settings: RenderSettings
    tokenizer: Tokenizer = field(repr=False)
    cache_dir: str
    eval_splits: tuple[str, ...]  # validation/test when the dataset is evaluated somewhere

    @functools.cached_property
    def key(self) -> str:
        """Hash of everything that changes this dataset's rendered and tokenized data."""
        blob = json.dumps({
            "format": CACHE_FORMAT, "flanpipe": __version__, "dataset": self.spec.name, "spec": self.spec_sha256,
            "cluster_title": self.cluster_title, "source": self.source_fingerprint,
            "tokenizer": self.tokenizer.sha256, "settings": self.settings.as_dict(),
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def file(self, name: str) -> str:
        """URL of one file of this dataset's cache entry."""
        return storage.join(self.cache_dir, self.spec.name, self.key, name)


# Unique temp names: two workers may prepare the same entry at once; both write the same
# bytes and the last rename wins, so a race is harmless.
def _atomic_parquet(url: str, table: pa.Table) -> None:
    write_parquet(url, table, unique_tmp=True)


def _read_parquet(url: str) -> pa.Table:
    with storage.open_file(url) as f:
        return pq.read_table(f)


def _kept_train(job: DatasetJob, compiled: CompiledDataset) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, int]]:
    examples = list(read_examples(job.spec, "train", job.source))
    kept, dropped = fields_kept(compiled, examples)
    capped = [kept[i] for i in keep_capped([k for k, _ in kept], job.settings, job.spec.name)]
    return capped, {"read": len(examples), "filtered": dropped, "capped": len(kept) - len(capped),
                    "kept": len(capped)}


def prepare(job: DatasetJob) -> dict[str, Any]:
    """Make sure the dataset's meta, train variant 0 and eval tables are cached; return its meta.

    Returns:
      meta: counts, kept example keys, mean token length of variant 0, and whether it was a cache hit.
    """
    meta_path = job.file("meta.json")
    if storage.exists(meta_path):
        return {**read_json(meta_path), "cache": "hit"}
    compiled = CompiledDataset(job.spec, cluster_title=job.cluster_title)
    meta: dict[str, Any] = {"dataset": job.spec.name, "key": job.key}
    if "train" in job.spec.source.splits:
        train, counts = _kept_train(job, compiled)
        table = render_train(compiled, train, 0, job.settings, job.tokenizer)
        _atomic_parquet(job.file("train-v0.parquet"), table)
        lengths = [len(a) + len(b) + 2 for a, b in zip(table.column("input_ids").to_pylist(),
                                                      table.column("target_ids").to_pylist())]
        keys = [k for k, _ in train]
        meta.update(counts=counts, keys=keys, order=mix_order(keys, seed=job.settings.seed, dataset=job.spec.name),
                    mean_tokens=(sum(lengths) / len(lengths)) if lengths else 0.0)
    else:
        meta.update(counts={"read": 0, "filtered": 0, "capped": 0, "kept": 0}, keys=[], order=[], mean_tokens=0.0)
    shots = None
    if job.settings.fewshot is not None and job.eval_splits and "train" in job.spec.source.splits:
        pool, _ = _kept_train(job, compiled)
        shots = FewShotRenderer(compiled, pool, job.settings, job.tokenizer, job.settings.eval_instructions)
    for split in job.eval_splits:
        if split in job.spec.source.splits:
            kept, _ = fields_kept(compiled, list(read_examples(job.spec, split, job.source)))
            _atomic_parquet(job.file(f"eval-{split}.parquet"), render_eval(compiled, split, kept, job.settings))
            if shots is not None:
                _atomic_parquet(job.file(f"eval-fewshot-{split}.parquet"),
                                render_eval(compiled, split, kept, job.settings, shots=shots))
    write_json(meta_path, meta, unique_tmp=True)  # last: its presence means the entry is complete
    return {**meta, "cache": "miss"}


def train_variant(job: DatasetJob, variant: int) -> pa.Table:
    """The cached table of one train variant, rendering it first when missing.

    Variants beyond the templates available repeat (variant mod 10, or 0 without templates).
    """
    variant %= variants_available(job.settings)
    path = job.file(f"train-v{variant}.parquet")
    if not storage.exists(path):
        compiled = CompiledDataset(job.spec, cluster_title=job.cluster_title)
        train, _ = _kept_train(job, compiled)
        _atomic_parquet(path, render_train(compiled, train, variant, job.settings, job.tokenizer))
    return _read_parquet(path)


# Every shard of every split reads rows of the same variant tables: keep recent ones per
# worker process as Python columns, bounded by their total number of rows.
_RECENT: OrderedDict[tuple[str, int], dict[str, list[Any]]] = OrderedDict()
_RECENT_MAX_ROWS = 500_000


def train_rows(job: DatasetJob, variant: int) -> dict[str, list[Any]]:
    """Columns of one train variant (see train_variant), memoized per process."""
    memo = (job.key, variant % variants_available(job.settings))
    if memo in _RECENT:
        _RECENT.move_to_end(memo)
        return _RECENT[memo]
    rows = _RECENT[memo] = train_variant(job, variant).to_pydict()
    while len(_RECENT) > 1 and sum(len(r["row"]) for r in _RECENT.values()) > _RECENT_MAX_ROWS:
        _RECENT.popitem(last=False)
    return rows


def eval_table(job: DatasetJob, *, fewshot: bool = False) -> pa.Table | None:
    """Validation then test eval rows of the dataset (few-shot ones if asked); None when there are none."""
    prefix = "eval-fewshot" if fewshot else "eval"
    tables = [_read_parquet(job.file(f"{prefix}-{s}.parquet")) for s in ("validation", "test")
              if storage.exists(job.file(f"{prefix}-{s}.parquet"))]
    return pa.concat_tables(tables) if tables else None
