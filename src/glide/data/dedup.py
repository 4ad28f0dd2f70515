"""Duplicate detection: exact (hash of decoded pixels) and near (perceptual hash + verification).

Near-duplicates are found with a 64-bit DCT perceptual hash and multi-index hashing: split the hash
into ``radius + 1`` bands; two hashes within Hamming distance ``radius`` agree exactly on at least
one band (pigeonhole), so band lookups find every candidate without a full scan. A perceptual hash
is blind to colour (a red and a blue circle in the same place hash alike), so each candidate is
confirmed on a small colour thumbnail before a record is called a duplicate.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_BITS = 64
THUMB_SIZE = 16


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` with ``D @ x`` the transform of a length-``n`` signal."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def pixel_digest(img: Image.Image) -> bytes:
    """Exact-duplicate key: a digest of the RGB pixels and size (independent of file encoding)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.width}x{img.height}".encode())
    h.update(img.tobytes())
    return h.digest()


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: sign of the 8x8 low-frequency DCT block relative to its median."""
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    d = _dct_matrix(32)
    low = (d @ gray @ d.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term is excluded from the threshold, as is usual
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(img: Image.Image) -> np.ndarray:
    """Small colour thumbnail ``[16, 16, 3]`` uint8 used to confirm near-duplicate candidates."""
    return np.asarray(img.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX), np.uint8)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearDupIndex:
    """Incremental index of kept images; ``query`` finds an earlier near-duplicate, if any.

    A candidate is a duplicate when its hash is within ``radius`` bits *and* the mean absolute
    difference of the colour thumbnails is at most ``max_thumb_diff`` (0-255 scale).
    """

    def __init__(self, radius: int = 6, max_thumb_diff: float = 4.0) -> None:
        if not 0 <= radius < HASH_BITS:
            raise ValueError(f"near-duplicate radius must be in [0, {HASH_BITS}), got {radius}")
        self.radius = radius
        self.max_thumb_diff = max_thumb_diff
        n_bands = radius + 1
        edges = np.linspace(0, HASH_BITS, n_bands + 1).astype(int)
        self._bands = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges)]
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._hashes: list[int] = []
        self._thumbs: list[np.ndarray] = []
        self._keys: list[str] = []

    def __len__(self) -> int:
        return len(self._keys)

    def _band_values(self, h: int) -> list[int]:
        return [(h >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

    def query(self, h: int, thumb: np.ndarray) -> str | None:
        """Key of the first indexed image that ``(h, thumb)`` duplicates, else ``None``."""
        seen: set[int] = set()
        for table, value in zip(self._tables, self._band_values(h), strict=True):
            for idx in table.get(value, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                if hamming(h, self._hashes[idx]) > self.radius:
                    continue
                diff = np.abs(self._thumbs[idx].astype(np.int16) - thumb.astype(np.int16)).mean()
                if diff <= self.max_thumb_diff:
                    return self._keys[idx]
        return None

    def add(self, key: str, h: int, thumb: np.ndarray) -> None:
        idx = len(self._keys)
        self._keys.append(key)
        self._hashes.append(h)
        self._thumbs.append(thumb)
        for table, value in zip(self._tables, self._band_values(h), strict=True):
            table[value].append(idx)
