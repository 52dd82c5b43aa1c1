"""Mixing: rates, sizing in examples or tokens, repeats, shard blocks and windows."""

from __future__ import annotations

import pytest

from flanpipe.mixing import allocate, mixing_rates, pieces, plan_mixture, shard_range, variants_needed, windows


def test_allocation_is_exact_and_deterministic():
    rates = mixing_rates({"big": 30_000, "mid": 3_000, "small": 1_000}, 3_000)
    assert rates == {"big": 3 / 7, "mid": 3 / 7, "small": 1 / 7}
    assert allocate(rates, 1001) == allocate(dict(reversed(rates.items())), 1001)
    assert sum(allocate(rates, 1001).values()) == 1001
    with pytest.raises(ValueError, match="no dataset"):
        mixing_rates({"a": 0}, 10)


def test_a_mixture_sized_in_tokens_fills_them_with_the_mean_example():
    mix = plan_mixture({"a": 100, "b": 100}, {"a": 10.0, "b": 30.0}, maximum_rate=3000, examples=None, tokens=2000)
    assert mix.examples == 100 and mix.uses == {"a": 50, "b": 50}
    assert plan_mixture({"a": 100}, {"a": 1.0}, maximum_rate=3000, examples=7, tokens=None).uses == {"a": 7}


def test_repeated_uses_take_the_next_variant_in_the_same_row_order():
    assert variants_needed(7, 3) == 3 and variants_needed(3, 3) == 1 and variants_needed(0, 3) == 0
    assert pieces(0, 7, 3) == [(0, 0, 3), (1, 0, 3), (2, 0, 1)]
    assert pieces(2, 5, 3) == [(0, 2, 3), (1, 0, 2)]
    assert pieces(4, 4, 3) == []


def test_shards_and_windows_partition_every_use_exactly_once():
    assert [shard_range(7, k, 3) for k in range(3)] == [(0, 2), (2, 4), (4, 7)]
    blocks = {"a": (10, 1010), "b": (0, 37), "c": (5, 5)}
    ws = windows(blocks, 100)
    assert len(ws) == 11  # ceil(1037 / 100)
    for name, (start, stop) in blocks.items():
        covered = [u for w in ws for u in range(*w[name])]
        assert covered == list(range(start, stop))
    # every window is a proportional slice of every dataset
    assert all(90 <= w["a"][1] - w["a"][0] <= 91 for w in ws)
