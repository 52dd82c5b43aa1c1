"""Per-use prompt choices: formats, exemplar counts and option styles follow their shares, by stable hash."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from flanpipe.formats import exemplar_counts_of, formats_of, has_options, is_fewshot, shares_of, styles_of
from flanpipe.hashing import stable_hash
from flanpipe.spec import OptionsFormat

N = 4000
HASHES = np.array([stable_hash(7, "example", "ds", f"key-{i}") for i in range(N)], np.uint64)


def _shares(values: list) -> dict:
    return {k: n / len(values) for k, n in Counter(values).items()}


@pytest.mark.parametrize("formats", [
    {"zsopt": 0.25, "fsopt": 0.25, "zsnoopt": 0.25, "fsnoopt": 0.25},
    {"zsopt": 0.7, "fsnoopt": 0.1, "zsnoopt": 0.2},
])
def test_realized_format_shares_are_within_tolerance_of_the_configured_ones(formats):
    shares = shares_of(formats)
    realized = _shares(formats_of(HASHES, 0, shares))
    assert set(realized) == set(formats)
    for name, share in formats.items():
        assert abs(realized[name] - share) < 0.03, (name, realized[name], share)


def test_format_choice_is_stable_per_use_and_ignores_yaml_key_order():
    a = shares_of({"zsopt": 0.5, "fsnoopt": 0.5})
    b = shares_of({"fsnoopt": 0.5, "zsopt": 0.5})
    assert a == b == (("zsopt", 0.5), ("fsnoopt", 0.5))
    first = formats_of(HASHES, 0, a)
    assert formats_of(HASHES.copy(), 0, b) == first
    assert formats_of(HASHES[::-1], 0, a) == first[::-1]  # per example, not per position
    other = formats_of(HASHES, 1, a)  # a repeated use draws again
    assert 0.4 < sum(x != y for x, y in zip(first, other)) / N < 0.6
    assert shares_of(None) is None


def test_format_names_say_what_they_hold():
    assert [(is_fewshot(f), has_options(f)) for f in ("zsopt", "fsopt", "zsnoopt", "fsnoopt")] == [
        (False, True), (True, True), (False, False), (True, False)]


def test_exemplar_counts_are_drawn_with_equal_shares():
    counts = exemplar_counts_of(HASHES, 0, [1, 2, 5, 10])
    for n, share in _shares(counts).items():
        assert n in (1, 2, 5, 10) and abs(share - 0.25) < 0.03
    assert exemplar_counts_of(HASHES[:5], 0, [3]) == [3] * 5
    # independent of the format draw: among fs uses the counts keep their shares
    fs = [c for c, f in zip(counts, formats_of(HASHES, 0, (("zsopt", 0.5), ("fsopt", 0.5)))) if f == "fsopt"]
    assert all(abs(s - 0.25) < 0.04 for s in _shares(fs).values())


def test_option_styles_follow_equal_shares_and_headers_and_items_are_independent():
    fmt = OptionsFormat(header=["\n\nOPTIONS:", "\n\nChoices:", "\n\nPick from:"],
                        item=["\n- {option}", "\n({letter}) {option}"])
    styles = styles_of(HASHES, 0, fmt)
    for share in _shares([h for h, _ in styles]).values():
        assert abs(share - 1 / 3) < 0.03
    for share in _shares([i for _, i in styles]).values():
        assert abs(share - 1 / 2) < 0.03
    for share in _shares(styles).values():  # every pair about 1/6: the two draws do not move together
        assert abs(share - 1 / 6) < 0.03
    assert styles_of(HASHES, 0, fmt) == styles
    assert styles_of(HASHES[:3], 0, OptionsFormat(header="\n\nOPTIONS:", item="\n- {option}")) == [(0, 0)] * 3


def test_option_style_and_format_draws_do_not_move_together():
    fmt = OptionsFormat(header=["a:", "b:"], item="\n- {option}")
    pairs = Counter(zip(formats_of(HASHES, 0, (("zsopt", 0.5), ("zsnoopt", 0.5))),
                        [h for h, _ in styles_of(HASHES, 0, fmt)]))
    assert all(abs(n / N - 0.25) < 0.03 for n in pairs.values()) and len(pairs) == 4
