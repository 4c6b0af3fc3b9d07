"""Content hash of the normalised text, for exact deduplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.hashing import hash_slices, hex_digests
from curate.scorer import Resources, Scorer, register
from curate.text import field_array, normalize_bytes


@register
@dataclass
class ExactHash(Scorer):
    """xxh3 of the text after Unicode (NFKC), case and whitespace normalisation
    (and punctuation removal with ``punctuation=False``); empty texts get null.
    Normalised for a whole batch at once (``curate.text.normalize_bytes``), whose
    Unicode case mapping is Arrow's one character to one (final sigma and dotted
    capital I differ from ``str.lower``)."""

    name: ClassVar[str] = "exact"
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # one thread: one replica per core
    columns: ClassVar[dict[str, pa.DataType]] = {"exact_hash": pa.string(), "exact_chars": pa.int64()}

    fields: str = "all"
    punctuation: bool = True

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        texts = field_array(batch, self.fields)
        raw, offsets = normalize_bytes(texts, punctuation=self.punctuation)
        empty = pa.array(np.diff(offsets) == 0)
        hashes = hex_digests(hash_slices(raw, offsets))
        return {"exact_hash": pc.if_else(empty, pa.scalar(None, pa.string()), hashes),
                "exact_chars": pc.utf8_length(texts).cast(pa.int64())}
