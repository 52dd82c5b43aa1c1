"""Few-shot composition: exemplar choice is O(k), stable, never the query; the token budget holds."""

from __future__ import annotations

from flanpipe.fewshot import compose, exemplar_text, pick_exemplars
from flanpipe.spec import FewShot

SHOT = FewShot(max_exemplars=16, max_tokens=40, input_target_separator=" => ", exemplar_separator=" | ")


def _words(text: str) -> int:
    return len(text.split())


def test_exemplars_are_stable_distinct_never_the_query_and_at_most_k():
    picks = pick_exemplars(30, query_hash=12345, k=16, exclude=3)
    assert len(picks) == len(set(picks)) == 16 and 3 not in picks and all(0 <= p < 30 for p in picks)
    assert picks == pick_exemplars(30, query_hash=12345, k=16, exclude=3)
    assert picks != pick_exemplars(30, query_hash=54321, k=16, exclude=3)
    assert sorted(pick_exemplars(5, query_hash=1, k=16, exclude=0)) == [1, 2, 3, 4]  # a pool smaller than k
    assert pick_exemplars(1, query_hash=1, k=16, exclude=0) == []


def test_picking_from_a_large_pool_touches_only_about_k_rows():
    # O(k): the picks from a pool of a million rows come from a handful of draws, not a sort of the pool
    picks = pick_exemplars(1_000_000, query_hash=7, k=16)
    assert len(set(picks)) == 16


def test_compose_drops_exemplars_from_the_end_until_the_budget_fits():
    parts = [exemplar_text(f"question {i} is here", f"answer {i}", SHOT) for i in range(10)]
    query = "final question with five words"
    text, kept = compose(query, parts, [_words(p) for p in parts], SHOT, _words)
    assert text.endswith(query) and text.startswith("question 0 is here => answer 0 | ")
    assert 0 < kept < 10
    assert _words(text.removesuffix(query)) <= SHOT.max_tokens - _words(query)
    _, none_kept = compose("x " * 50, parts, [_words(p) for p in parts], SHOT, _words)
    assert none_kept == 0


def test_compose_recounts_the_joined_text_when_the_parts_undercount():
    parts = ["a b ", "c d ", "e f "]
    # the per-part counts claim 1 token each, the joined text counts for real: only one part fits 3 tokens
    text, kept = compose("q", parts, [1, 1, 1], SHOT.model_copy(update={"max_tokens": 4}), _words)
    assert kept == 1 and text == "a b q"
