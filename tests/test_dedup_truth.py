"""The near-duplicate ground truth (tests/_dedup_truth.py) that dedup accuracy is judged by."""

from __future__ import annotations

import random
from itertools import combinations

import numpy as np
import polars as pl
import pytest

import _dedup_truth as T
from conftest import DATA

THRESHOLD = 0.8


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """A fixed sample of the real texts (a quarter: keeps the module fast)."""
    all_texts = T.real_texts()
    return random.Random(0).sample(all_texts, len(all_texts) // 4)


@pytest.fixture(scope="module")
def corpus(texts):
    return T.make_corpus(texts, 3000, 0.5, seed=7, return_info=True)


def test_shingles_normalise_and_count():
    assert T.shingles("The  quick\nbrown FOX jumps over") == {"the quick brown fox jumps",
                                                             "quick brown fox jumps over"}
    assert T.shingles("Ｈｅｌｌｏ　World") == {"hello world"}  # NFKC, fewer than 5 words: one shingle
    assert T.shingles("   \n ") == set() and T.shingles("") == set()
    assert T.shingles("a b c d e", 5) == {"a b c d e"}
    assert T.shingles("abcdef", 3, "char") == {"abc", "bcd", "cde", "def"}
    with pytest.raises(ValueError):
        T.shingles("x", kind="byte")


def test_character_shingles_for_chinese():
    zh = pl.read_parquet(DATA / "llamafactory" / "oaast_sft_zh.parquet")["output"].to_list()[:20]
    char = [len(T.shingles(t, 5, "char")) for t in zh]
    word = [len(T.shingles(t, 5, "word")) for t in zh]
    assert min(char) > 0 and all(c >= w for c, w in zip(char, word))
    assert sum(char) > 5 * sum(word)  # few spaces: word 5-grams see a handful of tokens
    a = zh[0]
    b = a.replace("。", "！", 1)
    assert 0.8 < T.jaccard(T.shingles(a, 5, "char"), T.shingles(b, 5, "char")) < 1


def test_shingles_equal_the_engines(texts):
    """The bench gives every tool these shingles; they must be curate's too."""
    from curate.text import shingles as engine

    for text in texts[:500] + ["", "one two", "Ｈｅｌｌｏ　World  again"]:
        assert T.shingles(text) == set(engine(text))
        assert T.shingles(text, 5, "char") == set(engine(text, 5, "char"))


def test_jaccard():
    assert T.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert T.jaccard({1}, {1}) == 1.0
    assert T.jaccard(set(), set()) == 0.0


def test_corpus_is_deterministic_for_a_seed(texts, corpus):
    docs, fams, _ = corpus
    again = T.make_corpus(texts, 3000, 0.5, seed=7)
    assert again == (docs, fams)
    other = T.make_corpus(texts, 3000, 0.5, seed=8)
    assert other[0] != docs
    assert len(docs) == 3000 and len(set(fams)) == 1500


def test_originals_are_real_and_independent(texts, corpus):
    docs, fams, info = corpus
    originals = [d for d, p in zip(docs, info["parent"]) if p == -1]
    assert len(originals) == 1500
    assert set(originals) <= set(texts)
    assert all(len(T.normalize(d).split()) >= 40 for d in originals)
    sets = [T.shingles(d) for d in originals]
    assert T.similar_pairs(sets, 0.5) == []  # pairwise Jaccard < 0.5, exactly


def test_variants_spread_on_both_sides_of_the_threshold(corpus):
    docs, fams, info = corpus
    var = [i for i, p in enumerate(info["parent"]) if p >= 0]
    j = np.array([info["jaccard_parent"][i] for i in var])
    assert np.allclose(j, [T.jaccard(T.shingles(docs[i]), T.shingles(docs[info["parent"][i]]))
                           for i in var])
    above = (j >= THRESHOLD).mean()
    assert above >= 0.3 and 1 - above >= 0.3
    assert (j >= 0.45).mean() > 0.97  # edits stop near the drawn target (>= 0.5)
    assert ((j > 0.55) & (j < 0.75)).mean() > 0.2 and ((j > 0.8) & (j < 0.95)).mean() > 0.15
    # realistic edits: a variant is never byte-identical to its parent, even at Jaccard 1
    assert all(docs[i] != docs[info["parent"][i]] for i in var)
    assert sum(info["jaccard_parent"][i] == 1.0 for i in var) > 0


def test_variants_belong_to_their_family(corpus):
    docs, fams, info = corpus
    for i, (p, o) in enumerate(zip(info["parent"], info["original"])):
        assert fams[i] == fams[o] and info["parent"][o] == -1
        assert p == -1 or fams[p] == fams[i]


def test_no_duplicates_across_families(corpus):
    docs, fams, _ = corpus
    assert T.cross_family_pairs(docs, fams, THRESHOLD) == []  # exact join over the corpus
    rng = random.Random(0)
    sets = [T.shingles(d) for d in docs]
    checked = 0
    while checked < 3000:  # and a plain sample of random pairs
        i, j = rng.randrange(len(docs)), rng.randrange(len(docs))
        if fams[i] != fams[j]:
            assert T.jaccard(sets[i], sets[j]) < 0.5
            checked += 1


def test_similarity_join_equals_brute_force(corpus):
    docs, fams, _ = corpus
    sets = [T.shingles(d) for d in docs[:700]]
    for t in (0.5, 0.8, 0.95):
        brute = [(i, j) for i, j in combinations(range(len(sets)), 2)
                 if T.jaccard(sets[i], sets[j]) >= t]
        assert [(i, j) for i, j, _ in T.similar_pairs(sets, t)] == brute


def test_true_duplicates_equal_brute_force(corpus):
    docs, fams, _ = corpus
    sub = list(range(0, 3000, 6))
    d, f = [docs[i] for i in sub], [fams[i] for i in sub]
    sets = [T.shingles(x) for x in d]
    brute = {k for i, j in combinations(range(len(d)), 2)
             if T.jaccard(sets[i], sets[j]) >= THRESHOLD for k in (i, j)}
    assert T.true_duplicates(d, f, THRESHOLD) == brute
    assert T.true_duplicates(d, f, THRESHOLD, across=True) == brute


def test_truth_has_both_kinds(corpus):
    docs, fams, info = corpus
    truth = T.true_duplicates(docs, fams, THRESHOLD)
    assert 0.2 * len(docs) < len(truth) < 0.8 * len(docs)
    # some variants are below the threshold to every other doc: negatives inside families
    fam_size = np.bincount(fams)
    assert sum(1 for i in range(len(docs)) if fam_size[fams[i]] > 1 and i not in truth) > 100


def test_score_both_formats(corpus):
    docs, fams, _ = corpus
    n = len(docs)
    pairs = T.family_pairs(docs, fams, THRESHOLD)
    truth = {i for p in pairs for i in p[:2]}
    labels = T.clusters_from_pairs(n, [p[:2] for p in pairs])
    perfect = T.score(labels, truth, n)
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    clusters = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
    assert T.score(clusters, truth, n)["f1"] == 1.0
    none = T.score([], truth, n)
    assert none["recall"] == 0.0 and none["f1"] == 0.0
    assert T.score(np.full(n, -1), truth, n)["recall"] == 0.0
    everything = T.score([list(range(n))], truth, n)
    assert everything["recall"] == 1.0 and everything["precision"] == pytest.approx(len(truth) / n)
    half = sorted(truth)[: len(truth) // 2]
    s = T.score([half], truth, n)  # one wrong cluster of true duplicates: still all correct
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(len(half) / len(truth))
    with pytest.raises(ValueError, match="one label per doc"):
        T.score([0, 1, 1], truth, n)
