"""Stable hashing: every random choice is a pure function of (seed, purpose, names...), per example or per array."""

from __future__ import annotations

import hashlib

import numpy as np

# Purposes derived from an example's key hash with mix64 (one blake2b per example, the rest vectorized).
CAP, MIX_ORDER, TEMPLATE, SHUFFLE, FEWSHOT = 1, 2, 3, 4, 5
# Far above FEWSHOT + j (one salt per exemplar draw j), so no choice below shares a salt with an exemplar draw.
PROMPT_FORMAT, SHOTS, OPTION_HEADER, OPTION_ITEM = (1 << 40) + 1, (1 << 40) + 2, (1 << 40) + 3, (1 << 40) + 4


def stable_hash(seed: int, purpose: str, *parts: object) -> int:
    """A 64-bit integer from the seed, the purpose and any parts; identical on every machine and run."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}\x1f{purpose}".encode())
    for part in parts:
        h.update(b"\x1f" + str(part).encode())
    return int.from_bytes(h.digest(), "big")


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def mix64(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """A stable 64-bit hash of two uint64 values or arrays (the splitmix64 finalizer), the same on every machine."""
    with np.errstate(over="ignore"):
        z = np.asarray(a, np.uint64) + (np.asarray(b, np.uint64) + np.uint64(1)) * _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from 64-bit hashes (their top 53 bits)."""
    return (np.asarray(h, np.uint64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
