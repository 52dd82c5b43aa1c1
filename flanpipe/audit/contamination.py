"""Leakage and contamination: held-out clusters absent from train (exact), eval examples sharing n-grams with it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.audit.lint import Rule, example_row
from flanpipe.ngrams import EvalSet, Words, ngram_hashes, pair_texts, roll, text_words
from flanpipe.verify import leakage

RULES: dict[str, Rule] = {
    "held_out_leak": Rule("error", "A train mixture holds examples of a cluster held out of it (exact check on the "
                                   "examples' dataset and cluster)."),
    "contamination": Rule("warning", "Held-out eval examples share an n-gram (13 words by default) with the text of "
                                     "their split's train mixture."),
}
_PREFIX_BITS = 24
MAX_MATCHES = 20  # matched n-grams listed per eval set; the id lists are always complete
MAX_KEYS = 100  # keys listed of the train rows that carry an eval n-gram (the count is complete)


class Contamination:
    """Streams a split's train mixture past the n-grams of its eval sets; memory is bounded by the eval sets."""

    def __init__(self, eval_sets: Sequence[EvalSet], n: int, *, batch_rows: int = 4096):
        self.eval_sets, self.n, self.batch_rows = list(eval_sets), n, batch_rows
        parts = [e.hashes for e in self.eval_sets]
        self.index = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        self.hit = np.zeros(len(self.index), bool)
        # a byte per top-24-bit prefix of the index: most train n-grams are rejected by one lookup
        # here, and only the few candidates pay for the binary search
        self.prefix = np.zeros(1 << _PREFIX_BITS, bool)
        self.prefix[self.index >> np.uint64(64 - _PREFIX_BITS)] = True
        self.source: dict[int, tuple[str, str]] = {}  # index position -> first train (dataset, example key)
        self.dirty: Counter[str] = Counter()  # train rows carrying an eval n-gram, per dataset
        self.dirty_keys: dict[str, list[str]] = {}  # the first MAX_KEYS of them
        self.ngrams = self.examples = 0
        self.seconds = 0.0

    def scan(self, table: pa.Table) -> None:
        """One examples/*.parquet shard (columns dataset, example_key, inputs, targets)."""
        start = time.perf_counter()
        for offset in range(0, table.num_rows, self.batch_rows):
            batch = table.slice(offset, self.batch_rows)
            self._scan(batch, *text_words(pair_texts(batch)))
        self.seconds += time.perf_counter() - start

    def scan_words(self, batch: pa.Table, h: np.ndarray, doc: np.ndarray) -> None:
        """One batch whose words are already split: ``text_words(pair_texts(batch))``."""
        start = time.perf_counter()
        self._scan(batch, h, doc)
        self.seconds += time.perf_counter() - start

    def _scan(self, batch: pa.Table, h: np.ndarray, doc: np.ndarray) -> None:
        rows = batch.num_rows
        self.examples += rows
        g, doc, _ = roll(h, doc, self.n)
        self.ngrams += len(g)
        if len(self.index) and len(g):
            candidate = self.prefix[g >> np.uint64(64 - _PREFIX_BITS)]
            g, doc = g[candidate], doc[candidate]
            pos = np.minimum(np.searchsorted(self.index, g), len(self.index) - 1)
            found = self.index[pos] == g
            if not found.any():
                return
            first_pos, first_at = np.unique(pos[found], return_index=True)
            new = ~self.hit[first_pos]
            datasets, keys = batch["dataset"], batch["example_key"]
            for d in np.unique(doc[found] % rows).tolist():
                dataset = datasets[d].as_py()
                self.dirty[dataset] += 1
                listed = self.dirty_keys.setdefault(dataset, [])
                if len(listed) < MAX_KEYS:
                    listed.append(keys[d].as_py())
            for p, d in zip(first_pos[new].tolist(), (doc[found][first_at][new] % rows).tolist()):
                self.source[p] = (datasets[d].as_py(), keys[d].as_py())
            self.hit[first_pos] = True

    def dirty_rows(self) -> dict[str, dict[str, Any]]:
        """Per train dataset: rows carrying at least one eval n-gram, and the first MAX_KEYS of their keys."""
        return {d: {"rows": n, "keys": self.dirty_keys[d]} for d, n in sorted(self.dirty.items())}

    def result(self, split: str) -> dict[str, dict[str, Any]]:
        """Per eval set: examples, dirty/clean counts and share, the id lists and a few matched n-grams."""
        out = {}
        for e in self.eval_sets:
            pos = np.minimum(np.searchsorted(self.index, e.hashes), max(len(self.index) - 1, 0))
            matched = self.hit[pos] & (self.index[pos] == e.hashes) if len(self.index) else np.zeros(0, bool)
            dirty = sorted(set(e.owners[matched].tolist()))
            dirty_set = set(dirty)
            out[e.dataset] = {
                "examples": len(e.ids), "dirty": len(dirty), "clean": len(e.ids) - len(dirty),
                "dirty_share": len(dirty) / len(e.ids) if e.ids else 0.0,
                "content_ngrams": int(len(np.unique(e.hashes))), "boilerplate_ngrams": e.boilerplate,
                "dirty_ids": [e.ids[i] for i in dirty],
                "clean_ids": [k for i, k in enumerate(e.ids) if i not in dirty_set],
                "matches": [self._match(e, e.ids[i], split) for i in dirty[:MAX_MATCHES]],
            }
        return out

    def _match(self, e: EvalSet, key: str, split: str) -> dict[str, Any]:
        """The first matching n-gram of one dirty example, with the train example it was found in."""
        rows = e.table.filter(pc.equal(e.table["example_key"], key))
        texts = pa.concat_arrays([rows["inputs"].combine_chunks(), rows["targets"].combine_chunks()])
        g, _, start = ngram_hashes(texts, self.n)
        words = Words.of(texts).words
        pos = np.minimum(np.searchsorted(self.index, g), len(self.index) - 1)
        good = np.flatnonzero((self.index[pos] == g) & self.hit[pos])
        first = int(good[0]) if len(good) else 0
        ngram = " ".join(words.slice(int(start[first]), self.n).to_pylist()) if len(good) else ""
        train = self.source.get(int(pos[first]), ("", "")) if len(good) else ("", "")
        row = rows.slice(0, 1).to_pylist()[0]
        return {**example_row(split=row["split"], source="eval", key=key, variant=0, template=row["template"],
                              inputs=row["inputs"], targets=row["targets"],
                              note=f"{self.n}-gram also in train {train[0]} {train[1]}"),
                "ngram": ngram, "train_dataset": train[0], "train_example_key": train[1], "audit_split": split}


def held_out_check(removed: Sequence[str], pairs: Mapping[tuple[str, str], int], clusters: Mapping[str, str]
                   ) -> dict[str, Any]:
    """Exact leakage check of one train mixture.

    Args:
      removed: the clusters held out of the split (its manifest's removed_clusters).
      pairs: rows per (dataset, cluster) as recorded in the split's examples.
      clusters: dataset -> cluster from the top-level manifest.

    Returns:
      removed_clusters, train_clusters, leaked (dataset, cluster, rows) and ok.
    """
    held = set(removed)
    # the compiler's own rule (flanpipe.verify.leakage), on the manifest's clusters and on the recorded ones
    leaked = [{"dataset": d, "cluster": clusters.get(d, c), "rows": n} for (d, c), n in sorted(pairs.items())
              if leakage(clusters, removed, [d]) or leakage({d: c}, removed, [d])]
    return {"removed_clusters": sorted(held), "train_clusters": sorted({c for _, c in pairs}),
            "leaked": leaked, "ok": not leaked}
