"""Mixing math: per-dataset caps, examples-proportional rates with a maximum, and integer allocation."""

from __future__ import annotations

import math
from collections.abc import Mapping

from flanpipe.hashing import stable_hash



def mixing_rates(counts: Mapping[str, int], maximum_rate: int) -> dict[str, float]:
    """Examples-proportional rates (Raffel et al. 2020): weight = min(count, maximum_rate), normalised.

    Example:
      >>> mixing_rates({"a": 10_000, "b": 1_000}, 3_000)
      {'a': 0.75, 'b': 0.25}
    """
    weights = {name: float(min(n, maximum_rate)) for name, n in counts.items() if n > 0}
    total = sum(weights.values())
    if total == 0:
        raise ValueError("no dataset in the mixture has any training example")
    return {name: w / total for name, w in weights.items()}


def allocate(rates: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` examples by ``rates`` into integers summing exactly to ``total``.

    Largest-remainder rounding; ties go to the name that sorts first, so the result
    depends only on the inputs.
    """
    exact = {name: rate * total for name, rate in rates.items()}
    out = {name: math.floor(x) for name, x in exact.items()}
    short = total - sum(out.values())
    by_remainder = sorted(exact, key=lambda n: (-(exact[n] - out[n]), n))
    for name in by_remainder[:short]:
        out[name] += 1
    return out


def select(n_examples: int, count: int, *, seed: int, dataset: str, keys: list[str]) -> list[tuple[int, int]]:
    """Which (example row, variant) pairs make up a dataset's ``count`` examples in a mixture.

    Examples are visited in a seeded order; once all are used the next pass takes variant 1
    (the next template), and so on, so a repeated example is rendered differently.
    """
    if n_examples == 0:
        return []
    order = sorted(range(n_examples), key=lambda i: (stable_hash(seed, "mix-order", dataset, keys[i]), i))
    return [(order[j % n_examples], j // n_examples) for j in range(count)]
