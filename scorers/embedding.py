"""Sentence embeddings of a row's text (shared by semantic dedup, diversity and
target similarity; cached like every score)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.models import load_sentence_model, resolve
from curate.scorer import Resources, Scorer, register
from scorers.minhash import field_texts


@register
@dataclass
class Embedding(Scorer):
    """L2-normalised sentence-transformers embedding (embedded ``minilm`` or a local model)."""

    name: ClassVar[str] = "embedding"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}
    resources: ClassVar[Resources] = Resources(cpus=1.0, memory_gb=1.0)

    model: str = "minilm"
    fields: str = "all"
    max_seq_length: int = 128  # all-MiniLM-L6-v2 was trained on 128-token inputs

    _st = None

    def model_fingerprint(self) -> str:
        return resolve(self.model).fingerprint

    def setup(self) -> None:
        if self._st is None:
            self._st = load_sentence_model(self.model)
            self._st.max_seq_length = self.max_seq_length

    def describe(self) -> dict[str, Any]:
        return {"device": str(self._st.device) if self._st else None,
                "dim": int(self._st.encode(["x"]).shape[-1]) if self._st else None}

    def embed(self, texts: list[str]) -> np.ndarray:
        self.setup()
        return self._st.encode(texts, batch_size=64, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        vecs = self.embed(field_texts(batch, self.fields))
        dim = vecs.shape[1]
        flat = pa.array(vecs.reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, len(vecs) * dim + 1, dim, dtype=np.int32))
        return {"embedding": pa.ListArray.from_arrays(offsets, flat)}
