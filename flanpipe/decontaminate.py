"""Decontamination: eval sets -> their content n-grams; train examples sharing one are dropped when read (pre-mix).

The n-grams are the audit's (``flanpipe.audit.contamination``: the same word split, rolling hash and
boilerplate rule over the same eval rows), so an output compiled with ``decontaminate`` audits with no
contamination at the same n. A train example is checked in every render a mixture can use (each
template in the pipeline's instruction mode), before the cap, so the mixture counts clean examples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from flanpipe.errors import TemplateError
from flanpipe.ngrams import EvalSet, roll, text_words
from flanpipe.templates import CompiledDataset

BOILERPLATE_SHARE = 0.5  # the audit's default (AuditSettings.boilerplate_share)
BATCH = 512  # train examples checked per vectorized n-gram pass
MAX_KEYS = 100  # dropped example keys listed per dataset (the count is complete)


@dataclass(frozen=True, eq=False)
class Decontamination:
    """What one train dataset is cleaned against: the n-gram size and the sorted content n-gram hashes."""

    ngram: int
    against: tuple[str, ...]  # the eval sets (dataset names)
    hashes: np.ndarray = field(repr=False)

    @property
    def digest(self) -> str:
        """Content hash of the index (part of the dataset's cache key)."""
        h = hashlib.sha256(f"{self.ngram}:{','.join(self.against)}:".encode())
        h.update(np.ascontiguousarray(self.hashes).tobytes())
        return h.hexdigest()[:32]


def eval_ngrams(dataset: str, table: pa.Table, n: int) -> np.ndarray:
    """The content n-gram hashes of one eval set (all its rows, as eval/<dataset>.parquet holds them)."""
    return np.unique(EvalSet.build(dataset, table, n, BOILERPLATE_SHARE).hashes)


def index_of(ngram: int, eval_sets: Mapping[str, np.ndarray]) -> Decontamination:
    names = tuple(sorted(eval_sets))
    parts = [eval_sets[d] for d in names]
    hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    return Decontamination(ngram, names, hashes)


@dataclass
class Dropped:
    """Train examples dropped as contaminated: how many, and the first MAX_KEYS keys."""

    count: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, key: str) -> None:
        self.count += 1
        if len(self.keys) < MAX_KEYS:
            self.keys.append(key)

    def as_dict(self, d: Decontamination) -> dict[str, Any]:
        return {"ngram": d.ngram, "against": list(d.against), "dropped": self.count, "keys": self.keys}


def renders(compiled: CompiledDataset, fields: Mapping[str, Any], key: str, *, mode: str,
            options_format: Any) -> list[str]:
    """Every text a use of the example can show: inputs and targets of each template in ``mode``."""
    templates = range(len(compiled.templates)) if mode == "natural" else [0]
    out = []
    for t in templates:
        r = compiled.render(fields, t, mode=mode, options_format=options_format, key=key)  # type: ignore[arg-type]
        out += [r.inputs, r.targets]
    return out


def contaminated(texts: list[list[str]], d: Decontamination) -> np.ndarray:
    """Which examples (each a list of texts) have an n-gram of the index in one of their texts."""
    owner = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    flat = [s for t in texts for s in t]
    out = np.zeros(len(texts), bool)
    if not flat or not len(d.hashes):
        return out
    h, doc = text_words(pa.array(flat, pa.string()))
    g, doc, _ = roll(h, doc, d.ngram)
    pos = np.minimum(np.searchsorted(d.hashes, g), len(d.hashes) - 1)
    out[np.unique(owner[doc[d.hashes[pos] == g]])] = True
    return out


def clean(compiled: CompiledDataset, examples: Iterable[tuple[str, dict[str, Any]]], d: Decontamination,
          dropped: Dropped, *, mode: str, options_format: Any, plain: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """The examples without the contaminated ones, in order (streamed in batches of BATCH).

    An example the dataset's filter drops, or whose fields cannot be computed, passes through: the
    read stage counts it as it always does. Fields are computed as the render stage does, from the
    stored JSON of the features, so the texts checked are the texts rendered.
    """
    batch: list[tuple[str, dict[str, Any], list[str]]] = []

    def flush() -> Iterator[tuple[str, dict[str, Any]]]:
        dirty = contaminated([texts for _, _, texts in batch], d)
        for (key, features, _), bad in zip(batch, dirty.tolist()):
            if bad:
                dropped.add(key)
            else:
                yield key, features
        batch.clear()

    for key, features in examples:
        try:
            stored = json.loads(json.dumps(compiled.features_used(features, plain=plain), ensure_ascii=False))
            fields = compiled.fields_of(stored, plain=True, key=key)
        except (TemplateError, TypeError, ValueError):
            fields = None
        texts = [] if fields is None else renders(compiled, fields, key, mode=mode, options_format=options_format)
        batch.append((key, features, texts))
        if len(batch) >= BATCH:
            yield from flush()
    yield from flush()
