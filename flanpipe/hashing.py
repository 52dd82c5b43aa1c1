"""Stable hashing: every random choice is a pure function of (seed, purpose, names...)."""

from __future__ import annotations

import hashlib


def stable_hash(seed: int, purpose: str, *parts: object) -> int:
    """A 64-bit integer from the seed, the purpose and any parts; identical on every machine and run."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}\x1f{purpose}".encode())
    for part in parts:
        h.update(b"\x1f" + str(part).encode())
    return int.from_bytes(h.digest(), "big")
