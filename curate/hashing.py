"""Stable 64-bit content hashes (xxh3), the same on every machine and run."""

from __future__ import annotations

import json
from typing import Any

import xxhash


def hash_text(text: str) -> str:
    """16 hex digits of xxh3-64 of the UTF-8 text."""
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8"))


def hash_int(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def hash_json(obj: Any) -> str:
    """Hash of a JSON-able object (keys sorted, so dict order does not matter)."""
    return hash_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))
