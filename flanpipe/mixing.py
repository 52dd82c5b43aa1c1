"""Mix stage: examples-proportional rates with a maximum, integer allocation, and which uses each shard and window takes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


def submixture_rates(groups: Sequence[tuple[float, int, Mapping[str, int]]]
                     ) -> tuple[dict[str, float], list[float]]:
    """Rates of a mixture of sub-mixtures, each ``(weight, maximum_rate, counts)``, and each one's share.

    A sub-mixture's share of the examples is its weight over the weights of the sub-mixtures with any
    example (one with none drops out); within it, datasets mix examples-proportionally with its maximum.

    Example:
      >>> submixture_rates([(0.3, 3_000, {"a": 9_000, "b": 1_000}), (0.1, 5, {"c": 9})])
      ({'a': 0.5625, 'b': 0.1875, 'c': 0.25}, [0.75, 0.25])
    """
    live = [sum(counts.values()) > 0 for _, _, counts in groups]
    total = sum(w for (w, _, _), ok in zip(groups, live) if ok)
    if total == 0:
        raise ValueError("no sub-mixture has any training example")
    rates: dict[str, float] = {}
    shares = []
    for (weight, maximum_rate, counts), ok in zip(groups, live):
        share = weight / total if ok else 0.0
        shares.append(share)
        if ok:
            rates.update({d: share * r for d, r in mixing_rates(counts, maximum_rate).items()})
    return rates, shares


@dataclass(frozen=True)
class Mixture:
    """One train mixture, computed once from the prepared counts: rates and examples per dataset."""

    rates: dict[str, float]
    uses: dict[str, int]  # examples each dataset contributes (repeats take the next template)

    @property
    def examples(self) -> int:
        return sum(self.uses.values())


def plan_mixture(kept: Mapping[str, int], mean_tokens: Mapping[str, float], *, maximum_rate: int,
                 examples: int | None, tokens: int | None) -> Mixture:
    """The mixture of datasets with ``kept`` train examples each, sized in examples or in tokens.

    A size in tokens (steps x batch tokens) becomes as many examples as the rate-weighted
    mean example length fills.
    """
    return sized_mixture(mixing_rates(kept, maximum_rate), mean_tokens, examples=examples, tokens=tokens)


def sized_mixture(rates: Mapping[str, float], mean_tokens: Mapping[str, float], *, examples: int | None,
                  tokens: int | None) -> Mixture:
    """The mixture of ``rates``, sized in examples or in tokens (as ``plan_mixture``)."""
    rates = dict(rates)
    total = examples
    if total is None:
        if tokens is None:
            raise ValueError("a mixture needs a size in examples or in tokens")
        mean = sum(rates[d] * mean_tokens[d] for d in rates)
        total = max(1, round(tokens / mean)) if mean > 0 else 1
    return Mixture(rates, {d: n for d, n in allocate(rates, total).items() if n})


def variants_needed(uses: int, kept: int) -> int:
    """How many passes over a dataset's ``kept`` examples ``uses`` takes (pass v renders variant v)."""
    return -(-uses // kept) if kept else 0


def shard_range(count: int, shard: int, shards: int) -> tuple[int, int]:
    """The contiguous block of a dataset's ``count`` uses that shard ``shard`` of ``shards`` holds."""
    return count * shard // shards, count * (shard + 1) // shards


def windows(blocks: Mapping[str, tuple[int, int]], window: int) -> list[dict[str, tuple[int, int]]]:
    """Cut a shard's per-dataset use blocks into windows of about ``window`` uses.

    Every window takes a contiguous, proportional slice of every dataset's block, so it is a
    proportional sample of the whole mixture and reads each dataset sequentially.
    """
    total = sum(stop - start for start, stop in blocks.values())
    count = max(1, -(-total // window))
    return [{d: (start + (stop - start) * i // count, start + (stop - start) * (i + 1) // count)
             for d, (start, stop) in blocks.items()} for i in range(count)]


def pieces(start: int, stop: int, kept: int) -> list[tuple[int, int, int]]:
    """(variant, first row, end row) runs covering uses ``start..stop-1`` of a dataset of ``kept`` rows.

    Use j is row ``j % kept`` of variant ``j // kept``: once every example is used, the next
    pass takes each example again with its next template.
    """
    out = []
    j = start
    while j < stop:
        variant, row = divmod(j, kept)
        end = min(stop - j, kept - row)
        out.append((variant, row, row + end))
        j += end
    return out
