"""MinHash near-duplicates: the estimate tracks Jaccard similarity, planted groups are found, copies are not."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from flanpipe.audit.contamination import ngram_hashes
from flanpipe.audit.near_duplicates import NearDuplicates, NearSettings, signatures


def _texts(n: int, words: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def _jaccard(a: str, b: str, n: int = 5) -> float:
    ga, gb = (set(ngram_hashes(pa.array([t]), n)[0].tolist()) for t in (a, b))
    return len(ga & gb) / len(ga | gb)


def test_bands_put_the_lsh_threshold_near_the_configured_one():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = NearSettings(threshold=threshold).bands()
        assert bands * rows == 64
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1


def test_estimate_follows_the_true_jaccard_similarity():
    base = _texts(1, words=100)[0].split()
    for changed in (2, 10, 30):
        other = base.copy()
        for i in range(0, 100, 100 // changed):
            other[i] = "zz" + other[i]
        a, b = " ".join(base), " ".join(other)
        sig, has = signatures(pa.array([a, b]), NearSettings(perms=256))
        assert has.all()
        assert abs(float((sig[0] == sig[1]).mean()) - _jaccard(a, b)) < 0.1


def test_planted_near_duplicates_are_grouped_and_nothing_else():
    texts = _texts(300)
    near = texts[10].split()
    near[-1] = "changed"
    texts.append(" ".join(near))  # row 300 ~ row 10 (one word of 60)
    texts.append(texts[20])  # row 301: an exact copy of row 20 alone is not a near-duplicate group
    texts.append("too short")  # row 302: fewer words than a shingle
    dupes = NearDuplicates()
    for start in range(0, len(texts), 64):
        dupes.add(pa.array(texts[start:start + 64]))
    groups = dupes.groups()
    assert [g.tolist() for g in groups] == [[10, 300]]
    summary = dupes.summary(groups)
    assert summary["rows"] == 303 and summary["rows_without_shingles"] == 1 and summary["rows_in_groups"] == 2
    assert dupes.similarity(10, 300) >= 0.8


def test_a_near_duplicate_of_a_copy_joins_the_whole_group():
    texts = _texts(50)
    near = texts[3].split()
    near[0] = "different"
    texts += [texts[3], " ".join(near)]  # 50: copy of 3, 51: near 3
    dupes = NearDuplicates()
    dupes.add(pa.array(texts))
    assert [g.tolist() for g in dupes.groups()] == [[3, 50, 51]]


def test_groups_do_not_depend_on_batch_boundaries():
    texts = _texts(200, seed=3)
    for i in range(0, 200, 40):
        words = texts[i].split()
        words[-1] = "x"  # Jaccard 55/57 with its original
        texts.append(" ".join(words))
    results = []
    for batch in (1, 7, 1000):
        dupes = NearDuplicates()
        for start in range(0, len(texts), batch):
            dupes.add(pa.array(texts[start:start + batch]))
        results.append([g.tolist() for g in dupes.groups()])
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 5


def test_unrelated_texts_sharing_common_words_are_not_grouped():
    rng = np.random.default_rng(0)
    vocab = np.array(["the", "a", "of", "and", "to"] + [f"w{i}" for i in range(2000)])
    texts = [" ".join(vocab[np.minimum(rng.zipf(1.5, 80) - 1, len(vocab) - 1)]) for _ in range(500)]
    dupes = NearDuplicates()
    dupes.add(pa.array(texts))
    assert dupes.groups() == []
