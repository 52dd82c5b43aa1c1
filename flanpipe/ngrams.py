"""Word n-grams of text, vectorized: one word split and rolling hash for the audit's contamination scan, its
near-duplicates and the compiler's decontamination (so that they agree), and an eval set's content n-grams."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Words are maximal runs of letters and digits, lowercased (RE2 syntax: pyarrow's regex engine).
_SEPARATORS = r"[^\p{L}\p{N}]+"
_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class Words:
    """Every word of a batch of texts, in order, with the index of the text it comes from."""

    words: pa.Array
    doc: np.ndarray

    @classmethod
    def of(cls, texts: pa.Array | pa.ChunkedArray) -> Words:
        lists = pc.split_pattern_regex(pc.utf8_lower(texts), _SEPARATORS)
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks()
        words = pc.list_flatten(lists)
        doc = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
        keep = pc.greater(pc.utf8_length(words), 0)  # splitting leaves "" for leading/trailing separators
        return cls(words.filter(keep), doc[keep.to_numpy(zero_copy_only=False)])


def word_hashes(words: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each word (blake2b of its UTF-8), computed once per distinct word."""
    encoded = pc.dictionary_encode(words)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    table = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                         for w in encoded.dictionary.to_pylist()), dtype=np.uint64, count=len(encoded.dictionary))
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def ngram_hashes(texts: pa.Array | pa.ChunkedArray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, text index, first word index) of every word n-gram of each text; n-grams never span two texts.

    Example:
      >>> h, doc, start = ngram_hashes(pa.array(["a b c", "d"]), 2)
      >>> doc.tolist(), start.tolist()
      ([0, 0], [0, 1])
    """
    return roll(*text_words(texts), n)


def text_words(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(hash of each word, index of the text it is in) of a batch of texts, words in order."""
    w = Words.of(texts)
    return word_hashes(w.words), w.doc


def roll(h: np.ndarray, doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ngram_hashes`` from ``text_words``: a polynomial rolling hash over the word hashes, all n-grams at
    once (n vector passes), so one word split serves several n-gram sizes."""
    m = len(h) - n + 1
    if m <= 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint64), empty, empty
    g = h[:m].copy()
    for i in range(1, n):
        g *= _PRIME
        g += h[i:i + m]
    g ^= g >> np.uint64(29)
    valid = doc[:m] == doc[n - 1:]
    return g[valid], doc[:m][valid], np.flatnonzero(valid)


@dataclass
class EvalSet:
    """One held-out eval set's example ids and the n-gram hashes of each example's content."""

    dataset: str
    table: pa.Table  # eval/<dataset>.parquet
    ids: list[str]  # distinct example keys, in file order
    hashes: np.ndarray  # unique (hash, example) pairs: content n-grams only
    owners: np.ndarray  # example index of each pair
    boilerplate: int  # distinct n-grams dropped as template text

    @classmethod
    def build(cls, dataset: str, table: pa.Table, n: int, boilerplate_share: float) -> EvalSet:
        """Hash every rendered row (inputs and targets, all templates) of an eval set.

        An n-gram found in at least ``boilerplate_share`` of the examples (and in at least 3) comes from
        the template or a fixed option list, not from the example, and is dropped: otherwise a long
        instruction shared with some training template would mark the whole eval set as dirty.
        """
        keys = table["example_key"].to_pylist()
        ids = list(dict.fromkeys(keys))
        index = {k: i for i, k in enumerate(ids)}
        row_owner = np.array([index[k] for k in keys], np.int64)
        g, doc, _ = ngram_hashes(pair_texts(table), n)
        owner = row_owner[doc % max(len(keys), 1)] if len(keys) else np.zeros(0, np.int64)
        order = np.lexsort((owner, g))
        g, owner = g[order], owner[order]
        keep = np.ones(len(g), bool)
        keep[1:] = (g[1:] != g[:-1]) | (owner[1:] != owner[:-1])
        g, owner = g[keep], owner[keep]
        distinct, counts = np.unique(g, return_counts=True)
        common = distinct[counts >= max(3, math.ceil(boilerplate_share * len(ids)))]
        content = ~np.isin(g, common)
        return cls(dataset, table, ids, g[content], owner[content], len(common))


def pair_texts(batch: pa.Table) -> pa.Array:
    """A batch's inputs then its targets, as one array (text ``i`` and ``i + rows`` are row ``i``'s)."""
    return pa.concat_arrays([batch["inputs"].combine_chunks(), batch["targets"].combine_chunks()])
