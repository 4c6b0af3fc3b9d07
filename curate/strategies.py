"""Selection strategies, registered by name (``@strategy``): each reads the frame of
alive rows and returns a preference order (``Ranking``) that the shared budget
takes a prefix of, or fills the budget itself. See ``curate.selection`` for the
contract and ``curate.budget`` for budgets and quotas.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
import polars as pl

from curate.budget import Decision, Fill, Ranking, spread
from curate.errors import CurateError

Strategy = Callable[..., "Ranking | pl.Series | Decision"]
STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str, *, columns: tuple[str, ...] = (),
             embedding: bool = False) -> Callable[[Strategy], Strategy]:
    """Register a strategy ``fn(frame, fill, **options)``. ``columns`` names the options
    that hold a column name (checked before a run starts); ``embedding`` says the
    strategy reads the column named by its ``embedding`` option."""
    def deco(fn: Strategy) -> Strategy:
        fn.column_options = columns  # type: ignore[attr-defined]
        fn.uses_embedding = embedding  # type: ignore[attr-defined]
        STRATEGIES[name] = fn
        return fn
    return deco


# --- helpers -----------------------------------------------------------------------------

def _available(frame: pl.DataFrame) -> str:
    return ", ".join(c for c in frame.columns if not c.startswith("_"))


def _column(frame: pl.DataFrame, col: str, who: str, hint: str = "") -> pl.Series:
    if not isinstance(col, str) or col not in frame.columns:
        raise CurateError(f"{who}: no column {col!r}{'; ' + hint if hint else ''}; "
                          f"available: {_available(frame)}")
    return frame[col]


def _sql(expr: str, who: str) -> pl.Expr:
    try:
        return pl.sql_expr(expr)
    except Exception as err:  # polars raises several error types for bad SQL
        raise CurateError(f"{who}: expr {expr!r} is not a valid SQL expression ({err})") from err


def _values(frame: pl.DataFrame, who: str, by: str | None = None,
            expr: str | None = None) -> tuple[pl.Series, str]:
    """The numeric score a strategy ranks by (a column or a SQL expression over
    columns) as Float64 with NaN turned into null, and its label."""
    if (by is None) == (expr is None):
        raise CurateError(f"{who}: give exactly one of by=<score column> or expr=<SQL expression>")
    if by is not None:
        s, label = _column(frame, by, who), by
    else:
        e = _sql(expr, who)
        missing = [c for c in e.meta.root_names() if c not in frame.columns]
        if missing:
            raise CurateError(f"{who}: expr {expr!r} uses unknown column(s) {missing}; "
                              f"available: {_available(frame)}")
        try:
            s = frame.select(e.alias("_value")).to_series()
        except Exception as err:
            raise CurateError(f"{who}: cannot evaluate expr {expr!r} ({err})") from err
        label = expr
    if not (s.dtype.is_numeric() or s.dtype == pl.Boolean):
        raise CurateError(f"{who}: {label!r} is {s.dtype}, not a number")
    s = s.cast(pl.Float64)
    return s.fill_nan(None), label


def seeded_order(ids: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random rank per row that depends only on (id, seed), not on row order."""
    return (ids + f"#{seed}").hash(seed=0).rank("ordinal")


def _uniform(ids: pl.Series, seed: int, salt: str) -> np.ndarray:
    """A uniform (0, 1) number per row from a hash of (id, seed, salt)."""
    h = (ids + f"#{salt}#{seed}").hash(seed=0).to_numpy()
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def gumbel(ids: pl.Series, seed: int) -> np.ndarray:
    """Standard Gumbel noise per row, from a hash of (id, seed): row-order independent."""
    return -np.log(-np.log(_uniform(ids, seed, "gumbel")))


def _tie(frame: pl.DataFrame, seed: int) -> np.ndarray:
    return seeded_order(frame["id"], seed).to_numpy()


def _rank_order(frame: pl.DataFrame, values: pl.Series | np.ndarray, descending: bool,
                seed: int) -> np.ndarray:
    """Row indices by ``values`` (nulls and NaN last), ties by the seeded order."""
    v = pl.Series("_v", values, dtype=pl.Float64).fill_nan(None)
    df = pl.DataFrame({"_v": v, "_t": seeded_order(frame["id"], seed)}).with_row_index("_i")
    return df.sort(["_v", "_t"], descending=[descending, False], nulls_last=True)["_i"].to_numpy() \
        .astype(np.int64)


def _embeddings(frame: pl.DataFrame, col: str, who: str) -> np.ndarray:
    """The embedding column as an (n, d) float32 matrix, rows L2-normalised."""
    if col not in frame.columns:
        raise CurateError(f"{who} needs sentence embeddings in column {col!r}: add "
                          f'.score("embedding") before .select("{who}")')
    s = frame[col]
    if not isinstance(s.dtype, (pl.List, pl.Array)):
        raise CurateError(f"{who}: column {col!r} is {s.dtype}, not an embedding (list of floats)")
    if s.null_count():
        raise CurateError(f"{who}: {s.null_count()} row(s) have no embedding in {col!r}")
    n = frame.height
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lens = s.list.len() if isinstance(s.dtype, pl.List) else pl.Series([s.dtype.size] * n)
    d = int(lens.max())
    if int(lens.min()) != d or d == 0:
        raise CurateError(f"{who}: embeddings in {col!r} have different lengths")
    x = np.ascontiguousarray(s.explode().to_numpy().astype(np.float32).reshape(n, d))
    if np.isnan(x).any():
        raise CurateError(f"{who}: embeddings in {col!r} contain NaN")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norm > 0, norm, 1), dtype=np.float32)


def _strings(values: list[str | None]) -> pl.Series:
    return pl.Series(values, dtype=pl.String)


# --- strategies ----------------------------------------------------------------------------

@strategy("random")
def random_rows(frame: pl.DataFrame, fill: Fill, *, seed: int = 0) -> Ranking:
    """Uniform random sample (the baseline every comparison needs): rows in a seeded
    order that depends only on (id, seed)."""
    return Ranking(np.argsort(_tie(frame, seed), kind="stable"))


@strategy("topk", columns=("by",))
def topk(frame: pl.DataFrame, fill: Fill, *, by: str | None = None, expr: str | None = None,
         descending: bool = True, seed: int = 0) -> Ranking:
    """The rows with the highest (``descending=False``: lowest) ``by`` column or SQL
    ``expr`` over score columns (e.g. ``"quality_score - 0.1 * text_stats_words"``);
    nulls last, ties by a seeded order."""
    values, _ = _values(frame, "topk", by, expr)
    return Ranking(_rank_order(frame, values, descending, seed))


@strategy("threshold", columns=("by",))
def threshold(frame: pl.DataFrame, fill: Fill, *, by: str | None = None, expr: str | None = None,
              min: float | None = None, max: float | None = None,
              descending: bool = True, seed: int = 0) -> Ranking:
    """Rows whose ``by`` (or SQL ``expr``) lies in [``min``, ``max``] (inclusive; give
    one or both) are eligible, in order of ``by`` (descending unless told), ties
    seeded; under a budget the best of them are kept. Null scores are not eligible."""
    lo, hi = min, max  # checked by check_options
    values, label = _values(frame, "threshold", by, expr)
    v = pl.col("_v")
    ok = v.is_not_null()
    if lo is not None:
        ok = ok & (v >= lo)
    if hi is not None:
        ok = ok & (v <= hi)
    # the reason is the same for every row failing the same bound (so rejected rows
    # group by it); the row's own value is in ``detail``
    low = v < (lo if lo is not None else -math.inf)
    high = v > (hi if hi is not None else math.inf)
    reason = (pl.when(v.is_null()).then(pl.lit(f"threshold: {label} is null"))
              .when(low).then(pl.lit(f"threshold: {label} < min {lo}"))
              .when(high).then(pl.lit(f"threshold: {label} > max {hi}"))
              .otherwise(None))
    detail = (pl.when(low | high).then(pl.concat_str([pl.lit(f"{label} = "), v.cast(pl.String)]))
              .otherwise(None))
    df = pl.DataFrame({"_v": values}).select(ok.alias("ok"), reason.alias("reason"),
                                             detail.alias("detail"))
    order = _rank_order(frame, values, descending, seed)
    eligible = df["ok"].to_numpy()
    return Ranking(order[eligible[order]], reason=df["reason"], detail=df["detail"])


def _groups(s: pl.Series, who: str) -> tuple[np.ndarray, pl.Series]:
    """Dense group index per row (nulls are a group of their own) and its label."""
    try:
        g = s.rank("dense")
    except Exception as err:
        raise CurateError(f"{who}: cannot group by column {s.name!r} ({s.dtype}): {err}") from err
    return g.fill_null(0).to_numpy().astype(np.int64), s.cast(pl.String).fill_null("null")


@strategy("stratified", columns=("by",))
def stratified(frame: pl.DataFrame, fill: Fill, *, by: str = "source", balanced: bool = False,
               seed: int = 0) -> Ranking:
    """Stratified random sample over the values of column ``by`` (e.g. ``source``, a
    cluster column): each stratum gets a share of the budget proportional to its size
    (largest remainder, so a row budget is met exactly), or with ``balanced=True`` an
    equal share (strata smaller than their share give every row and the leftover goes
    to the others). Within a stratum rows come in a seeded random order."""
    g, label = _groups(_column(frame, by, "stratified"), "stratified")
    _, dense = np.unique(g, return_inverse=True)
    cand = np.arange(frame.height)
    order, quota = spread(fill, cand, dense, _tie(frame, seed), balanced)
    detail = None
    if quota is not None:
        sizes = np.bincount(dense)
        detail = pl.Series([f"{by}={lab}: {quota[k]} of {sizes[k]} rows kept"
                            for lab, k in zip(label.to_list(), dense)], dtype=pl.String)
    return Ranking(order, detail=detail)


@strategy("weighted")
def weighted(frame: pl.DataFrame, fill: Fill, *, weights: dict[str, float],
             normalize: str = "rank", seed: int = 0) -> Ranking:
    """Rows by ``combine(frame, weights, normalize)`` descending (a negative weight
    prefers low values of its column); rows with a null in any weighted column last."""
    return Ranking(_rank_order(frame, combine(frame, weights, normalize), True, seed))


def combine(frame: pl.DataFrame, weights: dict[str, float], normalize: str = "rank") -> pl.Series:
    """A weighted sum of normalised score columns: ``sum_c weights[c] * norm(frame[c])``.

    ``normalize``: ``rank`` (average rank scaled to [0, 1]: (rank - 1) / (m - 1) over
    the m non-null values), ``zscore`` ((x - mean) / std, population std) or
    ``minmax`` ((x - min) / (max - min)). A constant column normalises to 0.5 (rank,
    minmax) or 0 (zscore). A positive weight prefers high values of its column, a
    negative weight prefers low values. A row with a null (or NaN) in any weighted
    column gets a null combined score (and goes last in ``weighted``)."""
    if not isinstance(weights, dict) or not weights:
        raise CurateError("combine: weights must be a non-empty {column: weight} mapping")
    if normalize not in ("rank", "zscore", "minmax"):
        raise CurateError(f"combine: normalize must be 'rank', 'zscore' or 'minmax', "
                          f"got {normalize!r}")
    total = pl.Series("combined", [0.0] * frame.height, dtype=pl.Float64)
    for col, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise CurateError(f"combine: weight of {col!r} must be a finite number, got {w!r}")
        s = _column(frame, col, "combine")
        if not (s.dtype.is_numeric() or s.dtype == pl.Boolean):
            raise CurateError(f"combine: column {col!r} is {s.dtype}, not a number")
        x = s.cast(pl.Float64).fill_nan(None)
        if normalize == "rank":
            m = x.count()
            z = (x.rank("average") - 1) / (m - 1) if m > 1 else x * 0 + 0.5
        elif normalize == "zscore":
            sd = x.std(ddof=0)
            z = (x - x.mean()) / sd if sd else x * 0.0
        else:
            lo, hi = x.min(), x.max()
            z = (x - lo) / (hi - lo) if hi is not None and hi > lo else x * 0 + 0.5
        total = total + float(w) * z
    return total.alias("combined")


@strategy("importance", columns=("weight",))
def importance(frame: pl.DataFrame, fill: Fill, *, weight: str = "dsir_weight",
               seed: int = 0) -> Ranking:
    """DSIR importance resampling: sample rows without replacement with probability
    proportional to exp(``weight``), where ``weight`` is a log importance weight
    (log p_target(x) - log p_raw(x)), by Gumbel top-k: key = weight + Gumbel noise
    (seeded from the ids, so independent of row order), highest keys first. Rows with
    a null weight go last."""
    w, _ = _values(frame, "importance", weight)
    return Ranking(_rank_order(frame, w.to_numpy() + gumbel(frame["id"], seed), True, seed))


@strategy("grape", columns=("by", "group"))
def grape(frame: pl.DataFrame, fill: Fill, *, by: str = "logprob_conditional",
          group: str = "prompt_id", seed: int = 0) -> Ranking:
    """GRAPE-style fit: among rows answering the same prompt (same ``group``), keep the
    one the target model finds most probable (highest ``by``, by default the mean
    log-probability under the chat template); ties go to a seeded order of ids.
    Rows whose ``by`` is null lose to any scored row. Under a budget, the winners
    with the highest ``by`` are kept."""
    for col in (by, group):
        _column(frame, col, "grape")
    ranked = (frame.select("id", by, group)
              .with_row_index("_i")
              .with_columns(_tie=seeded_order(frame["id"], seed),
                            _group=pl.coalesce(pl.col(group), pl.col("id")))
              .sort([by, "_tie"], descending=[True, False], nulls_last=True))
    winners = ranked.group_by("_group", maintain_order=True).agg(
        _winner=pl.col("id").first(), _wi=pl.col("_i").first(), _score=pl.col(by).first())
    order = (winners.sort(["_score"], descending=True, nulls_last=True, maintain_order=True)
             ["_wi"].to_numpy().astype(np.int64))
    rep = (frame.select("id", _group=pl.coalesce(pl.col(group), pl.col("id")))
           .join(winners.select("_group", "_winner"), on="_group", how="left",
                 maintain_order="left")["_winner"])
    lost = (rep != frame["id"]).to_numpy()
    reason = _strings([f"a more probable answer to the same prompt was kept (by {by})" if x
                       else None for x in lost])
    return Ranking(order, reason=reason,
                   representative=rep.zip_with(pl.Series(lost), pl.Series([None] * frame.height,
                                                                         dtype=pl.String)))


@strategy("deita", columns=("by",), embedding=True)
def deita(frame: pl.DataFrame, fill: Fill, *, by: str, threshold: float = 0.9, seed: int = 0,
          embedding: str = "embedding", block: int = 256) -> Ranking:
    """DEITA-style score-first, diversity-aware selection: walk rows by descending
    ``by`` (nulls last, ties by a seeded order) and keep a row only if its cosine
    similarity to every already kept row is at most ``threshold``. Exact: an
    incremental FAISS inner-product index over the kept rows (plus the similarities
    inside each block of ``block`` candidates, so a block is checked with one search).
    A row budget stops the walk when full; a token budget walks on until nothing more
    fits. Rows dropped for similarity name the most similar kept row as
    ``representative``. Cost: O(walked rows x kept rows x dim)."""
    import faiss

    x = _embeddings(frame, embedding, "deita")
    values, _ = _values(frame, "deita", by)
    order = _rank_order(frame, values, True, seed)
    n = frame.height
    ids = frame["id"].to_list()
    reason: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    rep: list[str | None] = [None] * n
    index = faiss.IndexFlatIP(x.shape[1])
    kept: list[int] = []  # frame rows in the index, in index order
    pos = 0
    while pos < n and not fill.full:
        blk = order[pos:pos + block]
        pos += len(blk)
        xb = x[blk]
        if index.ntotal:
            sim, who = index.search(xb, 1)
            best, best_row = sim[:, 0], np.asarray(kept, dtype=np.int64)[who[:, 0]]
        else:
            best, best_row = np.full(len(blk), -np.inf, dtype=np.float32), np.full(len(blk), -1)
        inner = xb @ xb.T
        mine: list[int] = []  # positions in the block kept so far
        for t, i in enumerate(blk):
            if fill.full:
                break
            s, r = float(best[t]), int(best_row[t])
            if mine:
                row = inner[t, mine]
                a = int(np.argmax(row))
                if row[a] > s:
                    s, r = float(row[a]), int(blk[mine[a]])
            if s > threshold:
                reason[i] = f"too similar to a kept row (cosine > {threshold})"
                detail[i] = f"cosine {s:.3f} to {ids[r]}"
                rep[i] = ids[r]
            elif fill.offer(int(i)):
                mine.append(t)
        if mine:
            index.add(xb[mine])
            kept.extend(int(blk[t]) for t in mine)
    return Ranking(None, reason=_strings(reason), representative=_strings(rep),
                   detail=_strings(detail))


@strategy("kmeans_quality", columns=("by",), embedding=True)
def kmeans_quality(frame: pl.DataFrame, fill: Fill, *, by: str, k: int | None = None,
                   temperature: float = 1.0, seed: int = 0, embedding: str = "embedding",
                   niter: int = 20) -> Ranking:
    """kMQ: spherical k-means (FAISS, seeded) over the embeddings into ``k`` clusters
    (default round(sqrt(rows)), at most 1000); the budget is spread over clusters in
    proportion to their size (largest remainder: a row budget is met exactly), and
    within a cluster rows are sampled without replacement with probability
    softmax(``by`` / ``temperature``) by Gumbel top-k (seeded from the ids; a small
    temperature approaches the top rows of each cluster). Rows with a null ``by`` go
    last in their cluster. Every row gets ``cluster`` = ``kmeans:<c>``."""
    import faiss

    x = _embeddings(frame, embedding, "kmeans_quality")
    values, _ = _values(frame, "kmeans_quality", by)
    n = frame.height
    if k is None:
        k = min(max(1, round(math.sqrt(n))), 1000)
    k = min(k, n)
    labels = np.zeros(n, dtype=np.int64)
    if k > 1:
        perm = np.argsort(_tie(frame, seed), kind="stable")  # row-order independent input
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, gpu=faiss.get_num_gpus() > 0)
        km.train(x[perm])
        _, a = km.index.search(x, 1)
        labels = a[:, 0].astype(np.int64)
    v = values.to_numpy()
    key = np.where(np.isnan(v), np.inf, -(v / temperature + gumbel(frame["id"], seed)))
    # rank inside a cluster: key, then the seeded order for null scores
    within = np.empty(n)
    within[np.lexsort((_tie(frame, seed), key))] = np.arange(n)
    _, dense = np.unique(labels, return_inverse=True)
    order, quota = spread(fill, np.arange(n), dense, within)
    cluster = pl.Series([f"kmeans:{c}" for c in labels], dtype=pl.String)
    detail = None
    if quota is not None:
        sizes = np.bincount(dense)
        detail = pl.Series([f"cluster kmeans:{c}: {quota[d]} of {sizes[d]} rows kept"
                            for c, d in zip(labels, dense)], dtype=pl.String)
    return Ranking(order, cluster=cluster, detail=detail)


@strategy("kcenter", columns=("by",), embedding=True)
def kcenter(frame: pl.DataFrame, fill: Fill, *, by: str | None = None, seed: int = 0,
            embedding: str = "embedding") -> Ranking:
    """k-center greedy (farthest-point) selection for pure diversity: start from the
    row with the highest ``by`` (if given) or a seeded random row, then repeatedly take
    the row farthest (cosine distance) from every row taken so far; ties go to the
    seeded order. Rows that do not fit a token budget are skipped. Cost: O(selected x
    rows x dim) time, O(rows) extra memory."""
    x = _embeddings(frame, embedding, "kcenter")
    n = frame.height
    tie = _tie(frame, seed)
    perm = np.argsort(tie, kind="stable")  # position -> row; argmax ties go to the seeded order
    if by is not None:
        values, _ = _values(frame, "kcenter", by)
        start = int(_rank_order(frame, values, True, seed)[0])
    else:
        start = int(perm[0])
    if fill.takes_all(np.arange(n)):
        return Ranking(np.concatenate([[start], perm[perm != start]]).astype(np.int64))
    xp = x[perm]
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[perm] = np.arange(n)
    mind = np.full(n, np.inf, dtype=np.float32)
    dist = np.empty(n, dtype=np.float32)
    cur = int(pos_of[start])
    while not fill.full:
        if fill.offer(int(perm[cur])):
            np.dot(xp, xp[cur], out=dist)
            np.subtract(1.0, dist, out=dist)
            np.minimum(mind, dist, out=mind)
        mind[cur] = -np.inf
        cur = int(np.argmax(mind))
        if mind[cur] == -np.inf:
            break
    return Ranking(None)


@strategy("facility_location", embedding=True)
def facility_location(frame: pl.DataFrame, fill: Fill, *, seed: int = 0,
                      embedding: str = "embedding", block: int = 2048) -> Ranking:
    """Facility location: greedily maximise f(S) = sum_i max_{j in S} max(0, cos(i, j))
    (how well the selection S covers every row); ties go to the seeded order, rows
    that do not fit a token budget are skipped.

    Exact greedy, evaluated lazily (Minoux): gains only shrink as S grows, so a
    candidate whose gain was computed against the current S and still tops every
    other (older, upper-bound) gain is the true best. Stale candidates at the top
    are re-evaluated 32 at a time with one matrix product. Cost: the first gains
    take one pass over all pairs in blocks of ``block`` rows (O(rows^2 x dim) time,
    O(block x rows) memory); each later evaluation is O(rows x dim), and the number of
    evaluations per selected row ranges from a few (clustered data) to a few hundred
    (near-orthogonal data); worst case O(selected x rows^2 x dim). Tens of thousands
    of rows take seconds to minutes on a CPU."""
    x = _embeddings(frame, embedding, "facility_location")
    n = frame.height
    perm = np.argsort(_tie(frame, seed), kind="stable")  # position -> row; ties: lower position
    if fill.takes_all(np.arange(n)):
        return Ranking(perm.astype(np.int64))
    xp = x[perm]
    gains = np.zeros(n, dtype=np.float64)
    for b in range(0, n, block):
        gains += np.maximum(xp[b:b + block] @ xp.T, 0).sum(axis=0, dtype=np.float64)
    cover = np.zeros(n, dtype=np.float32)
    stamp = 0  # how many rows S holds; an entry's gain is exact when its stamp equals it
    heap = [(-g, j, 0) for j, g in enumerate(gains.tolist())]
    heapq.heapify(heap)
    while heap and not fill.full:
        if heap[0][2] == stamp:
            _, j, _ = heapq.heappop(heap)
            if fill.offer(int(perm[j])):
                np.maximum(cover, xp @ xp[j], out=cover)
                stamp += 1
            continue
        batch = [heapq.heappop(heap)[1] for _ in range(min(32, len(heap)))]
        fresh = np.maximum(xp @ xp[batch].T - cover[:, None], 0).sum(axis=0, dtype=np.float64)
        for g, j in zip(fresh.tolist(), batch):
            heapq.heappush(heap, (-g, j, stamp))
    return Ranking(None)


def facility_objective(embeddings: np.ndarray, chosen: np.ndarray) -> float:
    """f(S) = sum_i max_{j in S} max(0, cos(i, j)) for rows ``chosen`` of ``embeddings``
    (L2-normalised), the quantity ``facility_location`` maximises greedily."""
    if not len(chosen):
        return 0.0
    return float(np.maximum(embeddings @ embeddings[chosen].T, 0).max(axis=1).sum())
