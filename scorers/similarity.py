"""Embedding similarities: answer-to-prompt relevance, similarity to a target
set, and chosen-vs-rejected similarity of preference pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.models import load_sentence_model, resolve
from curate.readers import existing_path, list_files, path_fingerprint, read_chunks
from curate.schema import prompt_texts, rejected_texts, response_texts
from curate.scorer import Scorer, register
from scorers.contamination import _strings
from scorers.minhash import field_texts


class _Embeds(Scorer):
    """Shared: a sentence model loaded once, L2-normalised embeddings."""

    model: str
    _st = None

    def model_fingerprint(self) -> str:
        return resolve(self.model).fingerprint

    def setup(self) -> None:
        self._load_model()

    def _load_model(self) -> None:
        if self._st is None:
            self._st = load_sentence_model(self.model)
            self._st.max_seq_length = 128  # all-MiniLM-L6-v2 was trained on 128-token inputs

    def embed(self, texts: list[str]) -> np.ndarray:
        self._load_model()
        return self._st.encode(texts, batch_size=64, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


@register
@dataclass
class Relevance(_Embeds):
    """Cosine similarity of the answer to its prompt (low: the answer may belong to
    another question). Text rows get null."""

    name: ClassVar[str] = "relevance"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"relevance": pa.float64()}
    kinds: ClassVar[tuple[str, ...]] = ("sft", "preference")

    model: str = "minilm"

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        p = self.embed(prompt_texts(batch))
        r = self.embed(response_texts(batch))
        return {"relevance": (p * r).sum(axis=1).astype(float).tolist()}


def read_texts(path: str) -> list[str]:
    """All rows of a file or folder as text (canonical layouts, else every string field)."""
    from curate.ingest import ingest
    from curate.errors import InputError
    from curate.schema import full_texts

    try:
        return [t for table, _, _ in ingest(path) if table is not None for t in full_texts(table)]
    except InputError:
        return ["\n".join(_strings(row)) for f in list_files(path) for c in read_chunks(f)
                for row in c.rows]


@register
@dataclass
class TargetSimilarity(_Embeds):
    """Mean of the top-``k`` cosine similarities of a row to the rows of a target set
    (FAISS inner-product index over the target embeddings)."""

    name: ClassVar[str] = "target_similarity"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"target_similarity": pa.float64()}

    target: str = ""
    k: int = 5
    model: str = "minilm"
    fields: str = "all"

    _index = None

    def __post_init__(self) -> None:
        if not self.target:
            raise CurateError("target_similarity needs target=FILE (example rows of the target task)")
        self.target = existing_path(self.target, "target set")
        if self.k < 1:
            raise CurateError(f"k must be >= 1, got {self.k}")

    def model_fingerprint(self) -> str:
        return f"{resolve(self.model).fingerprint};{path_fingerprint(self.target)}"

    def setup(self) -> None:
        import faiss

        super().setup()
        if self._index is None:
            vecs = self.embed(read_texts(self.target))
            if not len(vecs):
                raise CurateError(f"target set {self.target} has no rows")
            self._index = faiss.IndexFlatIP(vecs.shape[1])
            self._index.add(vecs)

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        self.setup()
        q = self.embed(field_texts(batch, self.fields))
        k = min(self.k, self._index.ntotal)
        sims, _ = self._index.search(q, k)
        return {"target_similarity": sims.mean(axis=1).astype(float).tolist()}


@register
@dataclass
class PairSimilarity(_Embeds):
    """Cosine similarity of the chosen and rejected answers of a preference pair
    (near 1: the pair teaches little)."""

    name: ClassVar[str] = "pair_similarity"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"pair_cosine": pa.float64(), "pair_identical": pa.bool_()}
    kinds: ClassVar[tuple[str, ...]] = ("preference",)

    model: str = "minilm"

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        chosen, rejected = response_texts(batch), rejected_texts(batch)
        c, r = self.embed(chosen), self.embed(rejected)
        return {"pair_cosine": (c * r).sum(axis=1).astype(float).tolist(),
                "pair_identical": [" ".join(a.split()) == " ".join(b.split())
                                   for a, b in zip(chosen, rejected)]}
