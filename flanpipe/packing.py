"""Packs tokenized examples into fixed-length rows (token ids -> packed seqio/t5x feature arrays)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flanpipe.schema import EOS_ID, PAD_ID, RecordLayout


@dataclass(frozen=True)
class Trimmed:
    """One example's token ids after truncation, each ending in EOS."""

    inputs: np.ndarray
    targets: np.ndarray
    input_truncated: bool
    target_truncated: bool


def trim(inputs: Sequence[int], targets: Sequence[int], layout: RecordLayout, *,
         side: Literal["right", "left"] = "right") -> Trimmed:
    """Append EOS to both parts, cutting inputs (on ``side``) and targets (at the end) to their lengths.

    Lengths include the EOS, as in seqio: an input of ``inputs_length`` tokens keeps
    ``inputs_length - 1`` text tokens.
    """
    room_in, room_out = layout.inputs_length - 1, layout.targets_length - 1
    cut_in, cut_out = len(inputs) > room_in, len(targets) > room_out
    if cut_in:
        inputs = inputs[:room_in] if side == "right" else inputs[len(inputs) - room_in:]
    if cut_out:
        targets = targets[:room_out]
    return Trimmed(_with_eos(inputs), _with_eos(targets), cut_in, cut_out)


def _with_eos(ids: Sequence[int]) -> np.ndarray:
    out = np.empty(len(ids) + 1, np.int32)
    out[:-1] = ids
    out[-1] = EOS_ID
    return out


def best_fit_decreasing(sizes: Sequence[tuple[int, ...]], capacity: tuple[int, ...]) -> list[list[int]]:
    """Assign items to as few bins as possible: longest first, each into the fullest bin it fits.

    ``sizes`` and ``capacity`` are tuples so the same code packs 1-D (decoder-only: one
    length) and 2-D (encoder-decoder: input and target lengths) items. Bins are ordered by
    creation and items within a bin by insertion; ties break on the item index, so the
    result depends only on the input.

    Returns:
      Lists of item indices, one per bin.
    """
    order = sorted(range(len(sizes)), key=lambda i: (tuple(-s for s in sizes[i]), i))
    bins: list[list[int]] = []
    free: list[list[int]] = []
    # For 1-D items keep (remaining, bin) sorted so the best fit is a bisect away.
    open_bins: list[tuple[int, int]] = []
    one_d = len(capacity) == 1
    for i in order:
        size = sizes[i]
        if any(s > c for s, c in zip(size, capacity)):
            raise ValueError(f"item {i} of size {size} exceeds the bin capacity {capacity}")
        if one_d:
            pos = bisect.bisect_left(open_bins, (size[0], -1))
            if pos < len(open_bins):
                remaining, b = open_bins.pop(pos)
                bins[b].append(i)
                bisect.insort(open_bins, (remaining - size[0], b))
                continue
            bins.append([i])
            bisect.insort(open_bins, (capacity[0] - size[0], len(bins) - 1))
            continue
        best, best_left = -1, None
        for b, room in enumerate(free):
            if all(s <= r for s, r in zip(size, room)):
                left = sum(r - s for s, r in zip(size, room))
                if best_left is None or left < best_left:
                    best, best_left = b, left
        if best < 0:
            bins.append([i])
            free.append([c - s for c, s in zip(capacity, size)])
        else:
            bins[best].append(i)
            free[best] = [r - s for r, s in zip(free[best], size)]
    return bins


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


def pack(examples: Sequence[Trimmed], layout: RecordLayout, *,
         algorithm: Literal["best_fit_decreasing", "next_fit"] = "best_fit_decreasing",
         enabled: bool = True) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """Pack examples into rows of ``layout``.

    Returns:
      (indices of the examples in the row, feature arrays) per row.
    """
    if layout.layout == "decoder_only":
        sizes = [(len(e.inputs) + len(e.targets),) for e in examples]
        capacity: tuple[int, ...] = (layout.inputs_length + layout.targets_length,)
    else:
        sizes = [(len(e.inputs), len(e.targets)) for e in examples]
        capacity = (layout.inputs_length, layout.targets_length)
    if not enabled:
        groups = [[i] for i in range(len(examples))]
    elif algorithm == "best_fit_decreasing":
        groups = best_fit_decreasing(sizes, capacity)
    else:
        groups = next_fit(sizes, capacity)
    return [(g, build_row([examples[i] for i in g], layout)) for g in groups]


def _segments(parts: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate ``parts`` into one padded row with segment ids (1-based) and positions."""
    tokens = np.full(length, PAD_ID, np.int32)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    at = 0
    for seg, part in enumerate(parts, 1):
        n = len(part)
        tokens[at:at + n] = part
        segment_ids[at:at + n] = seg
        positions[at:at + n] = np.arange(n, dtype=np.int32)
        at += n
    return tokens, segment_ids, positions


def _shift_right(tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Autoregressive inputs: each token's predecessor within its segment, 0 at segment starts."""
    shifted = np.concatenate([[PAD_ID], tokens[:-1]]).astype(np.int32)
    starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
    shifted[starts] = PAD_ID
    shifted[segment_ids == 0] = PAD_ID
    return shifted


def build_row(examples: Sequence[Trimmed], layout: RecordLayout) -> dict[str, np.ndarray]:
    """The feature arrays of one packed row (seqio feature-converter layout)."""
    if layout.layout == "decoder_only":
        length = layout.inputs_length + layout.targets_length
        tokens, seg, pos = _segments([np.concatenate([e.inputs, e.targets]) for e in examples], length)
        loss = np.zeros(length, np.int32)
        causal = np.zeros(length, np.int32)
        at = 0
        for e in examples:
            n_in, n_out = len(e.inputs), len(e.targets)
            loss[at + n_in:at + n_in + n_out] = 1
            # Prefix-LM: positions whose decoder input is still part of the input (the input
            # tokens plus the first target position, fed the input's EOS) see each other
            # bidirectionally — seqio PrefixLMFeatureConverter's inputs_width + 1.
            causal[at:at + n_in + 1] = 1
            at += n_in + n_out
        return {
            "decoder_target_tokens": tokens,
            "decoder_input_tokens": _shift_right(tokens, seg),
            "decoder_loss_weights": loss,
            "decoder_segment_ids": seg,
            "decoder_positions": pos,
            "decoder_causal_attention": causal,
        }
    enc, enc_seg, enc_pos = _segments([e.inputs for e in examples], layout.inputs_length)
    dec, dec_seg, dec_pos = _segments([e.targets for e in examples], layout.targets_length)
    return {
        "encoder_input_tokens": enc,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_target_tokens": dec,
        "decoder_input_tokens": _shift_right(dec, dec_seg),
        "decoder_loss_weights": (dec_seg > 0).astype(np.int32),
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
    }


def unpack(row: dict[str, np.ndarray], layout: RecordLayout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Recover each segment's (inputs, targets) token ids from a packed row (inverse of build_row)."""
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
