"""Rule-based quality heuristics on the judged response.

The judged response is ``curate.schema.response_texts``: the last assistant turn
(sft), the chosen answer (preference) or the whole document (text). Every
heuristic is a pure function of one string, so it can be tested on its own.

Refusals are recognised in English, Chinese and Japanese, and by their most
common phrasings in Spanish, French, German and Russian. Truncation has two
rule sets: the word-based one for text with spaces, and one for Chinese and
Japanese text (mostly Han or kana characters), which has no words to count.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.schema import response_texts
from curate.scorer import Resources, Scorer, register

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
    # Spanish, French, German, Russian: the usual openings of a refusal or AI disclaimer
    "como modelo de lenguaje",
    "como un modelo de lenguaje",
    "como una ia, no",
    "como inteligencia artificial, no",
    "lo siento, pero no puedo",
    "lo siento, no puedo",
    "en tant que modèle de langage",
    "en tant qu'ia",
    "en tant qu'intelligence artificielle",
    "je suis désolé, mais je ne peux pas",
    "je suis désolée, mais je ne peux pas",
    "désolé, mais je ne peux pas",
    "als ki-sprachmodell",
    "als sprachmodell",
    "als ki bin ich",
    "es tut mir leid, aber ich kann",
    "как языковая модель",
    "как модель ии",
    "как ии, я",
    "как искусственный интеллект, я",
    "извините, но я не могу",
    "к сожалению, я не могу",
)

#: Chinese and Japanese refusals and AI boilerplate, searched in the response after
#: NFKC (full-width ，！？： become ,!?:), lower-casing and removing spaces (not newlines).
CJK_REFUSAL_PATTERNS: tuple[str, ...] = (
    # "作为一个AI语言模型" / "我是一个语言模型" / "我只是一个大型语言模型"
    r"(?:作为|我是|我只是)(?:一个|一名|一款)?(?:开源的?|大型的?)?(?:ai|人工智能)?语言模型",
    # "作为一个人工智能，我没有感情" / "作为开源的人工智能助理，我不能..."
    r"作为(?:一个|一名)?(?:开源的?)?(?:ai|人工智能)(?:助手|助理)?,?我(?:没有|不能|无法|不会|并不|不具备)",
    # "我只是一个开源人工智能助理"
    r"我只是(?:一个|一款)(?:开源的?)?(?:ai|人工智能)",
    # "抱歉，我不能..." / "很抱歉，作为..., 我暂时无法..." / "抱歉，我没有联网查询...的能力"
    r"(?:抱歉|对不起|很遗憾)[^。!?\n]{0,20}?(?:无法|不能|不可以|没办法|没有办法|做不到|不具备"
    r"|没有[^。!?\n]{0,15}?能力)",
    # an answer that opens with "I cannot": "我无法回答这个问题"
    r"^(?:我|本助手)(?:无法|不能)",
    # "我不能提供人肉方法" / "我无法协助您..."
    r"我(?:无法|不能|不可以)(?:为你|为您|向你|向您)?(?:提供|协助|帮助|帮你|帮您)",
    # Japanese: "AI言語モデルとして" / "申し訳ありませんが、...できません"
    r"(?:ai|人工知能)?言語モデルとして",
    r"申し訳(?:ありません|ございません)[がでし、,。]*[^。!?\n]{0,30}?(?:できません|できかねます|いたしかねます)",
    r"(?:お答え|お手伝い|ご協力)(?:でき|いたしかね)ません",
)
_CJK_REFUSAL = re.compile("|".join(CJK_REFUSAL_PATTERNS))
_SPACES = re.compile(r"[^\S\n]+")
# Han ideographs and Japanese kana: the scripts written without spaces
_CJK_CHAR = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                       "\U00020000-\U0002fa1f]")
_ALNUM = re.compile(r"[^\W_]")

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
# Chinese / Japanese endings. A line "ends a sentence" with one of these (full-width and
# NFKC forms, closing quotes and brackets, ellipsis, tilde); a text ending in a CJK
# comma, colon or enumeration comma was cut inside a sentence.
_CJK_FINAL = set("。！？!?.．…~～」』”’）)】》〉\"'")
_CJK_CONTINUING = set("，、；：,;:")
_CJK_OPEN = {"“": "”", "「": "」", "『": "』", "《": "》", "（": "）", "(": ")", "【": "】"}
# Endings a Chinese sentence cannot stop on: a possessive pronoun before its noun
# ("...追到她的"), a conjunction or preposition before its clause; Japanese を / へ.
_CJK_DANGLING = re.compile(
    r"(?:[我你您他她它](?:们)?的|因为|所以|如果|虽然|但是|而且|以及|并且|或者|通过|由于|为了|关于|"
    r"根据|例如|比如|包括|以便|以免|然后|[をへ])$")
# A list item: "1. ", "2)", "- ", "* ", "• ", "（三）", "一、".
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)、．]|[-*•·]|[（(][一二三四五六七八九十\d]{1,3}[)）]|[一二三四五六七八九十]{1,3}、)")
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
    """True if the response contains one of ``REFUSAL_PHRASES`` (English and other
    languages written with spaces) or matches one of ``CJK_REFUSAL_PATTERNS`` (Chinese
    and Japanese)."""
    norm = _WS.sub(" ", text.replace("\u2019", "'").lower())
    if any(p in norm for p in REFUSAL_PHRASES):
        return True
    if not _CJK_CHAR.search(text):
        return False
    compact = _SPACES.sub("", unicodedata.normalize("NFKC", text).lower()).strip()
    return _CJK_REFUSAL.search(compact) is not None


def _is_cjk(c: str) -> bool:
    """A Han ideograph or Japanese kana (scripts written without spaces)."""
    return _CJK_CHAR.match(c) is not None


def cjk_share(text: str) -> float:
    """Share of the letters and digits of ``text`` that are Han or kana characters."""
    if not _CJK_CHAR.search(text):
        return 0.0
    return len(_CJK_CHAR.findall(text)) / max(1, len(_ALNUM.findall(text)))


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

    Chinese and Japanese text (at least half of its letters Han or kana) has no
    words to count and often omits the final 。 in casual answers, so it is judged
    by stricter signs of a cut, once it has 1.5 x ``min_words`` Han/kana
    characters: it ends on a comma, enumeration comma, semicolon or colon
    (，、；：); or it ends on a Han/kana character and its last line leaves a quote
    or bracket open (“ 《 「 （), stops on a word that needs a continuation (a
    possessive "她的", a conjunction or preposition such as 因为 / 以及 / 通过,
    Japanese を / へ), or is a list item, shorter than its siblings, in a list
    whose items end with final punctuation.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if sum(1 for line in lines if _FENCE.match(line)) % 2:
        return True
    if cjk_share(text) >= 0.5:
        return _cjk_truncated(lines, min_words)
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


def _cjk_truncated(lines: list[str], min_words: int) -> bool:
    """The truncation rules for Chinese and Japanese text (see ``is_truncated``)."""
    if sum(len(_CJK_CHAR.findall(line)) for line in lines) < 1.5 * min_words:
        return False  # about ``min_words`` words: 1.5 characters per Chinese word
    last = lines[-1].strip()
    end = last[-1]
    if end in _CJK_CONTINUING:
        return True  # cut after a comma or a colon
    if not _is_cjk(end):
        return False  # final punctuation, a number, a Latin word, an emoji...
    for open_, close in _CJK_OPEN.items():  # a quote or bracket opened and never closed
        i = last.rfind(open_)
        if i >= 0 and close not in last[i + 1:]:
            return True
    if _CJK_DANGLING.search(last):
        return True
    # a list whose items end with final punctuation, and a last item that stops short
    # of them without it ("- 举例说明这些性格特点在日常" after "- ...细心等。")
    marker = _list_marker(last)
    if len(lines) >= 3 and marker:
        items = [line.strip() for line in lines[:-1] if _list_marker(line) == marker]
        if len(items) >= 2 and all(item[-1] in _CJK_FINAL for item in items[-3:]):
            return len(last) < sorted(map(len, items))[len(items) // 2]
    return False


def _list_marker(line: str) -> str | None:
    """The kind of list item ``line`` is ("1" numbered, "-", "*", "(" for （三）, "一" for
    一、), or None when it is not one."""
    m = _LIST_ITEM.match(line)
    if not m:
        return None
    c = m.group(0).strip()[0]
    return "1" if c.isdigit() else "(" if c in "（(" else "一" if c in "一二三四五六七八九十" else c


@register
@dataclass
class Quality(Scorer):
    """Cheap rule-based flags and ratios on the judged response.

    Config: ``ngram`` (n of the word n-grams for ``ngram_repetition``) and
    ``min_truncation_words`` (shorter answers are never flagged as truncated
    by their ending).
    """

    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # pure Python: one replica per core
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
