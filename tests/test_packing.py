"""Packing: truncation, bin packing quality and determinism, row layouts for both architectures."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from flanpipe.packing import Trimmed, best_fit_decreasing, build_row, next_fit, pack, trim, unpack
from flanpipe.schema import EOS_ID, RecordLayout

DEC = RecordLayout("decoder_only", 8, 4)
ENC = RecordLayout("encoder_decoder", 8, 4)


def test_trim_keeps_room_for_eos_on_the_chosen_side():
    t = trim(list(range(10, 20)), [5, 6, 7, 8, 9], DEC, side="right")
    assert t.inputs.tolist() == [10, 11, 12, 13, 14, 15, 16, EOS_ID] and t.input_truncated
    assert t.targets.tolist() == [5, 6, 7, EOS_ID] and t.target_truncated
    left = trim(list(range(10, 20)), [5], DEC, side="left")
    assert left.inputs.tolist() == [13, 14, 15, 16, 17, 18, 19, EOS_ID] and not left.target_truncated


def test_best_fit_decreasing_is_near_the_lower_bound_and_beats_next_fit():
    rng = random.Random(0)
    sizes = [(min(1280, int(rng.lognormvariate(5, 1)) + 2),) for _ in range(5000)]
    bound = math.ceil(sum(s for (s,) in sizes) / 1280)
    bfd = best_fit_decreasing(sizes, (1280,))
    nf = next_fit(sizes, (1280,))
    assert sorted(i for b in bfd for i in b) == list(range(len(sizes)))
    assert all(sum(sizes[i][0] for i in b) <= 1280 for b in bfd)
    assert len(bfd) <= 1.01 * bound < len(nf)
    assert best_fit_decreasing(sizes, (1280,)) == bfd  # deterministic


def test_two_dimensional_packing_respects_both_capacities():
    sizes = [(5, 1), (3, 3), (2, 1), (6, 2), (1, 1)]
    bins = best_fit_decreasing(sizes, (8, 4))
    for b in bins:
        assert sum(sizes[i][0] for i in b) <= 8 and sum(sizes[i][1] for i in b) <= 4
    with pytest.raises(ValueError, match="exceeds the bin capacity"):
        best_fit_decreasing([(9, 1)], (8, 4))


def _ex(inputs, targets):
    return Trimmed(np.array(inputs + [EOS_ID], np.int32), np.array(targets + [EOS_ID], np.int32), False, False)


def test_decoder_only_row_layout():
    row = build_row([_ex([7, 8], [9]), _ex([4], [5, 6])], DEC)
    assert row["decoder_target_tokens"].tolist() == [7, 8, 1, 9, 1, 4, 1, 5, 6, 1, 0, 0]
    assert row["decoder_input_tokens"].tolist() == [0, 7, 8, 1, 9, 0, 4, 1, 5, 6, 0, 0]
    assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0]
    assert row["decoder_positions"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0]
    assert row["decoder_loss_weights"].tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    assert row["decoder_causal_attention"].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0]
    assert [(a.tolist(), b.tolist()) for a, b in unpack(row, DEC)] == [([7, 8, 1], [9, 1]), ([4, 1], [5, 6, 1])]


def test_encoder_decoder_rows_round_trip():
    examples = [_ex([3, 4, 5], [6]), _ex([7], [8, 9]), _ex([2, 2, 2, 2], [3])]
    rows = pack(examples, ENC)
    seen = {}
    for members, row in rows:
        assert set(row) == set(ENC.features) and all(len(row[k]) == n for k, n in ENC.features.items())
        assert (row["decoder_loss_weights"] == (row["decoder_segment_ids"] > 0)).all()
        for m, (inp, tgt) in zip(members, unpack(row, ENC)):
            seen[m] = (inp.tolist(), tgt.tolist())
    assert seen == {i: (e.inputs.tolist(), e.targets.tolist()) for i, e in enumerate(examples)}


def test_packing_disabled_gives_one_example_per_row():
    rows = pack([_ex([1], [2]), _ex([3], [4])], DEC, enabled=False)
    assert [m for m, _ in rows] == [[0], [1]]
