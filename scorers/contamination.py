"""Decontamination: does a row share a long word n-gram with an evaluation set?

The evaluation files (Parquet, JSON, JSONL or CSV in any column layout: every
string in a row, nested lists included, is eval text) are cut into word ``ngram``-grams of the normalised text (case, Unicode,
punctuation and whitespace ignored); a training row whose text contains any of
them is contaminated. The scorer records the first eval set and n-gram that
matched; rows shorter than ``ngram`` words are never matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.hashing import hash_int
from curate.readers import existing_path, list_files, path_fingerprint, read_chunks
from curate.scorer import Scorer, register
from curate.text import normalize
from curate.text import field_texts


def word_ngrams(text: str, n: int) -> list[str]:
    words = normalize(text, punctuation=False).split()
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def _strings(value: Any) -> list[str]:
    """Every string inside a row value (dicts and lists walked)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@register
@dataclass
class Contamination(Scorer):
    """First eval set and n-gram a row shares with the evaluation files (null: clean)."""

    name: ClassVar[str] = "contamination"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"contamination_eval": pa.string(),
                                                 "contamination_ngram": pa.string()}

    against: list[str] = field(default_factory=list)
    ngram: int = 13
    fields: str = "all"

    _index = None

    def __post_init__(self) -> None:
        if not self.against:
            raise CurateError("decontaminate needs at least one evaluation file (against=...)")
        if self.ngram < 1:
            raise CurateError(f"ngram must be >= 1, got {self.ngram}")
        self.against = [existing_path(p, "evaluation set") for p in self.against]

    def model_fingerprint(self) -> str:
        return ";".join(f"{Path(p).name}:{path_fingerprint(p)}" for p in self.against)

    def fit(self) -> dict[int, str]:
        """The n-gram index of the evaluation sets: n-gram hash -> first set holding it."""
        index: dict[int, str] = {}
        for path in self.against:
            name = Path(path).name
            for file in list_files(path):
                for chunk in read_chunks(file):
                    for row in chunk.rows:
                        for g in word_ngrams("\n".join(_strings(row)), self.ngram):
                            index.setdefault(hash_int(g), name)
        return index

    def use_fit(self, state: dict[int, str]) -> None:
        self._index = state

    def setup(self) -> None:
        if self._index is None:  # used without a runner: fit here
            self.use_fit(self.fit())

    def describe(self) -> dict[str, Any]:
        return {"eval_ngrams": len(self._index or {})}

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        self.setup()
        evals, grams = [], []
        for text in field_texts(batch, self.fields):
            hit = next(((self._index[h], g) for g in word_ngrams(text, self.ngram)
                        if (h := hash_int(g)) in self._index), (None, None))
            evals.append(hit[0])
            grams.append(hit[1])
        return {"contamination_eval": evals, "contamination_ngram": grams}
