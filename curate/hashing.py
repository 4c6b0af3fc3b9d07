"""Stable 64-bit content hashes (xxh3), the same on every machine and run."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from curate.text import utf8_bytes


def hash_text(text: str) -> str:
    """16 hex digits of xxh3-64 of the UTF-8 text."""
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8"))


def hash_int(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def hash_slices(raw: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """xxh3-64 (uint64) of each slice ``raw[offsets[i]:offsets[i + 1]]`` of a byte array,
    hashed in place: no Python bytes or string per slice."""
    view, bounds, digest = memoryview(raw), offsets.tolist(), xxhash.xxh3_64_intdigest
    return np.fromiter((digest(view[a:b]) for a, b in zip(bounds, bounds[1:])),
                       dtype=np.uint64, count=len(bounds) - 1)


def hash_ints(texts: pa.Array) -> np.ndarray:
    """``hash_int`` of every text of a string array without nulls (uint64), hashed in
    Arrow's buffer."""
    return hash_slices(*utf8_bytes(texts))


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_digests(hashes: np.ndarray) -> pa.Array:
    """``f"{h:016x}"`` (what ``hash_text`` writes) of every uint64 hash, as a string
    array built by numpy (no Python per row)."""
    big = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.stack([_HEX[big >> 4], _HEX[big & 15]], axis=-1).reshape(-1)
    offsets = np.arange(0, 16 * len(hashes) + 1, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(hashes), pa.py_buffer(offsets), pa.py_buffer(digits))


def hash_json(obj: Any) -> str:
    """Hash of a JSON-able object (keys sorted, so dict order does not matter)."""
    return hash_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))
