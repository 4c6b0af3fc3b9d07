"""Embedding similarities: answer-to-prompt relevance, similarity to a target
set, and chosen-vs-rejected similarity of preference pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.models import resolve
from curate.readers import existing_path, list_files, path_fingerprint, read_chunks
from curate.schema import prompt_texts, rejected_texts, response_texts
from curate.scorer import register
from scorers.contamination import _strings
from scorers.embedding import MAX_TOKENS, WINDOW, SentenceScorer
from curate.text import field_texts


@register
@dataclass
class Relevance(SentenceScorer):
    """Cosine similarity of the answer (last assistant turn; a preference row's chosen
    answer) to its prompt (the system, user and tool turns before it), each embedded
    whole up to ``max_tokens`` tokens (low: the answer may belong to another question)."""

    name: ClassVar[str] = "relevance"
    version: ClassVar[str] = "2"  # 2: whole texts in windows (was: first 128 tokens)
    columns: ClassVar[dict[str, pa.DataType]] = {"relevance": pa.float64()}
    kinds: ClassVar[tuple[str, ...]] = ("sft", "preference")

    model: str = "minilm"
    max_tokens: int = MAX_TOKENS
    max_seq_length: int = WINDOW

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        n = batch.num_rows
        v = self.embed(prompt_texts(batch) + response_texts(batch))  # one batched pass
        return {"relevance": (v[:n] * v[n:]).sum(axis=1).astype(float).tolist()}


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
class TargetSimilarity(SentenceScorer):
    """Mean of the top-``k`` cosine similarities of a row (``fields``) to the rows of a
    target set (FAISS inner-product index over the target embeddings); texts embedded
    whole up to ``max_tokens`` tokens."""

    name: ClassVar[str] = "target_similarity"
    version: ClassVar[str] = "2"  # 2: whole texts in windows (was: first 128 tokens)
    columns: ClassVar[dict[str, pa.DataType]] = {"target_similarity": pa.float64()}

    target: str = ""
    k: int = 5
    model: str = "minilm"
    fields: str = "all"
    max_tokens: int = MAX_TOKENS
    max_seq_length: int = WINDOW

    _index = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target:
            raise CurateError("target_similarity needs target=FILE (example rows of the target task)")
        self.target = existing_path(self.target, "target set")
        if self.k < 1:
            raise CurateError(f"k must be >= 1, got {self.k}")

    def model_fingerprint(self) -> str:
        return f"{resolve(self.model).fingerprint};{path_fingerprint(self.target)}"

    def fit(self) -> np.ndarray:
        """The embeddings of the target set (the index the rows are searched against)."""
        vecs = self.embed(read_texts(self.target))
        if not len(vecs):
            raise CurateError(f"target set {self.target} has no rows")
        return vecs

    def use_fit(self, state: np.ndarray) -> None:
        import faiss

        self._index = faiss.IndexFlatIP(state.shape[1])
        self._index.add(np.ascontiguousarray(state, dtype=np.float32))

    def setup(self) -> None:
        super().setup()
        if self._index is None:  # used without a runner: fit here
            self.use_fit(self.fit())

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        self.setup()
        q = self.embed(field_texts(batch, self.fields))
        k = min(self.k, self._index.ntotal)
        sims, _ = self._index.search(q, k)
        return {"target_similarity": sims.mean(axis=1).astype(float).tolist()}


@register
@dataclass
class PairSimilarity(SentenceScorer):
    """Cosine similarity of the chosen and the rejected answer of a preference pair
    (their assistant turns only, not the shared prompt; each embedded whole up to
    ``max_tokens`` tokens). Near 1: the pair teaches little."""

    name: ClassVar[str] = "pair_similarity"
    version: ClassVar[str] = "2"  # 2: whole answers in windows (was: first 128 tokens)
    columns: ClassVar[dict[str, pa.DataType]] = {"pair_cosine": pa.float64(), "pair_identical": pa.bool_()}
    kinds: ClassVar[tuple[str, ...]] = ("preference",)

    model: str = "minilm"
    max_tokens: int = MAX_TOKENS
    max_seq_length: int = WINDOW

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        chosen, rejected = response_texts(batch), rejected_texts(batch)
        v = self.embed(chosen + rejected)  # one batched pass
        c, r = v[:len(chosen)], v[len(chosen):]
        return {"pair_cosine": (c * r).sum(axis=1).astype(float).tolist(),
                "pair_identical": [" ".join(a.split()) == " ".join(b.split())
                                   for a, b in zip(chosen, rejected)]}
