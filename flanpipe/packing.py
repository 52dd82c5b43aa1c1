"""Packs tokenized examples into fixed-length rows, columnar: flat token arrays -> 2-D seqio/t5x feature arrays."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flanpipe.schema import RecordLayout, SpecialIds

Algorithm = Literal["best_fit_decreasing", "next_fit"]


@dataclass(frozen=True)
class Items:
    """A batch of tokenized examples as flat arrays: item i's input ids are
    ``input_values[input_offsets[i]:input_offsets[i + 1]]`` (no EOS), and likewise for targets."""

    input_values: np.ndarray
    input_offsets: np.ndarray
    target_values: np.ndarray
    target_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.input_offsets) - 1

    @classmethod
    def from_lists(cls, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> Items:
        """Items from Python lists of token ids (for tests and single rows; the write path uses Arrow buffers)."""

        def flat(parts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
            lengths = np.fromiter((len(p) for p in parts), np.int64, count=len(parts))
            offsets = np.zeros(len(parts) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values = np.fromiter((t for p in parts for t in p), np.int32, count=int(offsets[-1]))
            return values, offsets

        return cls(*flat(inputs), *flat(targets))


@dataclass(frozen=True)
class Trim:
    """Which tokens of each item survive truncation; every kept part then ends in one EOS (and every input
    starts with one BOS when ``bos``).

    Lengths include the EOS (and BOS), as in seqio: an input of ``inputs_length`` tokens keeps
    ``inputs_length - 1`` text tokens (``inputs_length - 2`` with a BOS).
    """

    input_start: np.ndarray  # index into Items.input_values of the first kept input token
    input_kept: np.ndarray  # kept input text tokens (EOS not counted)
    target_start: np.ndarray
    target_kept: np.ndarray
    input_truncated: np.ndarray  # bool
    target_truncated: np.ndarray
    bos: int = 0  # 1: every input starts with a BOS token

    @property
    def input_length(self) -> np.ndarray:
        return self.input_kept + 1 + self.bos

    @property
    def target_length(self) -> np.ndarray:
        return self.target_kept + 1


def trim(items: Items, layout: RecordLayout, *, side: Literal["right", "left"] = "right", bos: bool = False
         ) -> Trim:
    """Cut inputs (on ``side``) and targets (at the end) so each part plus its EOS (and an input's BOS) fits."""
    n_in = np.diff(items.input_offsets)
    n_out = np.diff(items.target_offsets)
    kept_in = np.minimum(n_in, layout.inputs_length - 1 - int(bos))
    kept_out = np.minimum(n_out, layout.targets_length - 1)
    in_start = items.input_offsets[:-1] + (n_in - kept_in if side == "left" else 0)
    return Trim(in_start, kept_in, items.target_offsets[:-1].copy(), kept_out, n_in > kept_in, n_out > kept_out,
                int(bos))


def sizes_of(t: Trim, layout: RecordLayout) -> tuple[np.ndarray, tuple[int, ...]]:
    """Item sizes and bin capacity: one length for decoder_only, (input, target) for encoder_decoder."""
    if layout.layout == "decoder_only":
        return (t.input_length + t.target_length)[:, None], (layout.inputs_length + layout.targets_length,)
    return np.stack([t.input_length, t.target_length], axis=1), (layout.inputs_length, layout.targets_length)


@dataclass(frozen=True)
class Placement:
    """Where each item goes: its row and its 1-based segment within the row; rows in creation order."""

    row: np.ndarray
    segment: np.ndarray
    rows: int

    @classmethod
    def of_bins(cls, bins: Sequence[Sequence[int]], n: int) -> Placement:
        row = np.empty(n, np.int64)
        segment = np.empty(n, np.int64)
        for r, members in enumerate(bins):
            row[members] = r
            segment[members] = np.arange(1, len(members) + 1)
        return cls(row, segment, len(bins))


def pack(sizes: np.ndarray, capacity: tuple[int, ...], *, algorithm: Algorithm = "best_fit_decreasing",
         enabled: bool = True) -> Placement:
    """Assign items (rows of ``sizes``) to rows of ``capacity``; one item per row when not ``enabled``."""
    n = len(sizes)
    if not enabled:
        return Placement(np.arange(n), np.ones(n, np.int64), n)
    over = np.flatnonzero((sizes > np.asarray(capacity)).any(axis=1))
    if len(over):
        raise ValueError(f"item {int(over[0])} of size {tuple(sizes[over[0]].tolist())} exceeds the bin capacity "
                         f"{capacity}")
    if algorithm == "next_fit":
        bins = next_fit([tuple(s) for s in sizes.tolist()], capacity)
    elif len(capacity) == 1:
        bins = _bfd_1d(sizes[:, 0], capacity[0])
    else:
        bins = _bfd_2d(sizes[:, 0], sizes[:, 1], capacity)
    return Placement.of_bins(bins, n)


def best_fit_decreasing(sizes: Sequence[tuple[int, ...]], capacity: tuple[int, ...]) -> list[list[int]]:
    """Assign items to few bins: largest first, each into the fullest bin that still fits it.

    1-D (decoder_only: one length) keeps the open bins sorted by room, so the best fit is a
    bisect away. 2-D (encoder_decoder: input and target lengths) buckets the open bins by
    target room and takes, over the buckets that fit, the bin whose room lines up best with
    the item. Bins are ordered by creation and items within a bin by insertion; ties break on
    the item index, so the result depends only on the input.

    Returns:
      Lists of item indices, one per bin.
    """
    array = np.asarray(sizes, np.int64).reshape(len(sizes), len(capacity))
    for i, size in enumerate(array.tolist()):
        if any(s > c for s, c in zip(size, capacity)):
            raise ValueError(f"item {i} of size {tuple(size)} exceeds the bin capacity {capacity}")
    if len(capacity) == 1:
        return _bfd_1d(array[:, 0], capacity[0])
    return _bfd_2d(array[:, 0], array[:, 1], capacity)


def _bfd_1d(sizes: np.ndarray, capacity: int) -> list[list[int]]:
    order = np.lexsort((np.arange(len(sizes)), -sizes)).tolist()
    values = sizes.tolist()
    smallest = min(values, default=1)
    bins: list[list[int]] = []
    open_bins: list[tuple[int, int]] = []  # (room left, bin), sorted
    for i in order:
        size = values[i]
        pos = bisect.bisect_left(open_bins, (size, -1))
        if pos < len(open_bins):
            room, b = open_bins.pop(pos)
            bins[b].append(i)
            room -= size
        else:
            b = len(bins)
            bins.append([i])
            room = capacity - size
        if room >= smallest:  # a bin no item fits into is closed for good
            bisect.insort(open_bins, (room, b))
    return bins


_BUCKETS = 16  # target-room buckets of the 2-D packer: more is a little tighter, fewer is faster


def _bfd_2d(a: np.ndarray, b: np.ndarray, capacity: tuple[int, ...]) -> list[list[int]]:
    cap_a, cap_b = capacity
    # Largest first by normalized size; equal sizes in index order.
    order = np.lexsort((np.arange(len(a)), -(a / cap_a + b / cap_b))).tolist()
    av, bv = a.tolist(), b.tolist()
    min_a, min_b = min(av, default=1), min(bv, default=1)

    def bucket(room: int) -> int:
        return room * _BUCKETS // (cap_b + 1)

    # Each bucket holds the open bins whose target room falls in it, sorted by input room.
    buckets: list[list[tuple[int, int, int]]] = [[] for _ in range(_BUCKETS)]
    bins: list[list[int]] = []
    for i in order:
        x, y = av[i], bv[i]
        if x > cap_a - min_a or y > cap_b - min_b:  # no other item fits beside it: a row of its own
            bins.append([i])
            continue
        # Of the bins that fit, the one whose room lines up best with the item (the largest
        # dot product of item and room, both normalized): on FLAN's length mix this leaves
        # rows that later items can still fill, and needs 1.005x the lower bound where the
        # least-leftover rule needs 1.010x (measured on the paper-size NLI mixture).
        best: tuple[float, int, int] | None = None  # (score, bucket, position)
        first = bucket(y)
        for k in range(first, _BUCKETS):
            entries = buckets[k]
            if not entries or entries[-1][0] < x:
                continue
            pos = len(entries) - 1  # the most input room in this bucket
            if k == first:  # this bucket may hold bins with target room below y
                while pos >= 0 and entries[pos][1] < y:
                    pos -= 1
                if pos < 0 or entries[pos][0] < x:
                    continue
            room_a, room_b, _ = entries[pos]
            score = x * room_a / (cap_a * cap_a) + y * room_b / (cap_b * cap_b)
            if best is None or score > best[0]:
                best = (score, k, pos)
        if best is None:
            j = len(bins)
            bins.append([i])
            room_a, room_b = cap_a - x, cap_b - y
        else:
            _, k, pos = best
            room_a, room_b, j = buckets[k].pop(pos)
            bins[j].append(i)
            room_a, room_b = room_a - x, room_b - y
        if room_a >= min_a and room_b >= min_b:
            bisect.insort(buckets[bucket(room_b)], (room_a, room_b, j))
    return bins


def bound_parts(sizes: np.ndarray, capacity: tuple[int, ...]) -> tuple[int, list[int]]:
    """The parts of the packing lower bound of a set of items, which add up over windows and shards.

    Returns (items that fill a dimension completely, the other items' total size per dimension).
    See ``lower_bound``.
    """
    full = (sizes >= np.asarray(capacity)).any(axis=1)
    return int(full.sum()), [int(x) for x in sizes[~full].sum(axis=0)]


def lower_bound(full: int, rest: Sequence[int], capacity: tuple[int, ...]) -> int:
    """Fewest rows that could possibly hold the items (``bound_parts``, summed over any number of windows).

    An item that fills a whole dimension (every item takes at least one position of each)
    shares its row with no other; the others need at least their total size over the
    capacity, in every dimension. In one dimension this is ``ceil(total / capacity)``.
    """
    return full + max((-(-r // c) for r, c in zip(rest, capacity)), default=0)


def next_fit(sizes: Sequence[tuple[int, ...]], capacity: tuple[int, ...]) -> list[list[int]]:
    """Greedy next-fit in arrival order (seqio's packing): start a new bin when the item does not fit."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i, size in enumerate(sizes):
        if bins and all(s <= r for s, r in zip(size, room)):
            bins[-1].append(i)
            room = [r - s for r, s in zip(room, size)]
        else:
            bins.append([i])
            room = [c - s for c, s in zip(capacity, size)]
    return bins


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), without a Python loop."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def _offsets(place: Placement, length: np.ndarray) -> np.ndarray:
    """Start of each item within its row: the lengths of the items before it in the same row."""
    order = np.lexsort((place.segment, place.row))
    lengths = length[order]
    ends = np.cumsum(lengths)
    row_start = np.zeros(len(order), np.int64)
    first = np.ones(len(order), bool)
    first[1:] = place.row[order][1:] != place.row[order][:-1]
    # cumulative length at the start of each item's row, carried forward over the row
    row_start[first] = ends[first] - lengths[first]
    row_start = np.maximum.accumulate(np.where(first, row_start, 0)) if len(order) else row_start
    out = np.empty(len(order), np.int64)
    out[order] = ends - lengths - row_start
    return out


def _shift_right(tokens: np.ndarray, positions: np.ndarray, pad_id: int) -> np.ndarray:
    """Autoregressive inputs: each token's predecessor within its segment, pad at segment starts and padding."""
    shifted = np.empty_like(tokens)
    shifted[:, 0] = pad_id
    shifted[:, 1:] = tokens[:, :-1]
    shifted[positions == 0] = pad_id  # segment starts, and padding (position 0 too)
    return shifted


def _segments(rows: int, length: int, dest: np.ndarray, size: np.ndarray, segment: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices covered by each item, and the row's segment ids and positions (0 on padding)."""
    covered = _ranges(dest, size)
    seg = np.zeros(rows * length, np.int32)
    pos = np.zeros(rows * length, np.int32)
    seg[covered] = np.repeat(segment, size)
    pos[covered] = covered - np.repeat(dest, size)
    return covered, seg, pos


def build_rows(items: Items, t: Trim, place: Placement, layout: RecordLayout, *, special: SpecialIds
               ) -> dict[str, np.ndarray]:
    """The feature arrays of every packed row (seqio feature-converter layout), each ``(rows, length)`` int32.

    decoder_only rows hold ``[BOS] inputs EOS targets EOS`` per segment; the loss covers the targets
    and their EOS, and the prefix-LM mask covers the inputs plus the first target position
    (fed the input's EOS) — seqio PrefixLMFeatureConverter's ``inputs_width + 1``.

    Raises:
      ValueError: ``t`` has a BOS but ``special`` none.
    """
    if t.bos and special.bos is None:
        raise ValueError("the trim reserves a BOS position but the special ids have no bos")
    eos_id, pad_id = special.eos, special.pad
    rows = place.rows
    seg_ids = place.segment.astype(np.int32)
    in_len, out_len = t.input_length, t.target_length
    if layout.layout == "decoder_only":
        length = layout.inputs_length + layout.targets_length
        size = in_len + out_len
        dest = place.row * length + _offsets(place, size)
        tokens = np.full(rows * length, pad_id, np.int32)
        if t.bos:
            tokens[dest] = special.bos
        tokens[_ranges(dest + t.bos, t.input_kept)] = items.input_values[_ranges(t.input_start, t.input_kept)]
        tokens[dest + t.bos + t.input_kept] = eos_id
        tokens[_ranges(dest + in_len, t.target_kept)] = items.target_values[_ranges(t.target_start, t.target_kept)]
        tokens[dest + in_len + t.target_kept] = eos_id
        _, seg, pos = _segments(rows, length, dest, size, seg_ids)
        loss = np.zeros(rows * length, np.int32)
        loss[_ranges(dest + in_len, out_len)] = 1
        causal = np.zeros(rows * length, np.int32)
        causal[_ranges(dest, in_len + 1)] = 1
        shape = (rows, length)
        tokens, pos = tokens.reshape(shape), pos.reshape(shape)
        return {
            "decoder_target_tokens": tokens,
            "decoder_input_tokens": _shift_right(tokens, pos, pad_id),
            "decoder_loss_weights": loss.reshape(shape),
            "decoder_segment_ids": seg.reshape(shape),
            "decoder_positions": pos,
            "decoder_causal_attention": causal.reshape(shape),
        }
    li, lt = layout.inputs_length, layout.targets_length
    enc_dest = place.row * li + _offsets(place, in_len)
    dec_dest = place.row * lt + _offsets(place, out_len)
    enc = np.full(rows * li, pad_id, np.int32)
    if t.bos:
        enc[enc_dest] = special.bos
    enc[_ranges(enc_dest + t.bos, t.input_kept)] = items.input_values[_ranges(t.input_start, t.input_kept)]
    enc[enc_dest + t.bos + t.input_kept] = eos_id
    dec = np.full(rows * lt, pad_id, np.int32)
    dec[_ranges(dec_dest, t.target_kept)] = items.target_values[_ranges(t.target_start, t.target_kept)]
    dec[dec_dest + t.target_kept] = eos_id
    _, enc_seg, enc_pos = _segments(rows, li, enc_dest, in_len, seg_ids)
    _, dec_seg, dec_pos = _segments(rows, lt, dec_dest, out_len, seg_ids)
    dec, dec_pos, dec_seg = dec.reshape(rows, lt), dec_pos.reshape(rows, lt), dec_seg.reshape(rows, lt)
    return {
        "encoder_input_tokens": enc.reshape(rows, li),
        "encoder_segment_ids": enc_seg.reshape(rows, li),
        "encoder_positions": enc_pos.reshape(rows, li),
        "decoder_target_tokens": dec,
        "decoder_input_tokens": _shift_right(dec, dec_pos, pad_id),
        "decoder_loss_weights": (dec_seg > 0).astype(np.int32),
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
    }


def single_row(input_ids: Sequence[int], target_ids: Sequence[int], layout: RecordLayout, *, special: SpecialIds,
               side: Literal["right", "left"] = "right", prefix: int = 0) -> dict[str, np.ndarray]:
    """One unpacked example as a row (1-D arrays), built by the same code as packed rows.

    ``prefix`` reserves that many leading input positions (pad tokens inside the segment, after the BOS),
    e.g. for a soft prompt; the row is then ``prefix`` positions longer on the input side.
    """
    items = Items.from_lists([input_ids], [target_ids])
    t = trim(items, layout, side=side, bos=special.bos is not None)
    if prefix:
        pads = np.full(prefix, special.pad, np.int32)
        kept = items.input_values[t.input_start[0]:t.input_start[0] + t.input_kept[0]]
        items = Items(np.concatenate([pads, kept]), np.array([0, prefix + len(kept)]),
                      items.target_values, items.target_offsets)
        t = Trim(np.zeros(1, np.int64), t.input_kept + prefix, t.target_start, t.target_kept,
                 t.input_truncated, t.target_truncated, t.bos)
        layout = RecordLayout(layout.layout, layout.inputs_length + prefix, layout.targets_length)
    row = build_rows(items, t, Placement(np.zeros(1, np.int64), np.ones(1, np.int64), 1), layout, special=special)
    return {name: value[0] for name, value in row.items()}


def unpack(row: dict[str, np.ndarray], layout: RecordLayout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Recover each segment's (inputs, targets) token ids from a packed row (inverse of build_rows)."""
    out = []
    if layout.layout == "decoder_only":
        seg, tokens, loss = row["decoder_segment_ids"], row["decoder_target_tokens"], row["decoder_loss_weights"]
        for s in range(1, int(seg.max(initial=0)) + 1):
            mask = seg == s
            out.append((tokens[mask & (loss == 0)], tokens[mask & (loss == 1)]))
        return out
    for s in range(1, int(row["encoder_segment_ids"].max(initial=0)) + 1):
        out.append((row["encoder_input_tokens"][row["encoder_segment_ids"] == s],
                    row["decoder_target_tokens"][row["decoder_segment_ids"] == s]))
    return out
