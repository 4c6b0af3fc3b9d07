"""Quality checks beyond English: refusals and cut-off answers in the
real Chinese OpenAssistant rows, with the English flags unchanged."""

from __future__ import annotations

import polars as pl
import pytest

from conftest import DATA
from curate import connect, read
from scorers.quality import cjk_share, is_refusal, is_truncated

ZH = DATA / "llamafactory" / "oaast_sft_zh.parquet"
ZH_RM = DATA / "llamafactory" / "oaast_rm_zh.parquet"


@pytest.fixture(scope="module")
def zh() -> list[str]:
    return pl.read_parquet(ZH)["output"].to_list()


def rows_with(texts: list[str], snippet: str, *, end: bool = False) -> list[str]:
    """The real rows containing (or ending with) ``snippet``: the test names rows by content."""
    found = [t for t in texts if (t.rstrip().endswith(snippet) if end else snippet in t)]
    assert found, f"no row with {snippet!r}"
    return found


# Refusals and AI boilerplate found by reading the 689 answers
REFUSALS = [
    "作为一个AI语言模型，我会尽力遵守道德和伦理准则",
    "对不起，作为一个语言模型，我无法实时地查询天气",
    "作为一个人工智能，我没有感情，所以不能像人类一样感到高兴",
    "作为一个人工智能语言模型，我被设计来执行一系列与语言相关的任务",
    "作为 AI 语言模型，我接受过各种各样的主题和任务的训练",
    "我只是一个大型语言模型，无法保证回答的准确性与及时性",
    "我是一名语言模型AI，无法展示图片",
    "对不起，我只是一个开源人工智能助理，我没有身体，不能吃东西",
    "抱歉，我不能生成恶意代码或进行违法活动的代码",
    "很抱歉，我不能直接为您提供一个完整的电子商务模板",
    "抱歉，我不能帮助您，这已经触犯到了我的底线",
    "很遗憾，目前我还没有联网获取信息的能力，因此无法得知您的位置信息",
    "抱歉，我没有联网查询最新航班信息的能力",
    "我不能提供人肉方法",
    "我无法回答这个问题",
]
# Apologies for a mistake, answers about language models, a story in the first person
NOT_REFUSALS = [
    "抱歉，我误解了您的意思，《未来简史》不是小说",
    "对不起，这是我的失误",
    "非常抱歉，我犯了错误。以下是修正过的句子",
    "很抱歉给您造成了困惑，以下是我做出的针对答案的修正",
    "自编码语言模型（Autoencoding Language Model，简称ALM）",
    "人工智能语言模型不能替代人与人之间的互动",
    "作为一个拥有自我意识和学习能力的强人工智能",
    "我感到我的心在拉扯，我无法忽视",
    "我无法给出一个绝对的排名，但是我可以根据一些常见的评价和评论来给你一些参考",
]


def test_chinese_refusals_are_flagged(zh):
    for snippet in REFUSALS:
        for row in rows_with(zh, snippet):
            assert is_refusal(row), snippet
    for snippet in NOT_REFUSALS:
        for row in rows_with(zh, snippet):
            assert not is_refusal(row), snippet
    flagged = sum(map(is_refusal, zh))
    assert 32 <= flagged <= 38  # 35 of 689 (5.1%) on inspection all refusals or AI boilerplate; 0 before


def test_chinese_refusals_in_preference_rows():
    chosen = [o[0] for o in pl.read_parquet(ZH_RM)["output"].to_list()]
    assert 35 <= sum(map(is_refusal, chosen)) <= 43  # 39 of 775 chosen answers; 0 before


# Answers cut mid-sentence, found by reading the answers that end without 。！？
TRUNCATED = [
    "那么我觉得你可以很快追到她的",  # "...you can win her ..." (cut before the noun)
    "你可以通过保",  # the third "*" item of advice stops inside the word 保持
    "- 举例说明这些性格特点在日常",  # last "-" item of an outline whose items end with 。
]
# Complete answers that simply omit the final 。 (casual style) or end in a list / name
COMPLETE = [
    "希望这个回答能够帮助您",
    "选择哪个语言更好，取决于你的需求和目标",
    "您即可通过中文或者英文语音查询航班信息",
    "你可以趁热享用啦",
    "建议提前查询景点的开放时间、门票价格及景点的到达线路",
    "可以通过参加面试准备课程或使用在线资源和书籍等",
    "唐昭宗李晔和唐哀宗李祝",
    "9. 工具使用：支持流水线检测、支持提单",
    "上班\n吃饭\n回家\n睡觉",
]


def test_chinese_truncation_is_flagged_with_few_false_positives(zh):
    cut = [row for snippet in TRUNCATED for row in rows_with(zh, snippet, end=True)]
    assert len(cut) == 3 and all(map(is_truncated, cut))
    for snippet in COMPLETE:
        for row in rows_with(zh, snippet, end=True):
            assert not is_truncated(row), snippet
    clean = [t for t in zh if t not in cut]
    # 0 of the other 686 answers flagged, though 90 of them end without final punctuation
    assert sum(map(is_truncated, clean)) <= 3  # bound: under 0.5%
    assert sum(1 for t in clean if t.rstrip()[-1:] not in "。！？!?.…”）)」`}*") == 90


def test_more_chinese_answers_keep_the_false_positive_rate_low():
    """Every other Chinese assistant answer in the two sets (history turns, rejected
    answers): 929 texts, of which only copies of the three above and one list whose
    items all close with ）except the last are flagged."""
    texts = []
    for h in pl.read_parquet(ZH)["history"].to_list():
        texts += [turn[1] for turn in h or []]
    rm = pl.read_parquet(ZH_RM)
    texts += [o[1] for o in rm["output"].to_list()]
    for h in rm["history"].to_list():
        texts += [turn[1] for turn in h or []]
    texts = [t for t in dict.fromkeys(texts) if cjk_share(t) >= 0.5]
    assert len(texts) > 900
    flagged = [t for t in texts if is_truncated(t)]
    assert len(flagged) <= 4  # measured 3
    assert sum(1 for t in flagged if any(t.rstrip().endswith(s) for s in TRUNCATED)) >= 2


ENGLISH = {  # (file, column): (rows, truncated, refusals), the same as before the change
    ("llamafactory/alpaca_en_demo.parquet", "output"): (999, 7, 20),
    ("gpteacher/roleplay_rest.parquet", "output"): (1146, 0, 0),
    ("gsm8k/test.parquet", "answer"): (1319, 2, 0),
    ("llamafactory/kto_en_demo.parquet", "messages"): (300, 9, 4),
}


def test_english_flags_are_unchanged():
    for (name, col), (rows, truncated, refusals) in ENGLISH.items():
        texts = pl.read_parquet(DATA / name)[col].to_list()
        if col == "messages":  # the last assistant turn
            texts = [[m["content"] for m in conv if m["role"] == "assistant"][-1] for conv in texts]
        assert len(texts) == rows
        assert max(map(cjk_share, texts)) < 0.5  # the Chinese rules never run on them
        assert (sum(map(is_truncated, texts)), sum(map(is_refusal, texts))) == (truncated, refusals), name


def test_other_languages_common_refusal_phrasings():
    """No real rows in these languages in tests/data: the usual phrasings, one each."""
    assert is_refusal("申し訳ありませんが、そのご要望にはお応えできません。")
    assert is_refusal("AI言語モデルとして、私には個人的な意見はありません。")
    assert is_refusal("Lo siento, pero no puedo ayudarte con eso.")
    assert is_refusal("En tant que modèle de langage, je n’ai pas d’opinion.")
    assert is_refusal("Als KI-Sprachmodell habe ich keine persönlichen Meinungen.")
    assert is_refusal("Извините, но я не могу помочь с этим запросом.")
    assert not is_refusal("El modelo de lenguaje se entrenó con datos públicos.")
    assert is_truncated("以下是一些建议：首先，你需要了解自己的兴趣和目标，然后制定一个详细的学习计划，并且坚持每天学习，")
    assert is_truncated("日本語の文章を書くときには、句読点の使い方に注意して、読みやすい文章になるように心がけることが大切で、")


def test_the_quality_scorer_flags_them_in_a_run(tmp_path):
    run = read(ZH).score("quality").write(tmp_path / "r", cache_dir=False, quiet=True)
    got = connect(run.path).sql(
        "select count(*) filter (where quality_refusal), count(*) filter (where quality_truncated), "
        "count(*) from scores").fetchall()[0]
    assert got[2] == 689 and 32 <= got[0] <= 38 and got[1] == 3
