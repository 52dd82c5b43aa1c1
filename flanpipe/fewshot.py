"""Few-shot formatting (paper Section 4.4): exemplars ⊕ query within a token budget; pure functions, O(k) per query."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from flanpipe.hashing import FEWSHOT, mix64
from flanpipe.spec import FewShot


def pick_exemplars(pool_size: int, query_hash: int, k: int, *, exclude: int = -1) -> list[int]:
    """Up to ``k`` distinct pool rows for a query, drawn by its hash; never row ``exclude`` (the query itself).

    Draw j takes row ``mix64(query_hash, FEWSHOT + j) mod pool_size``; repeats are skipped.
    Expected work is O(k) while k is well below the pool size; a pool barely larger than k
    is ranked whole instead.
    """
    others = pool_size - (0 <= exclude < pool_size)
    want = min(k, others)
    if want <= 0:
        return []
    if want * 2 > others:  # nearly the whole pool: rank it once
        ranked = sorted((r for r in range(pool_size) if r != exclude),
                        key=lambda r: (int(mix64(query_hash, FEWSHOT + r)), r))
        return ranked[:want]
    picks: list[int] = []
    seen = {exclude}
    start = 0
    while len(picks) < want:  # draws in batches of 2k: one numpy call per query in practice
        draws = mix64(query_hash, FEWSHOT + np.arange(start, start + 2 * want, dtype=np.uint64)) % np.uint64(pool_size)
        start += 2 * want
        for row in draws.tolist():
            if row not in seen:
                seen.add(row)
                picks.append(row)
                if len(picks) == want:
                    break
    return picks


def compose(query_input: str, parts: Sequence[str], part_tokens: Sequence[int], settings: FewShot,
            count_tokens: Callable[[str], int]) -> tuple[str, int]:
    """instruct(x1) ⊕ y1 ⊕ … ⊕ instruct(x): exemplars are dropped from the end until they fit.

    ``parts`` are the formatted exemplars (input, separator, target, separator) and
    ``part_tokens`` their token counts. The budget is ``settings.max_tokens`` minus the
    query's input tokens, as in the reference code. The counts of the parts pick how many
    to keep; the joined prefix is then counted once more, because tokenizing a joined text
    can differ from the sum of its parts at the seams.

    Returns:
      (the composed input, the number of exemplars kept).
    """
    budget = settings.max_tokens - count_tokens(query_input)
    keep, total = 0, 0
    for n in part_tokens:
        if total + n > budget:
            break
        total += n
        keep += 1
    while keep and count_tokens("".join(parts[:keep])) > budget:
        keep -= 1
    return "".join(parts[:keep]) + query_input, keep


def exemplar_text(inputs: str, targets: str, settings: FewShot) -> str:
    """One exemplar as it appears before the query."""
    return inputs + settings.input_target_separator + targets + settings.exemplar_separator
