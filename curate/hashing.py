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


def hash_ints(texts: pa.Array) -> np.ndarray:
    """``hash_int`` of every text of a string array without nulls (uint64), hashed in
    place in Arrow's buffer: no Python string per row."""
    raw, offsets = utf8_bytes(texts)
    view, bounds, digest = memoryview(raw), offsets.tolist(), xxhash.xxh3_64_intdigest
    return np.fromiter((digest(view[a:b]) for a, b in zip(bounds, bounds[1:])),
                       dtype=np.uint64, count=len(texts))


def hash_json(obj: Any) -> str:
    """Hash of a JSON-able object (keys sorted, so dict order does not matter)."""
    return hash_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))
