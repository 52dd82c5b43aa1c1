"""Per-use prompt choices by stable hash: the prompt format (zs/fs x opt/noopt), the exemplar count, the option style.

Each choice is a pure, vectorized function of the examples' key hashes (which already derive from
the seed, the dataset and the key) and the use's variant, so it does not depend on which worker
renders the chunk or in which order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flanpipe.hashing import OPTION_HEADER, OPTION_ITEM, PROMPT_FORMAT, SHOTS, mix64, unit_interval
from flanpipe.spec import PROMPT_FORMATS, OptionsFormat

Shares = tuple[tuple[str, float], ...]


def shares_of(formats: dict[str, float] | None) -> Shares | None:
    """A pipeline's ``formats`` in the canonical order (zsopt, fsopt, zsnoopt, fsnoopt), so the YAML's key order
    does not change which use gets which format."""
    if formats is None:
        return None
    return tuple((name, float(formats[name])) for name in PROMPT_FORMATS if name in formats)


def _per_use(key_hash: np.ndarray, variant: int, salt: int) -> np.ndarray:
    return mix64(mix64(np.asarray(key_hash, np.uint64), salt), np.uint64(variant))


def formats_of(key_hash: np.ndarray, variant: int, shares: Shares) -> list[str]:
    """The prompt format of each example's ``variant``-th use: the share whose cumulative interval holds the
    use's uniform draw.

    Example:
      >>> formats_of(np.array([1, 2, 3], np.uint64), 0, (("zsopt", 1.0),))
      ['zsopt', 'zsopt', 'zsopt']
    """
    names = [name for name, _ in shares]
    edges = np.cumsum([share for _, share in shares])
    edges[-1] = np.inf  # shares sum to 1 within epsilon: the last format takes the rounding rest
    picked = np.searchsorted(edges, unit_interval(_per_use(key_hash, variant, PROMPT_FORMAT)), side="right")
    return [names[i] for i in picked.tolist()]


def is_fewshot(prompt_format: str) -> bool:
    return prompt_format.startswith("fs")


def has_options(prompt_format: str) -> bool:
    return not prompt_format.endswith("noopt")


def exemplar_counts_of(key_hash: np.ndarray, variant: int, counts: Sequence[int]) -> list[int]:
    """How many exemplars each example's ``variant``-th use asks for: one of ``counts``, equal shares."""
    if len(counts) == 1:
        return [counts[0]] * len(key_hash)
    picked = _per_use(key_hash, variant, SHOTS) % np.uint64(len(counts))
    return [counts[i] for i in picked.tolist()]


def styles_of(key_hash: np.ndarray, variant: int, fmt: OptionsFormat) -> list[tuple[int, int]]:
    """(header, item style) indices of each example's ``variant``-th use, each uniform over ``fmt``'s list,
    drawn independently (two salts, both different from the format's)."""
    n_headers, n_items = len(fmt.headers), len(fmt.items)
    if n_headers == 1 and n_items == 1:
        return [(0, 0)] * len(key_hash)
    headers = (_per_use(key_hash, variant, OPTION_HEADER) % np.uint64(n_headers)).tolist()
    items = (_per_use(key_hash, variant, OPTION_ITEM) % np.uint64(n_items)).tolist()
    return list(zip(headers, items))
