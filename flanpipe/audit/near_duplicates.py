"""Near-duplicate rows: MinHash signatures of word shingles, banded (LSH) into candidate groups, then verified.

Each row's text (input and target) is cut into word 5-grams (the contamination scan's hashing, so the
words are the same: lowercased runs of letters and digits). ``perms`` seeded hash functions give the
row a signature of minimums; two rows agree on one signature position with probability equal to the
Jaccard similarity of their shingle sets. The signature is cut into ``bands`` bands of ``rows`` values;
rows equal on a whole band are candidates, and a candidate is kept when its estimated similarity to
its band's first row reaches the threshold. Kept pairs join into groups (union-find).

Memory: ``4 * perms + 8 * bands + 8`` bytes per row (signature, band keys, text hash): 328 bytes with
the defaults, about 330 MB for a million rows. Rows of fewer words than a shingle are compared only
exactly (the lint's ``duplicates`` rule).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.audit.contamination import roll, text_words
from flanpipe.audit.lint import Rule
from flanpipe.hashing import mix64

RULES: dict[str, Rule] = {
    "near_duplicates": Rule("warning", "Rows that are not identical but nearly so (MinHash estimate of the Jaccard "
                                       "similarity of their word 5-grams at or above the threshold); audits of "
                                       "files only."),
}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class NearSettings:
    """The MinHash settings (docs/audit.md)."""

    threshold: float = 0.8
    shingle: int = 5
    perms: int = 64
    seed: int = 0

    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) of the signature whose LSH threshold (1/bands)**(1/rows) is nearest ``threshold``."""
        options = [(self.perms // r, r) for r in range(1, self.perms + 1) if self.perms % r == 0]
        return min(options, key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - self.threshold), br[1]))


def signatures(texts: pa.Array | pa.ChunkedArray, settings: NearSettings) -> tuple[np.ndarray, np.ndarray]:
    """(signature rows ``uint32[n, perms]``, has-shingles mask ``bool[n]``) of a batch of texts."""
    h, doc = text_words(texts)
    return word_signatures(h, doc, len(texts), settings)


def word_signatures(h: np.ndarray, doc: np.ndarray, n: int, settings: NearSettings) -> tuple[np.ndarray, np.ndarray]:
    """``signatures`` from ``text_words`` output (``n`` texts).

    Hash function ``i`` is ``(a_i * g + b_i) >> 32`` with odd 64-bit multipliers drawn from the seed
    (multiply-shift), applied to every shingle hash ``g`` at once; ``minimum.reduceat`` takes each
    text's minimum. Texts without a shingle get a signature of all ones and a False mask.
    """
    out = np.full((n, settings.perms), np.iinfo(np.uint32).max, np.uint32)
    g, doc, _ = roll(h, doc, settings.shingle)
    has = np.zeros(n, bool)
    if not len(g):
        return out, has
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    owners = doc[starts]
    has[owners] = True
    a, b = _coefficients(settings)
    with np.errstate(over="ignore"):
        for i in range(settings.perms):
            values = ((g * a[i] + b[i]) >> np.uint64(32)).astype(np.uint32)
            out[owners, i] = np.minimum.reduceat(values, starts)
    return out, has


def _coefficients(settings: NearSettings) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(settings.perms, dtype=np.uint64)
    with np.errstate(over="ignore"):
        a = mix64(np.uint64(settings.seed) * _GOLDEN + index, 1) | np.uint64(1)
        b = mix64(np.uint64(settings.seed) * _GOLDEN + index, 2)
    return a, b


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``uint64[n, bands]``: one hash per band of each signature (band index mixed in)."""
    n = sig.shape[0]
    keys = np.zeros((n, bands), np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(n, np.uint64(band + 1) * _GOLDEN, np.uint64)
            for j in range(rows):
                h = mix64(h ^ sig[:, band * rows + j].astype(np.uint64), band)
            keys[:, band] = h
    return keys


class NearDuplicates:
    """Accumulates signatures batch by batch; ``groups`` finds the near-duplicate groups at the end."""

    def __init__(self, settings: NearSettings = NearSettings()):
        self.settings = settings
        self.bands, self.rows = settings.bands()
        self._sigs: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._has: list[np.ndarray] = []
        self._texts: list[np.ndarray] = []
        self.count = 0

    def add(self, texts: pa.Array | pa.ChunkedArray) -> None:
        """The next batch of row texts (rows are numbered in the order they are added)."""
        sig, has = signatures(texts, self.settings)
        self._add(sig, has, text_hashes(texts))

    def add_pairs(self, inputs: pa.Array, targets: pa.Array, h: np.ndarray, doc: np.ndarray) -> None:
        """The next batch of rows given as inputs and targets, with ``text_words`` of inputs-then-targets
        (shared with the contamination scan): a row's shingles are its input's and its target's."""
        rows = len(inputs)
        sig, has = word_signatures(h, doc, 2 * rows, self.settings)
        joined = pc.binary_join_element_wise(inputs, targets, "\n")
        self._add(np.minimum(sig[:rows], sig[rows:]), has[:rows] | has[rows:], text_hashes(joined))

    def _add(self, sig: np.ndarray, has: np.ndarray, texts: np.ndarray) -> None:
        self._sigs.append(sig)
        self._keys.append(band_keys(sig, self.bands, self.rows))
        self._has.append(has)
        self._texts.append(texts)  # exact text identity, to tell near-duplicates from copies
        self.count += len(sig)

    def groups(self) -> list[np.ndarray]:
        """Row-number arrays (ascending) of every group of two or more rows holding two or more distinct texts,
        ordered by first row. Exact copies alone are the lint's ``duplicates``, not listed here."""
        if not self.count:
            return []
        self._sigs = [np.concatenate(self._sigs)]
        sig = self._sigs[0]
        keys = np.concatenate(self._keys)
        has = np.concatenate(self._has)
        text = np.concatenate(self._texts)
        parent = np.arange(self.count, dtype=np.int64)
        candidates = np.flatnonzero(has)
        for band in range(self.bands):
            col = keys[candidates, band]
            order = candidates[np.argsort(col, kind="stable")]
            sorted_keys = keys[order, band]
            first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
            run_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
            member = ~first
            if not member.any():
                continue
            rows, heads = order[member], order[run_start[member]]
            similar = (sig[rows] == sig[heads]).mean(axis=1) >= self.settings.threshold
            for r, h in zip(rows[similar].tolist(), heads[similar].tolist()):
                _union(parent, r, h)
        roots = _roots(parent)
        out = []
        order = np.argsort(roots, kind="stable")
        sorted_roots = roots[order]
        bounds = np.flatnonzero(np.r_[True, sorted_roots[1:] != sorted_roots[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo < 2:
                continue
            members = np.sort(order[lo:hi])
            if len(np.unique(text[members])) >= 2:
                out.append(members)
        return sorted(out, key=lambda m: int(m[0]))

    def similarity(self, a: int, b: int) -> float:
        """Estimated Jaccard similarity of rows ``a`` and ``b`` (after ``groups``)."""
        sig = self._sigs[0] if len(self._sigs) == 1 else np.concatenate(self._sigs)
        return float((sig[a] == sig[b]).mean())

    def summary(self, groups: list[np.ndarray]) -> dict[str, Any]:
        """Settings and counts for the audit document."""
        return {"threshold": self.settings.threshold, "shingle_words": self.settings.shingle,
                "perms": self.settings.perms, "bands": self.bands, "rows_per_band": self.rows,
                "rows": self.count, "rows_without_shingles": int(self.count - sum(int(h.sum()) for h in self._has)),
                "groups": len(groups), "rows_in_groups": int(sum(len(g) for g in groups)),
                "bytes_per_row": 4 * self.settings.perms + 8 * self.bands + 8}


def text_hashes(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 64-bit hash (blake2b) of each text."""
    return np.fromiter((int.from_bytes(hashlib.blake2b((t or "").encode(), digest_size=8).digest(), "little")
                        for t in texts.to_pylist()), np.uint64, count=len(texts))


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = int(parent[root])
    while parent[i] != root:
        parent[i], i = root, int(parent[i])
    return root


def _roots(parent: np.ndarray) -> np.ndarray:
    """Every row's root, by pointer jumping (a union always points the larger root at the smaller)."""
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent
        parent = jumped


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
