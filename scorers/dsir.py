"""DSIR importance weights (Xie et al., 2023): how much more likely a row is under
the target distribution than under the raw pool, with hashed n-gram features.

Features are unigrams and bigrams of the normalised words, hashed into
``buckets``; each distribution is a smoothed bag of those features estimated
from the target file and from the raw pool (by default the pipeline's own
input). ``dsir_weight`` = log p_target(row) - log p_raw(row) (a sum over the row's
features, as in the paper, so long rows weigh more either way) and
``dsir_weight_mean`` = the same per feature (length-normalised, better for
ranking); the ``importance`` selection strategy resamples by either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.hashing import hash_int
from curate.readers import existing_path, path_fingerprint
from curate.scorer import Scorer, register
from curate.text import normalize
from curate.text import field_texts
from scorers.similarity import read_texts


def features(text: str, buckets: int) -> np.ndarray:
    """Bucket ids of the row's hashed unigrams and bigrams."""
    words = normalize(text, punctuation=False).split()
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return np.fromiter((hash_int(g) % buckets for g in grams), dtype=np.int64, count=len(grams))


def feature_counts(texts: list[str], buckets: int) -> np.ndarray:
    counts = np.zeros(buckets, dtype=np.float64)
    for t in texts:
        np.add.at(counts, features(t, buckets), 1.0)
    return counts


def log_ratio(target: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """log p_target - log p_raw per feature bucket. The raw bag is add-one smoothed;
    the (usually small) target bag is smoothed toward the raw one with a prior of
    ``len(raw)`` pseudo-counts, so a feature never seen in the target costs a
    constant instead of a huge penalty."""
    p_raw = (raw + 1) / (raw + 1).sum()
    prior = len(raw)
    p_target = (target + prior * p_raw) / (target.sum() + prior)
    return np.log(p_target) - np.log(p_raw)


@register
@dataclass
class DSIR(Scorer):
    """log p_target - log p_raw of the row's hashed unigram+bigram features."""

    name: ClassVar[str] = "dsir"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"dsir_weight": pa.float64(),
                                                 "dsir_weight_mean": pa.float64()}

    target: str = ""
    raw: str | None = None  # None: the pipeline's input
    buckets: int = 10_000
    fields: str = "all"

    _ratio = None

    def __post_init__(self) -> None:
        if not self.target:
            raise CurateError("dsir needs target=FILE (example rows of the target distribution)")
        self.target = existing_path(self.target, "dsir target set")
        if self.raw is not None:
            self.raw = existing_path(self.raw, "dsir raw set")

    def bind_input(self, path: str) -> None:
        if self.raw is None:
            self.raw = str(Path(path).resolve())

    def model_fingerprint(self) -> str:
        parts = [self.target] + ([self.raw] if self.raw else [])
        return ";".join(path_fingerprint(p) for p in parts)

    def fit(self) -> np.ndarray:
        """The log ratio per hashed feature, from the whole target and raw sets."""
        if self.raw is None:
            raise CurateError("dsir: no raw pool (raw=FILE) and no pipeline input to use")
        return log_ratio(feature_counts(read_texts(self.target), self.buckets),
                         feature_counts(read_texts(self.raw), self.buckets))

    def use_fit(self, state: np.ndarray) -> None:
        self._ratio = state

    def setup(self) -> None:
        if self._ratio is None:  # used without a runner: fit here
            self.use_fit(self.fit())

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        self.setup()
        sums, means = [], []
        for t in field_texts(batch, self.fields):
            w = self._ratio[features(t, self.buckets)]
            sums.append(float(w.sum()))
            means.append(float(w.mean()) if len(w) else None)
        return {"dsir_weight": sums, "dsir_weight_mean": means}
