"""Length statistics of each row: characters, words, tokens, turns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curate.models import load_tokenizer, resolve
from curate.schema import conversations, full_texts, response_texts
from curate.scorer import Scorer, register


@register
@dataclass
class TextStats(Scorer):
    """Sizes of the whole row and of the judged response.

    ``chars`` and ``words`` (whitespace-separated) count the row's full text
    (all message contents joined by newlines, ``curate.schema.full_texts``);
    ``tokens`` counts the same text under ``tokenizer`` without a chat template
    or special tokens (null when ``tokenizer`` is None); ``turns`` is the number
    of messages (preference: prompt + chosen; text: 1); ``response_*`` count the
    judged response (``curate.schema.response_texts``).
    """

    name: ClassVar[str] = "text_stats"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = {
        "text_stats_chars": pa.int64(),
        "text_stats_words": pa.int64(),
        "text_stats_tokens": pa.int64(),
        "text_stats_turns": pa.int32(),
        "text_stats_response_chars": pa.int64(),
        "text_stats_response_words": pa.int64(),
    }

    tokenizer: str | None = "smollm2-135m"

    _tok = None  # loaded tokenizer (not a dataclass field, so not part of the config)

    def model_fingerprint(self) -> str:
        return resolve(self.tokenizer).fingerprint if self.tokenizer else ""

    def setup(self) -> None:
        if self.tokenizer and self._tok is None:
            self._tok = load_tokenizer(self.tokenizer)

    def count_tokens(self, texts: list[str]) -> list[int | None]:
        """Token counts of ``texts`` (no special tokens), or None per text without a tokenizer."""
        if not self.tokenizer:
            return [None] * len(texts)
        self.setup()
        ids = self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        full = full_texts(batch)
        responses = response_texts(batch)
        return {
            "text_stats_chars": [len(t) for t in full],
            "text_stats_words": [len(t.split()) for t in full],
            "text_stats_tokens": self.count_tokens(full),
            "text_stats_turns": [len(c) for c in conversations(batch)],
            "text_stats_response_chars": [len(t) for t in responses],
            "text_stats_response_words": [len(t.split()) for t in responses],
        }
