"""Rule-based quality heuristics on the judged response.

The judged response is ``curate.schema.response_texts``: the last assistant turn
(sft), the chosen answer (preference) or the whole document (text). Every
heuristic is a pure function of one string, so it can be tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.schema import response_texts
from curate.scorer import Scorer, register

#: Refusal and AI-boilerplate phrases, matched case-insensitively as substrings
#: of the response after curly apostrophes are straightened and whitespace collapsed.
REFUSAL_PHRASES: tuple[str, ...] = (
    "as an ai language model",
    "as a large language model",
    "as a language model",
    "i'm an ai language model",
    "i am an ai language model",
    "as an ai, i don't have",
    "as an ai, i do not have",
    "as an ai, i cannot",
    "as an ai, i can't",
    "i'm sorry, but i cannot",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i cannot",
    "i'm sorry, i can't",
    "i apologize, but i cannot",
    "i apologize, but i can't",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot comply",
    "i can't comply",
    "i cannot assist with",
    "i can't assist with",
    "i am unable to",
    "i'm unable to",
    "i am not able to provide",
    "i'm not able to provide",
)

_WORD = re.compile(r"\w+")
_WS = re.compile(r"\s+")
_FENCE = re.compile(r"^\s*(```|~~~)")
# "Yours sincerely, Jane Austen" / "Best regards, Albert Einstein" at the very end.
_SIGN_OFF = re.compile(
    r"\b(?:sincerely|regards|yours|love|wishes|cheers|thanks|respectfully|faithfully|cordially|"
    r"admiration|best)\b[^.!?\n]{0,40},\s*[^\s,][^,!?\n]{0,40}$",
    re.IGNORECASE,
)
# A quote attribution such as '... -C.S. Lewis' or '— Mark Twain'.
_ATTRIBUTION = re.compile(r"(?:^|\s)[-–—]{1,2}\s*[A-Z][^\n]{0,40}$")
# A short "Label: value" entry ending a line or a comma-separated list ("Output: Yes").
_LABEL_VALUE = re.compile(r"(?:^|[,;]\s*)[A-Z][\w ]{0,30}:\s*\S[^:,;]{0,30}$")
# An inline enumeration "1. Uno 2. Chess 3. Go" ending the line.
_INLINE_LIST = re.compile(r"(?:^|\s)1[.)]\s.*\s\d{1,2}[.)]\s+[^.!?]{1,60}$")
_SENTENCE_END = ".!?"
# How long (in words) a last line may be and still count as a fragment-style line
# (list entry, poem line, signature, table row) when the line before it also has
# no final punctuation.
_FRAGMENT_LINE_WORDS = 15


def ngram_repetition(text: str, n: int = 3) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier n-gram.

    Words are lower-cased ``\\w+`` runs (Unicode-aware). The value is
    ``1 - unique_ngrams / total_ngrams``: 0.0 when every n-gram is new, close to
    ``1 - 1/k`` for a text repeated ``k`` times, 0.0 for texts with fewer than
    ``n`` words.
    """
    words = _WORD.findall(text.lower())
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    unique = len({tuple(words[i:i + n]) for i in range(total)})
    return 1.0 - unique / total


def line_repetition(text: str) -> float:
    """Share of non-empty lines (whitespace-stripped) that repeat an earlier line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def non_alnum_ratio(text: str) -> float:
    """Share of non-whitespace characters that are not alphanumeric (``str.isalnum``,
    so CJK and other scripts count as alphanumeric); 0.0 for empty text."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(not c.isalnum() for c in chars) / len(chars)


def is_empty(text: str) -> bool:
    """True for an empty or whitespace-only response."""
    return not text.strip()


def is_refusal(text: str) -> bool:
    """True if the response contains one of ``REFUSAL_PHRASES``."""
    norm = _WS.sub(" ", text.replace("\u2019", "'").lower())
    return any(p in norm for p in REFUSAL_PHRASES)


def is_truncated(text: str, min_words: int = 20) -> bool:
    """True if the response looks cut off.

    Either it has an unclosed code fence (an odd number of lines opening with
    ``` or ~~~), or it has at least ``min_words`` words and its last character is
    a letter, digit, comma or colon, unless the ending is a known fragment-style
    form: a final number ("So the answer is 2", "10 / 5 = 2"), hashtag or URL, a
    sign-off ("Yours sincerely, Ada"), a quote attribution ("- Mark Twain"), a
    "Label: value" entry ("Output: Yes"), an inline enumeration ("1. Uno 2. Go"),
    or a short last line (list entry, poem line, signature, table row) after a
    line that has no final sentence punctuation either. Answers ending in ``)``,
    quotes or other punctuation are never flagged by their ending.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if sum(1 for line in lines if _FENCE.match(line)) % 2:
        return True
    stripped = text.rstrip()
    if not stripped or len(stripped.split()) < min_words:
        return False
    if not (stripped[-1].isalnum() or stripped[-1] in ",:"):
        return False
    last = lines[-1].strip()
    last_word = last.split()[-1]
    if last_word[0].isdigit() or last_word[0] == "#" or "://" in last_word:  # number, hashtag, URL
        return False
    if any(p.search(last) for p in (_SIGN_OFF, _ATTRIBUTION, _LABEL_VALUE, _INLINE_LIST)):
        return False
    if len(lines) >= 2 and len(last.split()) <= _FRAGMENT_LINE_WORDS:
        if lines[-2].rstrip()[-1] not in _SENTENCE_END:
            return False
    return True


@register
@dataclass
class Quality(Scorer):
    """Cheap rule-based flags and ratios on the judged response.

    Config: ``ngram`` (n of the word n-grams for ``ngram_repetition``) and
    ``min_truncation_words`` (shorter answers are never flagged as truncated
    by their ending).
    """

    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "1"
    parallel: ClassVar[bool] = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "quality_ngram_repetition": pa.float64(),
        "quality_line_repetition": pa.float64(),
        "quality_non_alnum_ratio": pa.float64(),
        "quality_empty_response": pa.bool_(),
        "quality_truncated": pa.bool_(),
        "quality_refusal": pa.bool_(),
    }

    ngram: int = 3
    min_truncation_words: int = 20

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise CurateError(f"scorer 'quality': ngram must be >= 1, got {self.ngram}")
        if self.min_truncation_words < 0:
            raise CurateError("scorer 'quality': min_truncation_words must be >= 0, "
                              f"got {self.min_truncation_words}")

    def score(self, batch: pa.RecordBatch) -> dict[str, list]:
        texts = response_texts(batch)
        return {
            "quality_ngram_repetition": [ngram_repetition(t, self.ngram) for t in texts],
            "quality_line_repetition": [line_repetition(t) for t in texts],
            "quality_non_alnum_ratio": [non_alnum_ratio(t) for t in texts],
            "quality_empty_response": [is_empty(t) for t in texts],
            "quality_truncated": [is_truncated(t, self.min_truncation_words) for t in texts],
            "quality_refusal": [is_refusal(t) for t in texts],
        }
