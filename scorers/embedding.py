"""Sentence embeddings of a row's text (shared by semantic dedup, diversity and
target similarity; cached like every score).

Long texts are not cut at the model's window: a text's tokens (up to ``max_tokens``)
are split into windows of ``max_seq_length`` tokens (128 for all-MiniLM-L6-v2, the
length it was trained on), every window of every text in a batch is embedded in one
batched pass, and a text's vector is the mean of its windows' vectors weighted by
their token counts, L2-normalised. A text that fits one window gets exactly the
vector ``SentenceTransformer.encode`` gives it.

The model runs under bfloat16 autocast on GPUs and on CPUs with native bf16
(AVX512-BF16, AMX), float32 elsewhere (``dtype`` None); on such a CPU bf16 is 1.5-1.7x
faster, with a cosine of at least 0.999 to the float32 vector on real rows. The
dtype is part of the cache key. On a CPU only windows of equal length share a pass
(nothing is padded), so a text's vector does not depend on which rows share its
batch, and engines that batch rows differently give equal scores (bf16 with padding
did not: about 3e-4 in relevance). The passes run one per core (``run_lanes``).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.lanes import run_lanes
from curate.models import default_dtype, load_sentence_model, pick_device, resolve
from curate.scorer import Scorer, register
from curate.text import field_texts

WINDOW = 128         # all-MiniLM-L6-v2 was trained on 128-token inputs
MAX_TOKENS = 2048    # tokens of a text that are embedded; the rest is ignored
_CHARS_PER_TOKEN = 100  # WordPiece maps a word over 100 characters to one [UNK]


def check_limits(max_seq_length: int, max_tokens: int) -> None:
    if max_seq_length < 8:
        raise CurateError(f"max_seq_length must be >= 8 tokens, got {max_seq_length}")
    if max_tokens < 1:
        raise CurateError(f"max_tokens must be >= 1, got {max_tokens}")


def _specials(tok: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS], [SEP])."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


DTYPES = ("float32", "bfloat16", "float16")


def embed_texts(st: Any, texts: list[str], max_tokens: int = MAX_TOKENS,
                batch_size: int = 64, dtype: str = "float32") -> np.ndarray:
    """L2-normalised embeddings (float32, len(texts) x dim) of whole texts: each text's
    first ``max_tokens`` tokens in windows of ``st.max_seq_length`` tokens (special
    tokens included), the window vectors averaged by token count; the model runs under
    autocast to ``dtype`` unless it is float32."""
    import torch

    tok = st.tokenizer
    head, tail = _specials(tok)
    step = st.max_seq_length - len(head) - len(tail)
    capped = [t[:max_tokens * _CHARS_PER_TOKEN] for t in texts]
    ids = tok(capped, add_special_tokens=False, truncation=True, max_length=max_tokens,
              return_attention_mask=False, return_token_type_ids=False)["input_ids"] if texts else []
    windows: list[list[int]] = []
    owner: list[int] = []
    weight: list[int] = []
    for i, seq in enumerate(ids):
        for s in range(0, max(len(seq), 1), step):  # an empty text is one empty window
            piece = seq[s:s + step]
            windows.append(head + piece + tail)
            owner.append(i)
            weight.append(max(len(piece), 1))
    on_cpu = st.device.type == "cpu"
    batches = _window_batches([len(w) for w in windows], batch_size, exact=on_cpu)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    types = "token_type_ids" in tok.model_input_names
    outs: dict[int, np.ndarray] = {}

    def run(_: Any, b: int) -> None:
        rows = batches[b]
        width = len(windows[rows[0]])
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, k in enumerate(rows):
            w = windows[k]
            if tok.padding_side == "left":
                input_ids[r, width - len(w):] = torch.tensor(w)
                mask[r, width - len(w):] = 1
            else:
                input_ids[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if types:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        features = {k: v.to(st.device) for k, v in features.items()}
        cast = (torch.autocast(st.device.type, dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
        with torch.inference_mode(), cast:
            out = st(features)["sentence_embedding"].float()
            outs[b] = torch.nn.functional.normalize(out, p=2, dim=1).cpu().numpy()

    run_lanes(range(len(batches)), run, on_cpu=on_cpu)
    if not outs:
        return np.zeros((0, dimension(st)), np.float32)
    vecs = np.zeros((len(windows), outs[0].shape[1]), np.float32)
    for b, rows in enumerate(batches):
        vecs[rows] = outs[b]
    pooled = np.zeros((len(texts), vecs.shape[1]), np.float64)
    np.add.at(pooled, np.asarray(owner, np.int64), vecs * np.asarray(weight, np.float64)[:, None])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _window_batches(lengths: list[int], size: int, exact: bool) -> list[list[int]]:
    """Window indices in batches of at most ``size``, longest first. ``exact``: only
    windows of one length share a batch, so nothing is padded and a window's vector
    does not depend on its batch mates (under bf16 on a CPU it does once padding
    differs); else neighbours in length order, padded to the longest (GPUs)."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    if not exact:
        return [order[b:b + size] for b in range(0, len(order), size)]
    batches: list[list[int]] = []
    for _, group in itertools.groupby(order, key=lambda k: lengths[k]):
        same = list(group)
        batches += [same[b:b + size] for b in range(0, len(same), size)]
    return batches


def dimension(st: Any) -> int:
    """Width of the model's sentence embeddings."""
    get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = get()
    return int(dim) if dim else int(embed_texts(st, ["x"]).shape[1])


def vectors_array(vecs: np.ndarray) -> pa.ListArray:
    dim = vecs.shape[1]
    flat = pa.array(vecs.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, len(vecs) * dim + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


_MODELS: dict[tuple[str, int], Any] = {}  # per process: loaded sentence models, shared


@dataclass
class SentenceScorer(Scorer):
    """Base of the sentence-embedding scorers (embedding, relevance, target and pair
    similarity): L2-normalised embeddings of whole texts (windows of ``max_seq_length``
    tokens, mean-pooled, up to ``max_tokens`` tokens per text). The loaded model is
    shared by every such scorer in the process, so a pipeline that scores relevance
    and embeddings loads MiniLM once."""

    model: str
    max_tokens: int
    max_seq_length: int
    dtype: str | None = None  # None: bfloat16 on GPUs and native-bf16 CPUs, else float32
    _st = None

    def __post_init__(self) -> None:
        check_limits(self.max_seq_length, self.max_tokens)
        if self.dtype not in (None, *DTYPES):
            raise CurateError(f"{self.name}: dtype must be one of {', '.join(DTYPES)}, "
                              f"got {self.dtype!r}")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "dtype": self.effective_dtype()}

    def effective_dtype(self) -> str:
        return self.dtype or default_dtype(pick_device())

    def model_fingerprint(self) -> str:
        return resolve(self.model).fingerprint

    def setup(self) -> None:
        self._load_model()

    def _load_model(self) -> None:
        """The sentence model, shared in the process (``setup`` of a subclass may call
        ``embed``, which needs only this)."""
        if self._st is None:
            key = (self.model, self.max_seq_length)
            if key not in _MODELS:
                st = load_sentence_model(self.model)
                st.max_seq_length = self.max_seq_length
                _MODELS[key] = st
            self._st = _MODELS[key]

    def describe(self) -> dict[str, Any]:
        return {"device": str(self._st.device) if self._st else None,
                "window_tokens": self.max_seq_length, "max_tokens": self.max_tokens,
                "dtype": self.effective_dtype()}

    def embed(self, texts: list[str]) -> np.ndarray:
        self._load_model()
        return embed_texts(self._st, texts, self.max_tokens, dtype=self.effective_dtype())


@register
@dataclass
class Embedding(SentenceScorer):
    """L2-normalised sentence-transformers embedding (embedded ``minilm`` or a local
    model) of the whole text (``fields``: ``all``, ``prompt`` or ``response``): windows
    of ``max_seq_length`` tokens, mean-pooled, up to ``max_tokens`` tokens per text."""

    name: ClassVar[str] = "embedding"
    version: ClassVar[str] = "2"  # 2: whole texts in windows (was: first 128 tokens)
    columns: ClassVar[dict[str, pa.DataType]] = {"embedding": pa.list_(pa.float32())}

    model: str = "minilm"
    fields: str = "all"
    max_seq_length: int = WINDOW  # tokens per window, special tokens included
    max_tokens: int = MAX_TOKENS  # tokens of a text that are embedded

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": dimension(self._st) if self._st else None,
                "fields": self.fields}

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        return {"embedding": vectors_array(self.embed(field_texts(batch, self.fields)))}
