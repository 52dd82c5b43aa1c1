"""Mixing math: per-dataset caps, examples-proportional rates with a maximum, and integer allocation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def mix_order(keys: Sequence[str], *, seed: int, dataset: str) -> list[int]:
    """The seeded order in which a dataset's examples are used by every mixture (rows of ``keys``)."""
    return sorted(range(len(keys)), key=lambda i: (stable_hash(seed, "mix-order", dataset, keys[i]), i))


def uses(order: Sequence[int], start: int, stop: int) -> list[tuple[int, int]]:
    """(example row, variant) of a dataset's uses ``start``..``stop - 1`` in a mixture.

    Use j takes the example at ``order[j % n]``; once all n are used the next pass takes
    variant 1 (the next template), and so on, so a repeated example is rendered differently.
    """
    n = len(order)
    return [(order[j % n], j // n) for j in range(start, stop)] if n else []


def shard_range(count: int, shard: int, shards: int) -> tuple[int, int]:
    """The contiguous block of a dataset's ``count`` uses that shard ``shard`` of ``shards`` holds."""
    return count * shard // shards, count * (shard + 1) // shards
