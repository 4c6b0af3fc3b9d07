"""Content hash of the normalised text, for exact deduplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curate.hashing import hash_text
from curate.scorer import Resources, Scorer, register
from curate.text import normalize
from curate.text import field_texts


@register
@dataclass
class ExactHash(Scorer):
    """xxh3 of the text after Unicode (NFKC), case and whitespace normalisation
    (and punctuation removal with ``punctuation=False``); empty texts get null."""

    name: ClassVar[str] = "exact"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # pure Python: one replica per core
    columns: ClassVar[dict[str, pa.DataType]] = {"exact_hash": pa.string(), "exact_chars": pa.int64()}

    fields: str = "all"
    punctuation: bool = True

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        texts = field_texts(batch, self.fields)
        norm = [normalize(t, punctuation=self.punctuation) for t in texts]
        return {"exact_hash": [hash_text(t) if t else None for t in norm],
                "exact_chars": [len(t) for t in texts]}
