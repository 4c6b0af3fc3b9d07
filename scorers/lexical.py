"""Lexical diversity of the judged answer: MTLD (McCarthy & Jarvis, 2010)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curate.schema import response_texts
from curate.scorer import Resources, Scorer, register

_WORD = re.compile(r"\w+", re.UNICODE)


def _factors(words: list[str], ttr_threshold: float) -> float:
    factors, types, count = 0.0, set(), 0
    for w in words:
        count += 1
        types.add(w)
        if len(types) / count <= ttr_threshold:
            factors += 1
            types, count = set(), 0
    if count:  # partial factor for the remainder
        ttr = len(types) / count
        factors += (1 - ttr) / (1 - ttr_threshold) if ttr < 1 else 0.0
    return len(words) / factors if factors else float(len(words))


def mtld(text: str, ttr_threshold: float = 0.72) -> float | None:
    """Mean length of word runs keeping type-token ratio above the threshold
    (forward and backward passes averaged); None for an answer with no words."""
    words = [w.lower() for w in _WORD.findall(text or "")]
    if not words:
        return None
    return (_factors(words, ttr_threshold) + _factors(words[::-1], ttr_threshold)) / 2


@register
@dataclass
class Lexical(Scorer):
    """MTLD lexical diversity of the answer (higher: more varied vocabulary)."""

    name: ClassVar[str] = "lexical"
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # pure Python: one replica per core
    columns: ClassVar[dict[str, pa.DataType]] = {"lexical_mtld": pa.float64()}

    ttr_threshold: float = 0.72

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        return {"lexical_mtld": [mtld(t, self.ttr_threshold) for t in response_texts(batch)]}
