"""Few-shot composition: exemplar choice never includes the query, and the token budget holds."""

from __future__ import annotations

from flanpipe.fewshot import compose, pick_exemplars
from flanpipe.spec import FewShot

SHOT = FewShot(max_exemplars=16, max_tokens=40, input_target_separator=" => ", exemplar_separator=" | ")


def _words(text: str) -> int:
    return len(text.split())


def test_exemplars_are_stable_never_the_query_and_at_most_k():
    keys = [f"k{i}" for i in range(30)]
    picks = pick_exemplars(keys, "k3", seed=0, dataset="d", k=16)
    assert len(picks) == 16 and 3 not in picks
    assert picks == pick_exemplars(keys, "k3", seed=0, dataset="d", k=16)
    assert picks != pick_exemplars(keys, "k3", seed=1, dataset="d", k=16)


def test_compose_drops_exemplars_from_the_end_until_the_budget_fits():
    exemplars = [(f"question {i} is here", f"answer {i}") for i in range(10)]
    query = "final question with five words"
    text, kept = compose(query, exemplars, SHOT, _words)
    assert text.endswith(query) and text.startswith("question 0 is here => answer 0 | ")
    assert 0 < kept < 10
    assert _words(text.removesuffix(query)) <= SHOT.max_tokens - _words(query)
    _, none_kept = compose("x " * 50, exemplars, SHOT, _words)
    assert none_kept == 0
