"""Selection strategies under a budget, on real rows with real embeddings.

The module fixture embeds 300 real Alpaca-style answers (llamafactory/alpaca_en_demo)
once with the embedded minilm model and counts the tokens of each full row with
minilm's real WordPiece tokenizer; every strategy is then called on that frame
directly (``selection.select``), and one end-to-end run checks the executor wiring.
"""

from __future__ import annotations

import zlib

import numpy as np
import polars as pl
import pytest

from _data import need
from conftest import DATA
from curate import connect, read
from curate import selection as S
from curate.errors import CurateError

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
EVAL_SET = DATA / "alpaca_eval" / "eval_set.parquet"
SEED_TASKS = DATA / "self_instruct" / "seed_tasks.parquet"
N = 300
WORDS = "text_stats_response_words"


@pytest.fixture(scope="module")
def real() -> tuple[pl.DataFrame, np.ndarray]:
    """(frame, embeddings): id, _order, source, prompt_id, text_stats-like columns,
    a length bucket, a DSIR-like weight and the L2-normalised minilm embedding."""
    from scorers.embedding import Embedding

    need(ALPACA)
    d = pl.read_parquet(ALPACA).head(N)
    full = [f"{r['instruction']}\n\n{r['input']}\n{r['output']}" if r["input"]
            else f"{r['instruction']}\n{r['output']}" for r in d.iter_rows(named=True)]
    emb = Embedding(max_seq_length=128)
    x = emb.embed(d["output"].to_list())
    tokens = [len(t) for t in emb._st.tokenizer(full, add_special_tokens=False)["input_ids"]]
    words = [len(t.split()) for t in d["output"]]
    unique = [len(set(t.lower().split())) / max(len(t.split()), 1) for t in d["output"]]
    frame = pl.DataFrame({
        "id": [f"alpaca-{i:03d}" for i in range(N)],
        "_order": np.arange(N),
        "source": ["alpaca_en_demo.parquet"] * N,
        "prompt_id": pl.Series([None] * N, dtype=pl.String),
        "text_stats_tokens": tokens,
        "text_stats_words": [len(t.split()) for t in full],
        WORDS: words,
        "unique_ratio": unique,
        "length_bucket": ["short" if w < 30 else "medium" if w < 150 else "long" for w in words],
        "dsir_weight": np.log1p(np.array(words, dtype=np.float64)) / 2,
        # stand-in for SAE feature ids: the answer's distinct words, hashed to 1,024 ids
        "word_ids": pl.Series([sorted({zlib.crc32(w.encode()) % 1024 for w in t.lower().split()})
                               for t in d["output"]], dtype=pl.List(pl.Int32)),
        "embedding": pl.Series([row for row in x], dtype=pl.List(pl.Float32)),
    })
    return frame, x


def keep_of(frame: pl.DataFrame, name: str, budget, **options) -> np.ndarray:
    return S.select(frame, name, budget, options).keep.to_numpy()


def ids_of(frame: pl.DataFrame, name: str, budget, **options) -> set[str]:
    return set(frame.filter(pl.Series(keep_of(frame, name, budget, **options)))["id"])


CASES = {
    "random": {},
    "topk": {"by": WORDS},
    "threshold": {"by": WORDS, "min": 20},
    "stratified": {"by": "length_bucket"},
    "weighted": {"weights": {WORDS: 1.0, "unique_ratio": 0.5}},
    "grape": {"by": WORDS},
    "importance": {},
    "deita": {"by": WORDS},
    "kmeans_quality": {"by": WORDS},
    "kcenter": {"by": WORDS},
    "facility_location": {},
    "sae_target": {"by": WORDS},
    "sae_coverage": {"features": "word_ids", "cap": 2},
}


def test_every_strategy_has_a_case():
    assert set(CASES) == set(S.STRATEGIES)


# --- budgets -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, None), (0, S.Budget(0, "rows")), (25, S.Budget(25, "rows")),
    ("1000", S.Budget(1000, "rows")), ("10k", S.Budget(10_000, "rows")),
    ("7 rows", S.Budget(7, "rows")), ("50000tokens", S.Budget(50_000, "tokens")),
    ("50k tokens", S.Budget(50_000, "tokens")), ("2M tokens", S.Budget(2_000_000, "tokens")),
    ("1.5k tokens", S.Budget(1500, "tokens")), ("3 token", S.Budget(3, "tokens")),
])
def test_parse_budget(value, expected):
    assert S.parse_budget(value) == expected


@pytest.mark.parametrize("bad", ["lots", "", "-5", "5 apples", "1.2345k tokens", "tokens", True,
                                 -1, 2.5, [10]])
def test_bad_budgets_raise(bad, real):
    with pytest.raises(CurateError, match="budget"):
        S.parse_budget(bad)
    with pytest.raises(CurateError, match="budget"):
        S.select(real[0], "random", bad, {})


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("budget", [1, 37, "120 rows"])
def test_row_budget_is_exact(real, name, budget):
    frame, _ = real
    keep = keep_of(frame, name, budget, **CASES[name])
    assert keep.sum() == S.parse_budget(budget).n


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_budget_keeps_every_eligible_row(real, name):
    frame, x = real
    decision = S.select(frame, name, None, CASES[name])
    keep = decision.keep.to_numpy()
    if name == "threshold":
        assert keep.sum() == (frame[WORDS] >= 20).sum() < N
    elif name == "deita":  # every row not too similar to a better one
        assert keep.sum() < N and (x[keep] @ x[keep].T - 2 * np.eye(keep.sum())).max() <= 0.9
    else:
        assert keep.all()
    assert decision.reason.filter(decision.keep).null_count() == keep.sum()
    assert decision.reason.filter(~decision.keep).null_count() == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_token_budget_never_exceeded_and_nearly_full(real, name):
    frame, _ = real
    costs = frame["text_stats_tokens"].to_numpy()
    budget = int(costs.sum() * 0.15)
    decision = S.select(frame, name, f"{budget}tokens", CASES[name])
    keep = decision.keep.to_numpy()
    used = costs[keep].sum()
    assert used <= budget
    assert budget - used < costs.max()  # full up to less than the largest single row
    # every row left out for the budget did not fit in what was left
    over = decision.reason.str.starts_with("over budget").fill_null(False).to_numpy()
    assert over.any() and (costs[over] > budget - used).all()
    assert decision.reason[int(np.flatnonzero(over)[0])] == \
        f"over budget ({name}, budget {budget} tokens)"


def test_token_budget_other_column_and_errors(real):
    frame, _ = real
    words = frame["text_stats_words"].to_numpy()
    keep = keep_of(frame, "random", "2k tokens", token_column="text_stats_words", seed=3)
    assert 2000 - words.max() < words[keep].sum() <= 2000
    with pytest.raises(CurateError, match=r'text_stats_tokens.*\.score\("text_stats"\)'):
        S.select(frame.drop("text_stats_tokens"), "random", "1k tokens", {})
    nulls = frame.with_columns(text_stats_tokens=pl.lit(None, dtype=pl.Int64))
    with pytest.raises(CurateError, match="tokenizer"):
        S.select(nulls, "topk", "1k tokens", {"by": WORDS})
    # a row budget never needs the token column
    assert keep_of(nulls, "topk", 5, by=WORDS).sum() == 5


# --- determinism ---------------------------------------------------------------------------

SEEDED = {"random": {}, "stratified": {"by": "length_bucket"},
          "kmeans_quality": {"by": WORDS}, "importance": {}}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeds(real, name):
    frame, _ = real
    a = ids_of(frame, name, 40, seed=0, **SEEDED[name])
    b = ids_of(frame, name, 40, seed=0, **SEEDED[name])
    c = ids_of(frame, name, 40, seed=1, **SEEDED[name])
    assert len(a) == 40 and a == b and a != c


@pytest.mark.parametrize("name", sorted(CASES))
def test_independent_of_row_order(real, name):
    frame, _ = real
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=7)
    assert ids_of(frame, name, 40, **CASES[name]) == ids_of(shuffled, name, 40, **CASES[name])


# --- topk, threshold, combine ------------------------------------------------------------

def test_topk_expr_and_nulls_last(real):
    frame, _ = real
    expr = f"{WORDS} - 0.5 * text_stats_tokens"
    direct = frame.with_columns(v=pl.col(WORDS) - 0.5 * pl.col("text_stats_tokens"))
    assert ids_of(frame, "topk", 30, expr=expr) == ids_of(direct, "topk", 30, by="v")
    top = set(direct.sort("v", descending=True).head(30)["id"])
    assert ids_of(frame, "topk", 30, expr=expr) == top
    holes = frame.with_columns(pl.when(pl.col("_order") < 10).then(None).otherwise(pl.col(WORDS))
                               .alias(WORDS))
    assert not (keep_of(holes, "topk", N - 10, by=WORDS) & (frame["_order"] < 10).to_numpy()).any()
    assert not (keep_of(holes, "topk", N - 10, by=WORDS, descending=False)
                & (frame["_order"] < 10).to_numpy()).any()
    with pytest.raises(CurateError, match="exactly one of by"):
        S.select(frame, "topk", 5, {"by": WORDS, "expr": expr})
    with pytest.raises(CurateError, match="unknown column"):
        S.select(frame, "topk", 5, {"expr": "nope * 2"})


def test_threshold(real):
    frame, _ = real
    words = frame[WORDS].to_numpy()
    d = S.select(frame, "threshold", 20, {"by": WORDS, "min": 50, "max": 100})
    keep = d.keep.to_numpy()
    inside = (words >= 50) & (words <= 100)
    assert keep.sum() == 20 and inside[keep].all()
    assert words[keep].min() >= words[inside & ~keep].max()  # best of the eligible
    reasons = d.reason.to_list()
    low, high = int(np.flatnonzero(words < 50)[0]), int(np.flatnonzero(words > 100)[0])
    assert reasons[low] == f"threshold: {WORDS} < min 50"  # one reason per bound
    assert reasons[high] == f"threshold: {WORDS} > max 100"
    assert d.detail[low] == f"{WORDS} = {float(words[low])}"  # the row's value
    assert d.detail[high] == f"{WORDS} = {float(words[high])}"
    assert reasons[int(np.flatnonzero(inside & ~keep)[0])].startswith("over budget (threshold")
    assert keep_of(frame, "threshold", None, expr=f"{WORDS} * 2", max=100).sum() == (words <= 50).sum()
    with pytest.raises(CurateError, match="min=, max="):
        S.select(frame, "threshold", 5, {"by": WORDS})


def test_combine_normalisations():
    toy = pl.DataFrame({"id": list("abcde"), "a": [1.0, 2.0, 3.0, 4.0, None],
                        "b": [10, 40, 20, 30, 50]})
    rank = S.combine(toy, {"a": 1.0, "b": -1.0}).to_list()
    assert rank[:4] == pytest.approx([0 - 0, 1 / 3 - 3 / 4, 2 / 3 - 1 / 4, 1 - 2 / 4]) and rank[4] is None
    z = S.combine(toy, {"a": 2.0}, normalize="zscore").to_list()
    assert z[:4] == pytest.approx([2 * v / np.sqrt(1.25) for v in (-1.5, -0.5, 0.5, 1.5)])
    mm = S.combine(toy, {"b": 1.0}, normalize="minmax").to_list()
    assert mm == pytest.approx([0, 0.75, 0.25, 0.5, 1])
    assert S.combine(toy.with_columns(c=pl.lit(7)), {"c": 1.0}).to_list() == [0.5] * 5
    # weighted keeps the highest combined scores (a negative weight prefers low b); the
    # row with a null a goes last
    keep = S.select(toy, "weighted", 2, {"weights": {"a": 1.0, "b": -1.0}}).keep.to_list()
    assert keep == [False, False, True, True, False]
    keep = S.select(toy, "weighted", 4, {"weights": {"b": -1.0, "a": 0.0}}).keep.to_list()
    assert keep == [True, True, True, True, False]
    with pytest.raises(CurateError, match="normalize"):
        S.combine(toy, {"a": 1.0}, normalize="softmax")
    with pytest.raises(CurateError, match="no column 'zz'"):
        S.combine(toy, {"zz": 1.0})


# --- stratified --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_frame() -> pl.DataFrame:
    need(EVAL_SET)
    d = pl.read_parquet(EVAL_SET)
    return pl.DataFrame({"id": [f"eval-{i}" for i in range(d.height)], "_order": range(d.height),
                         "source": d["dataset"], "prompt_id": [None] * d.height})


def stratum_counts(frame: pl.DataFrame, keep: np.ndarray) -> dict[str, int]:
    return dict(frame.filter(pl.Series(keep)).group_by("source").len().iter_rows())


def test_stratified_proportions_are_exact(eval_frame):
    sizes = dict(eval_frame.group_by("source").len().iter_rows())
    assert sizes == {"oasst": 188, "helpful_base": 129, "koala": 156, "selfinstruct": 252,
                     "vicuna": 80}
    # 100 * size / 805 = 23.35, 16.02, 19.38, 31.30, 9.94: floors 98, the two largest
    # remainders (vicuna .94, koala .38) get the last two rows
    keep = keep_of(eval_frame, "stratified", 100)  # by="source" is the default
    assert stratum_counts(eval_frame, keep) == {"oasst": 23, "helpful_base": 16, "koala": 20,
                                                "selfinstruct": 31, "vicuna": 10}
    # balanced: 100 each, vicuna has only 80, its 20 spare rows go 5 to each other stratum
    keep = keep_of(eval_frame, "stratified", 500, balanced=True, seed=4)
    assert stratum_counts(eval_frame, keep) == {"oasst": 105, "helpful_base": 105, "koala": 105,
                                                "selfinstruct": 105, "vicuna": 80}
    keep = keep_of(eval_frame, "stratified", 101, balanced=True)
    assert sorted(stratum_counts(eval_frame, keep).values()) == [20, 20, 20, 20, 21]


def test_stratified_tokens_spread_by_size(eval_frame):
    frame = eval_frame.with_columns(text_stats_tokens=pl.lit(10))
    keep = keep_of(frame, "stratified", "1000 tokens")
    counts = stratum_counts(frame, keep)
    assert sum(counts.values()) == 100  # 1000 tokens of 10-token rows
    for name, size in frame.group_by("source").len().iter_rows():
        assert abs(counts[name] - 100 * size / 805) <= 1


def test_quota_helpers():
    assert S.largest_remainder(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]
    assert S.largest_remainder(np.array([5, 3]), 8).tolist() == [5, 3]
    assert S.balanced_quotas(np.array([2, 10, 10]), 12).tolist() == [2, 5, 5]
    assert S.balanced_quotas(np.array([2, 10, 10]), 11).tolist() == [2, 5, 4]


# --- deita ----------------------------------------------------------------------------------

def deita_reference(x, score, tie, threshold, limit=None, costs=None):
    """Brute force: all pairwise cosines, rows by score desc (ties by the seeded order)."""
    sims = x @ x.T
    kept: list[int] = []
    used = 0
    for i in np.lexsort((tie, -score)):
        if costs is None and limit is not None and len(kept) == limit:
            break
        if kept and sims[i, kept].max() > threshold:
            continue
        if costs is not None:
            if used + costs[i] > limit:
                continue
            used += costs[i]
        kept.append(int(i))
    return set(kept)


@pytest.mark.parametrize("threshold, budget", [(0.9, None), (0.6, None), (0.4, 40), (0.45, 300),
                                               (0.35, "12k tokens")])
def test_deita_equals_brute_force(real, threshold, budget):
    frame, x = real
    b = S.parse_budget(budget)
    tie = S.seeded_order(frame["id"], 0).to_numpy()
    score = frame[WORDS].to_numpy().astype(float)
    costs = frame["text_stats_tokens"].to_numpy() if b and b.unit == "tokens" else None
    ref = deita_reference(x, score, tie, threshold, b.n if b else None, costs)
    d = S.select(frame, "deita", budget, {"by": WORDS, "threshold": threshold})
    keep = d.keep.to_numpy()
    assert set(np.flatnonzero(keep).tolist()) == ref
    sims = x[keep] @ x[keep].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= threshold  # no two selected rows exceed the threshold
    similar = d.reason.str.starts_with("too similar").fill_null(False).to_numpy()
    if threshold <= 0.6:
        assert similar.sum() >= 5  # the threshold bites on these rows
    index = {rid: i for i, rid in enumerate(frame["id"])}
    for i in np.flatnonzero(similar):
        rep = index[d.representative[int(i)]]
        assert keep[rep] and score[rep] >= score[i]
        cos = float(x[i] @ x[rep])
        assert cos > threshold and d.reason[int(i)] == f"too similar to a kept row (cosine > {threshold})"
        assert d.detail[int(i)] == f"cosine {cos:.3f} to {d.representative[int(i)]}"
    if b and b.unit == "rows" and b.n < N:
        assert keep.sum() == b.n


def test_deita_needs_embeddings_and_by(real):
    frame, _ = real
    with pytest.raises(CurateError, match=r'\.score\("embedding"\)'):
        S.select(frame.drop("embedding"), "deita", 10, {"by": WORDS})
    with pytest.raises(CurateError, match="needs option.*by="):
        S.select(frame, "deita", 10, {})
    with pytest.raises(CurateError, match="threshold"):
        S.select(frame, "deita", 10, {"by": WORDS, "threshold": 1.5})


# --- diversity ------------------------------------------------------------------------------

def min_distance(x: np.ndarray, keep: np.ndarray) -> float:
    sims = x[keep] @ x[keep].T
    np.fill_diagonal(sims, -1)
    return float(1 - sims.max())


def test_kcenter_is_more_spread_than_random(real):
    frame, x = real
    keep = keep_of(frame, "kcenter", 30, by=WORDS)
    # brute-force farthest-point greedy from the longest answer
    chosen = [int(np.lexsort((S.seeded_order(frame["id"], 0).to_numpy(), -frame[WORDS].to_numpy()))[0])]
    dist = 1 - x @ x[chosen[0]]
    while len(chosen) < 30:
        dist[chosen] = -1
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1 - x @ x[nxt])
    assert set(np.flatnonzero(keep).tolist()) == set(chosen)
    spread = min_distance(x, keep)
    for seed in range(5):
        assert spread > min_distance(x, keep_of(frame, "random", 30, seed=seed))
    assert spread > min_distance(x, keep_of(frame, "topk", 30, by=WORDS))


def test_facility_location_covers_better_than_random(real):
    frame, x = real
    keep = keep_of(frame, "facility_location", 25)
    tie = S.seeded_order(frame["id"], 0).to_numpy()
    # naive greedy: every candidate's gain at every step
    cover, chosen = np.zeros(N), []
    sims = np.maximum(x @ x.T, 0).astype(np.float64)
    for _ in range(25):
        gains = np.maximum(sims - cover[:, None], 0).sum(axis=0)
        gains[chosen] = -1
        j = int(np.lexsort((tie, -gains))[0])  # ties (rows 117 and 275 are identical): seeded
        chosen.append(j)
        cover = np.maximum(cover, sims[:, j])
    assert set(np.flatnonzero(keep).tolist()) == set(chosen)
    best = S.facility_objective(x, np.flatnonzero(keep))
    assert best == pytest.approx(cover.sum(), rel=1e-5)
    for seed in range(5):
        assert best > S.facility_objective(x, np.flatnonzero(keep_of(frame, "random", 25, seed=seed)))
    assert best > S.facility_objective(x, np.flatnonzero(keep_of(frame, "kcenter", 25)))


def test_kmeans_quality_low_temperature_is_top_k_per_cluster(real):
    frame, _ = real
    d = S.select(frame, "kmeans_quality", 60, {"by": WORDS, "temperature": 0.01, "k": 8})
    keep = d.keep.to_numpy()
    assert keep.sum() == 60
    cluster = d.cluster.to_numpy()
    assert all(c.startswith("kmeans:") for c in cluster) and len(set(cluster)) == 8
    words = frame[WORDS].to_numpy()
    names = sorted(set(cluster))
    sizes = np.array([(cluster == c).sum() for c in names])
    quotas = S.largest_remainder(sizes, 60)
    for c, q in zip(names, quotas):
        inside = cluster == c
        assert keep[inside].sum() == q  # budget spread in proportion to cluster size
        if 0 < q < inside.sum():
            assert words[inside & keep].min() >= words[inside & ~keep].max()
    assert d.detail.filter(~d.keep).str.contains("rows kept").all()


def test_kmeans_quality_prefers_quality_at_moderate_temperature(real):
    frame, _ = real
    words = frame[WORDS].to_numpy()
    d0 = S.select(frame, "kmeans_quality", 60, {"by": WORDS, "temperature": 50.0})
    cluster = d0.cluster.to_numpy()
    upper = np.zeros(N, dtype=bool)  # rows above their cluster's median quality
    for c in set(cluster):
        inside = cluster == c
        upper |= inside & (words > np.median(words[inside]))
    picks = sum(keep_of(frame, "kmeans_quality", 60, by=WORDS, temperature=50.0, seed=s)
                for s in range(8)).astype(float)
    assert picks[upper].sum() > 2 * picks[~upper].sum()
    # but it is a sample, not the top: some lower-half rows are picked
    assert picks[~upper].sum() > 0


def test_importance_weights(real):
    frame, _ = real
    # 20 rows (the shortest answers) get a much higher log importance weight
    boosted = np.argsort(frame[WORDS].to_numpy(), kind="stable")[:20]
    w = np.zeros(N)
    w[boosted] = 30.0
    f = frame.with_columns(dsir_weight=pl.Series(w))
    for seed in range(3):
        assert set(np.flatnonzero(keep_of(f, "importance", 20, seed=seed))) == set(boosted)
    # resampling: weight log(4) on half the rows -> about 4/5 of the picks from that half
    half = np.arange(N) % 2 == 0
    f = frame.with_columns(dsir_weight=pl.Series(np.where(half, np.log(4.0), 0.0)))
    share = np.mean([keep_of(f, "importance", 30, seed=s)[half].sum() / 30 for s in range(10)])
    assert 0.7 < share < 0.9
    with pytest.raises(CurateError, match="dsir_weight"):
        S.select(frame.drop("dsir_weight"), "importance", 5, {})


# --- options and errors -----------------------------------------------------------------------

def test_option_errors(real):
    frame, _ = real
    with pytest.raises(CurateError, match="unknown selection strategy 'best'"):
        S.select(frame, "best", 5, {})
    with pytest.raises(CurateError, match=r"has no option\(s\) \['bye'\]"):
        S.select(frame, "topk", 5, {"bye": WORDS})
    with pytest.raises(CurateError, match="no column 'nope'"):
        S.select(frame, "topk", 5, {"by": "nope"})
    with pytest.raises(CurateError, match="no column 'nope'"):
        S.select(frame, "stratified", 5, {"by": "nope"})
    with pytest.raises(CurateError, match="temperature"):
        S.select(frame, "kmeans_quality", 5, {"by": WORDS, "temperature": 0})
    with pytest.raises(CurateError, match="kcenter needs sentence embeddings"):
        S.select(frame.drop("embedding"), "kcenter", 5, {})
    assert S.requirements("deita", "5k tokens", {"by": WORDS}) == [
        (WORDS, f"option by={WORDS!r} names a column no earlier step writes"),
        ("embedding", 'add .score("embedding") before .select("deita")'),
        ("text_stats_tokens", ('a token budget counts tokens: add .score("text_stats") (with a '
                               'tokenizer) or pass token_column=<a column of token counts>'))]


# --- end to end ------------------------------------------------------------------------------

def test_deita_end_to_end(tmp_path):
    need(SEED_TASKS)
    src = tmp_path / "in"
    src.mkdir()
    pl.read_parquet(SEED_TASKS).head(120).write_parquet(src / "seed_tasks.parquet")
    out = tmp_path / "run"
    (read(src).score("embedding").score("text_stats", tokenizer=None)
     .select("deita", by="text_stats_response_words", budget=50, threshold=0.5)
     .write(out, cache_dir=False, quiet=True))
    con = connect(out)
    assert con.sql("select count(*) from selected").fetchall()[0][0] == 50
    rows = con.sql("select r.id, r.reason, r.representative from rejected r "
                   "where stage = 'select'").fetchall()
    assert len(rows) == 70
    kept = {r[0] for r in con.sql("select id from selected").fetchall()}
    vec = {i: np.array(e) for i, e in con.sql("select id, embedding from scores").fetchall()}
    words = dict(con.sql("select id, text_stats_response_words from scores").fetchall())
    similar = [r for r in rows if r[1].startswith("too similar to a kept row")]
    assert similar
    for rid, reason, rep in similar:
        assert rep in kept and words[rep] >= words[rid] and float(vec[rid] @ vec[rep]) > 0.5
    for rid, reason, rep in rows:
        if rid not in {r[0] for r in similar}:
            assert reason == "over budget (deita, budget 50 rows)" and rep is None
    chosen = np.stack([vec[i] for i in kept])
    sims = chosen @ chosen.T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 0.5 + 1e-6


def test_token_budget_and_plan_check_end_to_end(tmp_path):
    need(SEED_TASKS)
    src = tmp_path / "in"
    src.mkdir()
    pl.read_parquet(SEED_TASKS).head(60).write_parquet(src / "seed_tasks.parquet")
    base = read(src).score("text_stats", tokenizer=None)
    run = (base.select("stratified", by="is_classification", budget="1.5k tokens",
                       token_column="text_stats_words")
           .write(tmp_path / "r", cache_dir=False, quiet=True))
    con = connect(run.path)
    used, biggest = con.sql("select sum(s.text_stats_words), max(s.text_stats_words) from selected "
                            "join scores s using (id)").fetchall()[0]
    assert 1500 - biggest < used <= 1500
    with pytest.raises(CurateError, match=r"unknown column 'text_stats_tokens'.*text_stats"):
        read(src).select("random", budget="1k tokens").write(tmp_path / "x", cache_dir=False,
                                                             quiet=True)
    with pytest.raises(CurateError, match="is null for 60 row.*tokenizer"):
        base.select("random", budget="1k tokens").write(tmp_path / "z", cache_dir=False, quiet=True)
    with pytest.raises(CurateError, match="budget"):
        base.select("random", budget="many").write(tmp_path / "y", cache_dir=False, quiet=True)
