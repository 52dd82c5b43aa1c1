"""Packing: truncation, bin packing quality and determinism, row layouts for both architectures (columnar)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flanpipe.packing import (Items, Placement, best_fit_decreasing, bound_parts, build_rows, lower_bound, next_fit,
                              pack, single_row, sizes_of, trim, unpack)
from flanpipe.schema import RecordLayout, SpecialIds

DEC = RecordLayout("decoder_only", 8, 4)
ENC = RecordLayout("encoder_decoder", 8, 4)
T5 = SpecialIds(pad=0, eos=1)  # the bundled model's ids


def _kept(items: Items, t, i: int) -> tuple[list[int], list[int]]:
    a = items.input_values[t.input_start[i]:t.input_start[i] + t.input_kept[i]].tolist()
    b = items.target_values[t.target_start[i]:t.target_start[i] + t.target_kept[i]].tolist()
    return a, b


def test_trim_keeps_room_for_eos_on_the_chosen_side():
    items = Items.from_lists([list(range(10, 20)), list(range(10, 20))], [[5, 6, 7, 8, 9], [5]])
    right, left = trim(items, DEC, side="right"), trim(items, DEC, side="left")
    assert _kept(items, right, 0) == ([10, 11, 12, 13, 14, 15, 16], [5, 6, 7])
    assert right.input_truncated.tolist() == [True, True] and right.target_truncated.tolist() == [True, False]
    assert _kept(items, left, 1) == ([13, 14, 15, 16, 17, 18, 19], [5])
    assert right.input_length.tolist() == [8, 8] and right.target_length.tolist() == [4, 2]


def _flan_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = np.minimum(np.exp(rng.normal(4.5, 1.0, n)).astype(int) + 1, 1023) + 1
    targets = np.minimum(np.exp(rng.normal(2, 1.2, n)).astype(int) + 1, 255) + 1
    return inputs, targets


def test_best_fit_decreasing_is_near_the_lower_bound_and_beats_next_fit():
    inputs, targets = _flan_like(5000)
    sizes = [(int(a + b),) for a, b in zip(inputs, targets)]
    bound = math.ceil(sum(s for (s,) in sizes) / 1280)
    bfd = best_fit_decreasing(sizes, (1280,))
    nf = next_fit(sizes, (1280,))
    assert sorted(i for b in bfd for i in b) == list(range(len(sizes)))
    assert all(sum(sizes[i][0] for i in b) <= 1280 for b in bfd)
    assert len(bfd) <= 1.002 * bound < 1.05 * bound < len(nf)
    assert best_fit_decreasing(sizes, (1280,)) == bfd  # deterministic


def test_two_dimensional_packing_respects_both_capacities_and_stays_near_the_bound():
    sizes = [(5, 1), (3, 3), (2, 1), (6, 2), (1, 1)]
    for b in best_fit_decreasing(sizes, (8, 4)):
        assert sum(sizes[i][0] for i in b) <= 8 and sum(sizes[i][1] for i in b) <= 4
    with pytest.raises(ValueError, match="exceeds the bin capacity"):
        best_fit_decreasing([(9, 1)], (8, 4))
    inputs, targets = _flan_like(10_000, seed=1)
    targets[::33] = 256  # a summary filling its whole target length: a row of its own
    sizes = np.stack([inputs, targets], axis=1)
    placed = pack(sizes, (1024, 256))
    for dim, cap in ((inputs, 1024), (targets, 256)):
        assert np.bincount(placed.row, weights=dim).max() <= cap
    bound = lower_bound(*bound_parts(sizes, (1024, 256)), (1024, 256))
    full = (inputs >= 1024) | (targets >= 256)
    assert bound == full.sum() + max(math.ceil(inputs[~full].sum() / 1024), math.ceil(targets[~full].sum() / 256))
    assert bound <= placed.rows <= 1.01 * bound


def test_the_lower_bound_in_one_dimension_is_total_over_capacity():
    sizes = np.array([[1280], [5], [700], [700]])
    assert lower_bound(*bound_parts(sizes, (1280,)), (1280,)) == math.ceil(2685 / 1280)


def test_decoder_only_row_layout():
    items = Items.from_lists([[7, 8], [4]], [[9], [5, 6]])
    rows = build_rows(items, trim(items, DEC), Placement(np.array([0, 0]), np.array([1, 2]), 1), DEC, special=T5)
    row = {k: v[0] for k, v in rows.items()}
    assert row["decoder_target_tokens"].tolist() == [7, 8, 1, 9, 1, 4, 1, 5, 6, 1, 0, 0]
    assert row["decoder_input_tokens"].tolist() == [0, 7, 8, 1, 9, 0, 4, 1, 5, 6, 0, 0]
    assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0]
    assert row["decoder_positions"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0]
    assert row["decoder_loss_weights"].tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    assert row["decoder_causal_attention"].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0]
    assert [(a.tolist(), b.tolist()) for a, b in unpack(row, DEC)] == [([7, 8, 1], [9, 1]), ([4, 1], [5, 6, 1])]


def _reference_row(parts: list[tuple[list[int], list[int]]], layout: RecordLayout) -> dict[str, list[int]]:
    """A row built one token at a time, the slow obvious way (what the columnar builder must equal)."""
    if layout.layout == "decoder_only":
        n = layout.inputs_length + layout.targets_length
        row = {k: [0] * n for k in layout.features}
        at = 0
        for seg, (a, b) in enumerate(parts, 1):
            tokens = a + [T5.eos] + b + [T5.eos]
            for j, tok in enumerate(tokens):
                row["decoder_target_tokens"][at + j] = tok
                row["decoder_input_tokens"][at + j] = tokens[j - 1] if j else 0
                row["decoder_segment_ids"][at + j] = seg
                row["decoder_positions"][at + j] = j
                row["decoder_loss_weights"][at + j] = int(j > len(a))
                row["decoder_causal_attention"][at + j] = int(j <= len(a) + 1)
            at += len(tokens)
        return row
    row = {k: [0] * n for k, n in layout.features.items()}
    at_in = at_out = 0
    for seg, (a, b) in enumerate(parts, 1):
        for j, tok in enumerate(a + [T5.eos]):
            row["encoder_input_tokens"][at_in + j], row["encoder_segment_ids"][at_in + j] = tok, seg
            row["encoder_positions"][at_in + j] = j
        out = b + [T5.eos]
        for j, tok in enumerate(out):
            row["decoder_target_tokens"][at_out + j] = tok
            row["decoder_input_tokens"][at_out + j] = out[j - 1] if j else 0
            row["decoder_segment_ids"][at_out + j], row["decoder_positions"][at_out + j] = seg, j
            row["decoder_loss_weights"][at_out + j] = 1
        at_in += len(a) + 1
        at_out += len(out)
    return row


@pytest.mark.parametrize("layout", [RecordLayout("decoder_only", 24, 8), RecordLayout("encoder_decoder", 24, 8)])
@pytest.mark.parametrize("side", ["right", "left"])
def test_columnar_rows_equal_the_reference_rows(layout, side):
    rng = np.random.default_rng(7)
    inputs = [rng.integers(2, 500, rng.integers(0, 40)).tolist() for _ in range(200)]
    targets = [rng.integers(2, 500, rng.integers(0, 12)).tolist() for _ in range(200)]
    items = Items.from_lists(inputs, targets)
    t = trim(items, layout, side=side)
    sizes, capacity = sizes_of(t, layout)
    placed = pack(sizes, capacity)
    rows = build_rows(items, t, placed, layout, special=T5)
    for r in range(placed.rows):
        members = np.flatnonzero(placed.row == r)
        members = members[np.argsort(placed.segment[members])]
        want = _reference_row([_kept(items, t, int(m)) for m in members], layout)
        for name, values in want.items():
            assert rows[name][r].tolist() == values, (r, name)


def test_packing_disabled_gives_one_example_per_row():
    placed = pack(np.array([[3], [4]]), (8,), enabled=False)
    assert placed.row.tolist() == [0, 1] and placed.segment.tolist() == [1, 1] and placed.rows == 2


def test_single_row_matches_a_packed_row_of_one_and_reserves_a_prefix():
    row = single_row([7, 8], [9], DEC, special=T5)
    assert row["decoder_target_tokens"].tolist() == [7, 8, 1, 9, 1] + [0] * 7
    prompt = single_row([7, 8], [9], DEC, special=T5, prefix=3)
    assert prompt["decoder_target_tokens"].tolist() == [0, 0, 0, 7, 8, 1, 9, 1] + [0] * 7
    assert prompt["decoder_causal_attention"].tolist()[:7] == [1] * 7
