"""Near-duplicate detection and diversity figures for prompts, in constant memory.

Dedup is MinHash + LSH banding, but the band buckets are a fixed-size Bloom filter instead of
a dict of lists: memory is set by ``capacity`` (not by how many prompts stream through), and a
prompt counts as a near duplicate of an earlier one when any of its bands was seen before
(estimated Jaccard above the threshold, with the usual LSH S-curve and a small Bloom
false-positive rate). The filter holds only accepted prompts, so replaying the accepted log in
order rebuilds exactly the state an uninterrupted run had at that point.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from collections.abc import Iterable

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
_MASK64 = (1 << 64) - 1


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def shingles(text: str, n: int = 3) -> set[str]:
    words = tokens(text)
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) whose LSH S-curve midpoint (1/b)^(1/r) is closest to ``threshold``."""
    best = min(
        ((num_perm // r, r) for r in range(1, num_perm + 1)),
        key=lambda br: abs((1.0 / br[0]) ** (1.0 / br[1]) - threshold),
    )
    return best


class MinHasher:
    """MinHash signatures with multiply-add-shift hashing (vectorised, deterministic per seed)."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        rng = np.random.Generator(np.random.PCG64(seed))
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, items: set[str]) -> np.ndarray:
        if not items:
            return np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        hv = np.fromiter(
            (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in items),
            dtype=np.uint64,
            count=len(items),
        )
        with np.errstate(over="ignore"):
            h = (self.a[:, None] * hv[None, :] + self.b[:, None]) >> np.uint64(32)
        return h.min(axis=1)


class BloomFilter:
    """A plain Bloom filter over 64-bit keys (double hashing), fixed size."""

    def __init__(self, capacity: int, fp_rate: float = 1e-4) -> None:
        capacity = max(capacity, 1)
        self.m = max(64, int(-capacity * math.log(fp_rate) / math.log(2) ** 2))
        self.k = max(1, round(self.m / capacity * math.log(2)))
        self.bits = np.zeros((self.m + 7) // 8, dtype=np.uint8)

    def _positions(self, key: bytes) -> list[int]:
        d = hashlib.blake2b(key, digest_size=16).digest()
        h1, h2 = int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1
        return [((h1 + i * h2) & _MASK64) % self.m for i in range(self.k)]

    def __contains__(self, key: bytes) -> bool:
        return all(self.bits[p >> 3] & (1 << (p & 7)) for p in self._positions(key))

    def add(self, key: bytes) -> None:
        for p in self._positions(key):
            self.bits[p >> 3] |= 1 << (p & 7)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


class NearDuplicateFilter:
    """Streaming near-duplicate test: ``seen_or_add(text)`` is True when ``text`` is a near duplicate."""

    def __init__(self, threshold: float = 0.7, capacity: int = 200_000, num_perm: int = 128, seed: int = 1) -> None:
        self.hasher = MinHasher(num_perm, seed)
        self.bands, self.rows = choose_bands(threshold, num_perm)
        self.bloom = BloomFilter(capacity * self.bands)

    def _band_keys(self, text: str) -> list[bytes]:
        sig = self.hasher.signature(shingles(text))
        return [
            i.to_bytes(2, "little") + sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)
        ]

    def is_duplicate(self, text: str) -> bool:
        return any(key in self.bloom for key in self._band_keys(text))

    def add(self, text: str) -> None:
        for key in self._band_keys(text):
            self.bloom.add(key)

    def check_and_add(self, text: str) -> bool:
        """True (and nothing added) for a near duplicate; else remember ``text`` and return False."""
        keys = self._band_keys(text)
        if any(key in self.bloom for key in keys):
            return True
        for key in keys:
            self.bloom.add(key)
        return False


class Reservoir:
    """A seeded uniform sample of fixed size from a stream."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.items: list[str] = []
        self.seen = 0

    def add(self, item: str) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


def diversity_report(texts: Iterable[str], max_pairs: int = 50_000, seed: int = 0) -> dict[str, float]:
    """distinct-1/2 (unique n-grams / all n-grams) and mean pairwise Jaccard of 3-shingles on ``texts``."""
    texts = list(texts)
    uni: list[str] = []
    bi: list[tuple[str, str]] = []
    for t in texts:
        words = tokens(t)
        uni.extend(words)
        bi.extend(zip(words, words[1:], strict=False))
    sets = [shingles(t) for t in texts]
    pairs = list(itertools.combinations(range(len(sets)), 2))
    if len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    mean_j = sum(jaccard(sets[i], sets[j]) for i, j in pairs) / len(pairs) if pairs else 0.0
    return {
        "sample": float(len(texts)),
        "distinct_1": len(set(uni)) / len(uni) if uni else 0.0,
        "distinct_2": len(set(bi)) / len(bi) if bi else 0.0,
        "mean_pairwise_jaccard": mean_j,
    }
