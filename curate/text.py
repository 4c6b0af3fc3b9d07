"""Text helpers shared by scorers and decision steps: the texts of a row, normalisation, shingles."""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa

from curate.errors import CurateError
from curate.schema import full_texts, prompt_texts, response_texts

#: Which text of a row a scorer reads: the whole conversation, the prompt or the response.
FIELDS = {"all": full_texts, "prompt": prompt_texts, "response": response_texts}
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str, *, punctuation: bool = True) -> str:
    """NFKC, lower-case, whitespace collapsed; ``punctuation=False`` also drops punctuation."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    if not punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def shingles(text: str, n: int = 5, kind: str = "word") -> list[str]:
    """Shingles of the normalised text: word ``n``-grams (a text of fewer than ``n``
    words is one shingle) or character ``n``-grams (for scripts without spaces).
    Empty text has none. A shingle that occurs twice is listed twice."""
    norm = normalize(text)
    if not norm:
        return []
    if kind == "char":
        if len(norm) <= n:
            return [norm]
        return [norm[i:i + n] for i in range(len(norm) - n + 1)]
    if kind != "word":
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    words = norm.split(" ")
    if len(words) <= n:
        return [norm]
    return list(map(" ".join, zip(*(words[i:] for i in range(n)))))


def field_texts(batch: pa.RecordBatch | pa.Table, fields: str) -> list[str]:
    """One text per row: ``all`` (whole conversation), ``prompt`` or ``response``."""
    if fields not in FIELDS:
        raise CurateError(f"fields must be one of {', '.join(FIELDS)}, got {fields!r}")
    return FIELDS[fields](batch)
