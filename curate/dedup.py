"""Dedup decisions: exact, MinHash-LSH near-duplicates and semantic duplicates.

Each works on the compact frame of alive rows (id, order, signature or hash or
embedding columns written by a scorer), finds clusters of duplicates and keeps
one row per cluster by a rule: ``first`` (earliest in the input), ``longest``,
or the highest value of any score column. Dropped rows carry the cluster and
the id of the kept ``representative``.

MinHash clusters are stars, not connected components: walking rows in keep
order, a row not yet taken becomes a representative and takes every not yet
taken row it is directly similar to, so every dropped row is itself within the
threshold of the row it names (no chains A~B~C that drop C for A).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from curate.errors import CurateError
from curate.selection import Decision
from curate.spill import Lists

if TYPE_CHECKING:
    from curate.decisions import GroupMap


# --- LSH parameters -----------------------------------------------------------------

def candidate_probability(s: np.ndarray | float, bands: int, rows: int):
    """P(two rows with Jaccard ``s`` share at least one band)."""
    return 1 - (1 - np.power(s, rows)) ** bands


def _area(f, lo: float, hi: float, n: int = 201) -> float:
    x = np.linspace(lo, hi, n)
    return float(np.trapezoid(f(x), x)) if hasattr(np, "trapezoid") else float(np.trapz(f(x), x))


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5,
                 fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm minimising the weighted areas of
    false positives (below the threshold) and false negatives (above it)."""
    check_threshold(threshold)
    best, opt = float("inf"), (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _area(lambda s: candidate_probability(s, b, r), 0.0, threshold)
            fn = _area(lambda s: 1 - candidate_probability(s, b, r), threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if err < best:
                best, opt = err, (b, r)
    return opt


def tradeoff(threshold: float, bands: int, rows: int) -> str:
    """One line on what (bands, rows) means for candidates around the threshold."""
    pts = [max(0.0, threshold - 0.2), threshold - 0.1, threshold, min(1.0, threshold + 0.1)]
    probs = ", ".join(f"J={s:.2f}: {candidate_probability(s, bands, rows):.3f}" for s in pts)
    fp = _area(lambda s: candidate_probability(s, bands, rows), 0.0, threshold)
    fn = _area(lambda s: 1 - candidate_probability(s, bands, rows), threshold, 1.0)
    return (f"{bands} bands x {rows} rows: P(candidate) {probs}; false-positive area {fp:.4f}, "
            f"false-negative area {fn:.4f}")


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise CurateError(f"threshold must be in (0, 1], got {threshold!r}")


# --- clusters --------------------------------------------------------------------------

def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of an edge list (scipy's csgraph): a label per node, the
    smallest node of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    graph = coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


#: ``check(edges)``: which of these candidate edges (indexes into the edge list) are real.
EdgeCheck = Callable[[np.ndarray], np.ndarray]


def star_clusters(n: int, u: np.ndarray, v: np.ndarray, rank: np.ndarray,
                  max_rounds: int = 64, check: EdgeCheck | None = None) -> np.ndarray:
    """Greedy star clustering in keep order over the edge list (u, v).

    The result is what this walk gives: visit nodes best ``rank`` first; a node
    not yet assigned becomes a representative and claims every not yet assigned
    neighbour. Returns, per node, the index of its representative (itself for a
    representative or a node without edges); a claimed node points at its
    best-ranked representative neighbour, so it is always directly joined to it.

    With ``check`` the edges are candidates, and only the ones the walk needs are
    checked (a batch at a time): edges from a representative to a node not yet
    assigned, and at the end those that could give a claimed node a better-ranked
    representative. An edge between two claimed nodes is never checked, so in a
    family of near-copies most pairs are not. The result is the walk over the real
    edges, as if every edge had been checked first.

    Computed in rounds over numpy edge arrays (representatives are the
    lexicographically first maximal independent set in rank order): each round
    claims the undecided nodes that have a representative neighbour, then makes
    representatives of the undecided nodes with no better-ranked undecided
    neighbour (over the real and the unchecked edges). Long chains would need many
    rounds, so after ``max_rounds`` the rest is walked node by node."""
    rep = np.arange(n, dtype=np.int64)
    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    keep = np.flatnonzero(u != v)
    u, v = u[keep], v[keep]
    if len(u) == 0:
        return rep
    present = np.zeros(n, dtype=bool)
    present[u] = present[v] = True
    nodes = np.flatnonzero(present)  # the nodes with edges, numbered 0..m-1 (int32: memory)
    m = len(nodes)
    local = (np.cumsum(present) - 1).astype(np.int32)
    lu, lv = local[u], local[v]
    del present, local, u, v
    r = rank[nodes]
    # orient every edge from the better-ranked node (a) to the worse (b)
    swap = r[lu] > r[lv]
    a, b = np.where(swap, lv, lu), np.where(swap, lu, lv)
    del lu, lv, swap
    real = np.ones(len(a), dtype=np.int8) if check is None else np.zeros(len(a), dtype=np.int8)

    def checked(want: np.ndarray) -> np.ndarray:
        """Check the unchecked edges among ``want`` (indexes); the real ones of them."""
        todo = want[real[want] == 0]
        if len(todo):
            real[todo] = np.where(check(keep[todo]), 1, -1)
        return want[real[want] == 1]

    def claim(want: np.ndarray) -> None:
        state[b[checked(want)]] = 2

    state = np.zeros(m, dtype=np.int8)  # 0 undecided, 1 representative, 2 claimed

    for _ in range(max_rounds):
        claim(np.flatnonzero((state[a] == 1) & (state[b] == 0)))
        live = (state[a] == 0) & (state[b] == 0) & (real >= 0)
        blocked = np.zeros(m, dtype=bool)
        blocked[b[live]] = True  # a better-ranked undecided neighbour may still claim it
        state[(state == 0) & ~blocked] = 1
        if not (state == 0).any():
            break
    else:
        claim(np.flatnonzero((state[a] == 1) & (state[b] == 0)))
        order = np.argsort(a, kind="stable")
        start = np.searchsorted(a[order], np.arange(m + 1))
        for x in np.flatnonzero(state == 0)[np.argsort(r[state == 0], kind="stable")]:
            if state[x] == 0:
                state[x] = 1
                out = order[start[x]:start[x + 1]]
                claim(out[state[b[out]] == 0])
    # a claimed node goes to its best-ranked representative neighbour: check the edges
    # from representatives better than the best one it has a real edge to
    while True:
        hit = (state[a] == 1) & (state[b] == 2) & (real == 1)
        best = np.full(m, np.iinfo(np.int64).max)
        np.minimum.at(best, b[hit], r[a[hit]])
        want = np.flatnonzero((state[a] == 1) & (state[b] == 2) & (real == 0) & (r[a] < best[b]))
        if not len(want):
            break
        checked(want)
    hit = (state[a] == 1) & (state[b] == 2) & (real == 1)
    ha, hb = a[hit], b[hit]
    order = np.lexsort((r[ha], hb))
    first = np.unique(hb[order], return_index=True)[1]
    rep[nodes[hb[order][first]]] = nodes[ha[order][first]]
    return rep


LENGTH_COLUMNS = ("minhash_chars", "exact_chars", "text_stats_chars")


def priority(frame: pl.DataFrame, keep: str) -> np.ndarray:
    """Rank of each row under the keep rule (0 = kept first): ``first`` (input order),
    ``longest`` (most characters), or a score column (highest value)."""
    if keep == "first":
        keys, desc = ["_order"], [False]
    elif keep == "longest":
        length = next((c for c in LENGTH_COLUMNS if c in frame.columns), None)
        if length is None:
            raise CurateError("keep='longest' needs a length column: add .score('text_stats') first")
        keys, desc = [length, "_order"], [True, False]
    elif keep in frame.columns:
        keys, desc = [keep, "_order"], [True, False]
    else:
        raise CurateError(f"keep must be 'first', 'longest' or a score column; no column {keep!r} "
                          f"(available: {', '.join(c for c in frame.columns if not c.startswith('_'))})")
    order = frame.with_row_index("_i").sort(keys, descending=desc, nulls_last=True)["_i"].to_numpy()
    rank = np.empty(frame.height, dtype=np.int64)
    rank[order] = np.arange(frame.height)
    return rank


def decide(frame: pl.DataFrame, labels: np.ndarray, rank: np.ndarray, method: str,
           reason: str, detail: pl.Series | None = None) -> Decision:
    """Keep the best-ranked row of each cluster (label); the rest point at it."""
    df = pl.DataFrame({"_label": labels, "_rank": rank, "id": frame["id"]})
    best = df.sort("_rank").group_by("_label", maintain_order=True).agg(
        rep=pl.col("id").first(), size=pl.len())
    df = df.join(best, on="_label", how="left", maintain_order="left")
    keep = (df["id"] == df["rep"])
    in_cluster = df["size"] > 1
    cluster = pl.when(in_cluster).then(pl.lit(f"{method}:") + df["rep"]).otherwise(None)
    return Decision(keep=keep, reason=pl.repeat(reason, frame.height, dtype=pl.String, eager=True),
                    representative=df["rep"].zip_with(~keep, pl.repeat(None, frame.height, dtype=pl.String,
                                                                      eager=True)),
                    cluster=df.select(cluster.alias("c"))["c"], detail=detail)


# --- methods ---------------------------------------------------------------------------

def exact(frame: pl.DataFrame, keep: str = "first") -> Decision:
    """Rows with the same normalised-text hash; empty texts (null hash) stay apart."""
    df = frame.select("exact_hash").with_row_index("_i")
    first = df.drop_nulls().group_by("exact_hash").agg(_l=pl.col("_i").min())
    labels = (df.join(first, on="exact_hash", how="left", maintain_order="left")
              .select(pl.coalesce("_l", "_i"))).to_series().to_numpy().astype(np.int64)
    return decide(frame, labels, priority(frame, keep), "exact", "exact duplicate")


#: A row averaging more characters than this per whitespace-separated word has (almost)
#: no spaces: Chinese, Japanese, Thai... Real English, code and markup average 5-7.
NO_SPACE_CHARS_PER_WORD = 15
#: Warn about word shingles when at least this share of the rows has no spaces.
NO_SPACE_SHARE = 0.25


def no_space_share(frame: pl.DataFrame, ngram: int) -> float:
    """Share of the rows (of 20+ characters) that look like text without spaces, judged
    from the scorer's ``minhash_chars`` and word ``minhash_shingles`` counts (a text of
    w > n words has w - n + 1 word n-grams; one of at most n words has one)."""
    if "minhash_chars" not in frame.columns or "minhash_shingles" not in frame.columns:
        return 0.0
    df = frame.select(c=pl.col("minhash_chars"), s=pl.col("minhash_shingles")).filter(pl.col("c") >= 20)
    if df.height == 0:
        return 0.0
    words = pl.when(pl.col("s") > 1).then(pl.col("s") + ngram - 1).otherwise(ngram)
    return float(df.select(((pl.col("c") / words) > NO_SPACE_CHARS_PER_WORD).mean()).item())


def check_shingles(frame: pl.DataFrame, shingle: str, ngram: int) -> str | None:
    """A warning (also emitted with ``warnings.warn``) when word shingles are used on
    text that mostly has no spaces; None otherwise."""
    if shingle != "word":
        return None
    share = no_space_share(frame, ngram)
    if share < NO_SPACE_SHARE:
        return None
    msg = (f"minhash: {share:.0%} of the rows have (almost) no spaces (more than "
           f"{NO_SPACE_CHARS_PER_WORD} characters per word, e.g. Chinese or Japanese); word "
           f"{ngram}-grams see few tokens there and miss near-duplicates: use --shingle char "
           f"(shingle='char')")
    warnings.warn(msg, UserWarning, stacklevel=3)
    return msg


def band_keys(frame: pl.DataFrame) -> pa.Table:
    """One row per (row index, LSH band): ``row``, ``band`` and the band's ``hash``."""
    idx = frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "minhash_bands")
    return (idx.drop_nulls("minhash_bands")
            .with_columns(band=pl.int_ranges(pl.col("minhash_bands").list.len(), dtype=pl.Int32))
            .explode(["minhash_bands", "band"]).rename({"minhash_bands": "hash"})
            .select("row", "band", "hash").to_arrow())


def bucket_pairs(keys: pa.Table, max_bucket_pairs: int = 20) -> pa.Table:
    """Candidate pairs ``a`` < ``b`` of the rows in ``keys`` (``band_keys``) that share a
    band hash: every pair within a bucket of at most ``max_bucket_pairs`` rows, and each
    row of a larger bucket joined to its first row (so a family of n near-copies gives
    O(n) pairs per band, not O(n^2)). Made one band at a time, which bounds the joins'
    memory by one band's rows."""
    out = [_band_pairs(df, max_bucket_pairs) for df in pl.from_arrow(keys).partition_by("band")]
    schema = {"a": pl.Int64, "b": pl.Int64}
    return pl.concat(out).unique().to_arrow() if out else pl.DataFrame(schema=schema).to_arrow()


def _band_pairs(df: pl.DataFrame, max_bucket_pairs: int) -> pl.DataFrame:
    """``bucket_pairs`` of one band's ``row`` and ``hash``."""
    df = df.join(df.group_by("hash").agg(k=pl.len(), first=pl.col("row").min())
                 .filter(pl.col("k") > 1), on="hash")
    small = df.filter(pl.col("k") <= max_bucket_pairs).select("row", "hash")
    return pl.concat([
        small.join(small, on="hash", suffix="_b").filter(pl.col("row") < pl.col("row_b"))
        .select(a="row", b="row_b"),
        df.filter((pl.col("k") > max_bucket_pairs) & (pl.col("row") != pl.col("first")))
        .select(a="first", b="row")])


def _pairs(frame: pl.DataFrame, max_bucket_pairs: int, map_groups: GroupMap | None = None
           ) -> np.ndarray:
    """Candidate pairs (i < j, row indexes, sorted): rows sharing a band hash, grouped by
    hash with ``map_groups`` (a distributed engine's), or in this process one band at a
    time, the pairs made unique as they come (memory: one band's keys and the pairs)."""
    if map_groups is not None:
        pairs = pl.from_arrow(map_groups(band_keys(frame), "hash",
                                         partial(bucket_pairs, max_bucket_pairs=max_bucket_pairs)))
        pairs = pairs.unique().sort("a", "b")
        return np.column_stack([pairs["a"].to_numpy(), pairs["b"].to_numpy()]).astype(np.int64).reshape(-1, 2)
    n = frame.height
    bands = frame.select(pl.col("minhash_bands").list.len().max()).item() or 0
    keys = [pl.Series("k", [], dtype=pl.Int64)]  # pair (a, b) as a * n + b
    for band in range(bands):
        rows = frame.select(row=pl.int_range(pl.len(), dtype=pl.Int64),
                            hash=pl.col("minhash_bands").list.get(band, null_on_oob=True)
                            ).drop_nulls("hash")
        keys.append(_band_pairs(rows, max_bucket_pairs).select(k=pl.col("a") * n + pl.col("b"))["k"])
        if len(keys) > 4:  # most pairs repeat in several bands: keep them unique
            keys = [pl.concat(keys).unique()]
    key = pl.concat(keys).unique().sort().to_numpy()
    del keys
    edges = np.empty((len(key), 2), dtype=np.int64)
    np.floor_divide(key, max(n, 1), out=edges[:, 0])
    np.remainder(key, max(n, 1), out=edges[:, 1])
    return edges


#: Candidate pairs verified at a time, and shingles looked up at a time (the smaller row's
#: of each pair): what verification holds in memory (about 40 bytes a shingle looked up).
VERIFY_PAIRS = 100_000
VERIFY_SHINGLES = 5_000_000
#: Seconds between progress lines of a long verification.
SAY_EVERY = 5.0


def shared_shingles(edges: np.ndarray, nodes: np.ndarray, values: np.ndarray, sizes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per edge (rows a, b), the sizes of the intersection and the union of the two
    rows' shingle sets. ``nodes`` are the sorted rows in ``edges``; ``values`` and
    ``sizes`` their sets (``curate.text.shingle_sets``: ascending 32-bit hashes, node
    after node). The keys ``node << 32 | value`` are then ascending, so each shingle of
    the smaller row of an edge is one binary search among the keys of the other."""
    values = np.asarray(values, dtype=np.uint64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(values):
        zero = np.zeros(len(edges), dtype=np.int64)
        return zero, zero.copy()
    start = np.concatenate([[0], np.cumsum(sizes)])
    keys = (np.repeat(np.arange(len(nodes), dtype=np.uint64), sizes) << np.uint64(32)) | values
    a, b = np.searchsorted(nodes, edges[:, 0]), np.searchsorted(nodes, edges[:, 1])
    a, b = np.where(sizes[a] <= sizes[b], a, b), np.where(sizes[a] <= sizes[b], b, a)
    per = sizes[a]  # the smaller row's shingles, each looked up among the other's
    edge_of = np.repeat(np.arange(len(edges), dtype=np.int64), per)
    at = np.repeat(start[a] - (np.cumsum(per) - per), per)
    at += np.arange(len(edge_of))
    probe = values[at]
    del at
    probe |= (b.astype(np.uint64) << np.uint64(32))[edge_of]
    pos = np.searchsorted(keys, probe)
    np.minimum(pos, len(keys) - 1, out=pos)
    hit = keys[pos] == probe
    inter = np.bincount(edge_of[hit], minlength=len(edges)).astype(np.int64)
    return inter, sizes[a] + sizes[b] - inter


def _estimates(frame: pl.DataFrame, edges: np.ndarray) -> tuple[np.ndarray, str]:
    """Per edge, the Jaccard estimated from the rows' 8-bit MinHash sketches (or, for
    scores without sketches, the share of equal LSH band hashes) and how it was had."""
    nodes, inv = np.unique(edges, return_inverse=True)
    inv = inv.reshape(edges.shape)
    if "minhash_sketch" in frame.columns:
        from scorers.minhash import sketch_jaccard

        raw = frame["minhash_sketch"].gather(nodes).to_list()
        mat = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(nodes), -1)
        return sketch_jaccard(mat[inv[:, 0]], mat[inv[:, 1]]), f"{mat.shape[1]} permutations"
    bands = frame["minhash_bands"].gather(nodes)
    mat = np.array(bands.to_list(), dtype=np.uint64).reshape(len(nodes), -1)
    return (mat[inv[:, 0]] == mat[inv[:, 1]]).mean(axis=1), f"share of {mat.shape[1]} LSH bands equal"


def minhash(frame: pl.DataFrame, *, threshold: float, keep: str = "first", verify: bool = True,
            sets: Lists | None = None, ngram: int = 5, shingle: str = "word", max_bucket_pairs: int = 20,
            map_groups: GroupMap | None = None, say: Callable[[str], None] | None = None
            ) -> Decision:
    """Near-duplicates: rows sharing an LSH band are candidates; with ``verify`` only
    candidate pairs whose exact Jaccard of shingles is >= ``threshold`` are joined,
    counted from the rows' shingle sets (``sets``, or the frame's ``minhash_set``
    column: what the scorer writes there).

    Clusters are stars in keep order (``star_clusters``), so every dropped row is
    joined directly to its kept representative: with ``verify`` their exact Jaccard
    is >= ``threshold`` and is written to the row's ``detail``. Without ``verify``
    every candidate pair is taken as a duplicate and ``detail`` gives the Jaccard
    estimated from the two rows' MinHash signatures (``minhash_sketch``)."""
    check_threshold(threshold)
    check_shingles(frame, shingle, ngram)
    n = frame.height
    edges = _pairs(frame, max_bucket_pairs, map_groups)
    facts = {"candidate_pairs": len(edges)}
    how = ""
    rank = priority(frame, keep)
    sim = np.full(len(edges), np.nan)
    if verify and len(edges):
        if sets is None and "minhash_set" in frame.columns:
            sets = Lists.from_arrow(frame["minhash_set"].to_arrow())
        if sets is None:
            raise CurateError("minhash verification needs the rows' shingle sets (minhash_set)")
        begun, done, told = time.monotonic(), [0, 0], [time.monotonic()]
        size = sets.sizes

        def check(which: np.ndarray) -> np.ndarray:
            """Exact Jaccard of these candidate pairs, a block at a time (bounded memory:
            at most VERIFY_PAIRS pairs and VERIFY_SHINGLES shingles looked up). Pairs
            whose set sizes alone rule it out (J <= min / max < threshold) are not
            looked up."""
            ok = np.zeros(len(which), dtype=bool)
            sa, sb = size[edges[which, 0]], size[edges[which, 1]]
            small, large = np.minimum(sa, sb), np.maximum(sa, sb)
            can = np.flatnonzero((small >= threshold * large) & (large > 0))
            done[0] += len(which) - len(can)
            done[1] += len(which) - len(can)
            cost = np.cumsum(small[can] + 1)
            lo = 0
            while lo < len(can):
                below = int(np.searchsorted(cost, (cost[lo - 1] if lo else 0) + VERIFY_SHINGLES))
                take = can[lo:max(lo + 1, min(lo + VERIFY_PAIRS, below))]
                part = which[take]
                block = edges[part]
                nodes = np.unique(block)
                inter, union = shared_shingles(block, nodes, *sets.take(nodes))
                good = (inter >= threshold * union) & (union > 0)
                sim[part] = inter / np.maximum(union, 1)
                ok[take] = good
                done[0] += len(part)
                done[1] += int((~good).sum())
                lo += len(take)
                if say and len(take) < len(which) and time.monotonic() - told[0] >= SAY_EVERY:
                    told[0] = time.monotonic()
                    say(f"dedup minhash: verified {done[0]:,} candidate pairs of at most "
                        f"{len(edges):,} ({told[0] - begun:.0f} s)")
            return ok

        rep = star_clusters(n, edges[:, 0], edges[:, 1], rank, check=check)
        facts["verified_pairs"], facts["removed_by_verification"] = done
    elif len(edges):
        sim, how = _estimates(frame, edges)
        rep = star_clusters(n, edges[:, 0], edges[:, 1], rank)
    else:
        rep = np.arange(n, dtype=np.int64)
    # the edge that joins each dropped row to its representative (edges are i < j, sorted)
    dropped = np.flatnonzero(rep != np.arange(n))
    key = edges[:, 0] * n + edges[:, 1]
    edge = np.searchsorted(key, np.minimum(dropped, rep[dropped]) * n
                           + np.maximum(dropped, rep[dropped]))
    del key
    to = frame["id"].gather(rep[dropped]).to_list()
    if verify:
        reason = f"near-duplicate (MinHash, Jaccard >= {threshold}, verified)"
        said = [f"jaccard {j:.3f} to {r}" for j, r in zip(sim[edge].tolist(), to)]
    else:
        reason = f"near-duplicate (MinHash LSH candidate, threshold {threshold}, not verified)"
        said = [f"estimated jaccard {j:.3f} to {r} (from MinHash signatures, {how}; not verified)"
                for j, r in zip(sim[edge].tolist(), to)]
    detail = pl.repeat(None, n, dtype=pl.String, eager=True).alias("detail")
    if len(dropped):
        detail = detail.scatter(dropped, pl.Series(said, dtype=pl.String))
    out = decide(frame, rep, rank, "minhash", reason, detail)
    out.facts.update(facts)
    return out


def semantic(frame: pl.DataFrame, *, eps: float = 0.05, keep: str = "first",
             n_clusters: int | None = None, seed: int = 0) -> Decision:
    """SemDeDup: k-means over embeddings (FAISS), then within each cluster a row is a
    duplicate of a better-ranked kept row when their cosine similarity > 1 - eps."""
    import faiss

    if not 0 < eps < 1:
        raise CurateError(f"eps must be in (0, 1), got {eps!r}")
    n = frame.height
    rank = priority(frame, keep)
    has = frame["embedding"].is_not_null().to_numpy()
    vecs = np.zeros((n, 0), dtype=np.float32)
    if has.any():
        vecs = np.stack(frame["embedding"].filter(frame["embedding"].is_not_null()).to_numpy()).astype(np.float32)
    rows = np.flatnonzero(has)
    k = n_clusters or max(1, int(round(np.sqrt(len(rows)))))
    k = min(k, len(rows)) if len(rows) else 1
    assign = np.zeros(len(rows), dtype=np.int64)
    if len(rows) > k > 1:
        km = faiss.Kmeans(vecs.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
                          gpu=faiss.get_num_gpus() > 0)
        km.train(vecs)
        _, a = km.index.search(vecs, 1)
        assign = a[:, 0]
    labels = np.arange(n, dtype=np.int64)
    for c in np.unique(assign):
        members = rows[assign == c]
        members = members[np.argsort(rank[members])]
        mv = vecs[np.searchsorted(rows, members)]
        sims = mv @ mv.T
        kept: list[int] = []
        for j, m in enumerate(members):
            dup = next((kept_j for kept_j in kept if sims[j, kept_j] > 1 - eps), None)
            if dup is None:
                kept.append(j)
            else:
                labels[m] = labels[members[dup]]
    reason = f"semantic duplicate (cosine > {1 - eps:.3f})"
    return decide(frame, labels, rank, "semantic", reason)
