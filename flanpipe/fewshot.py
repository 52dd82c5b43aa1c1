"""Few-shot formatting (paper Section 4.4): exemplars ⊕ query within a token budget; pure functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flanpipe.hashing import stable_hash
from flanpipe.spec import FewShot


def pick_exemplars(keys: Sequence[str], query_key: str, *, seed: int, dataset: str, k: int) -> list[int]:
    """Indices of up to ``k`` train examples to show before ``query_key``: a stable-hash order, never the query."""
    ranked = sorted((i for i, key in enumerate(keys) if key != query_key),
                    key=lambda i: (stable_hash(seed, "fewshot", dataset, query_key, keys[i]), i))
    return ranked[:k]


def compose(query_input: str, exemplars: Sequence[tuple[str, str]], settings: FewShot,
            count_tokens: Callable[[str], int]) -> tuple[str, int]:
    """instruct(x1) ⊕ y1 ⊕ … ⊕ instruct(x): exemplars are dropped from the end until they fit.

    The budget is ``settings.max_tokens`` minus the query's input tokens, as in the reference code.

    Returns:
      (the composed input, the number of exemplars kept).
    """
    budget = settings.max_tokens - count_tokens(query_input)
    parts = [e_in + settings.input_target_separator + e_out + settings.exemplar_separator for e_in, e_out in exemplars]
    kept = list(parts)
    while kept and count_tokens("".join(kept)) > budget:
        kept.pop()
    return "".join(kept) + query_input, len(kept)
