"""Dedup decisions: exact, MinHash-LSH near-duplicates and semantic duplicates.

Each works on the compact frame of alive rows (id, order, signature or hash or
embedding columns written by a scorer), finds clusters of duplicates and keeps
one row per cluster by a rule: ``first`` (earliest in the input), ``longest``,
or the highest value of any score column. Dropped rows carry the cluster and
the id of the kept ``representative``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.selection import Decision
from curate.text import shingles


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
    """Connected components of an edge list by min-label propagation with pointer
    jumping (arrays only, no per-node Python objects). Returns a label per node."""
    label = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return label
    while True:
        m = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        while True:  # pointer jumping: follow labels to their roots
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


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
           reason: str) -> Decision:
    """Keep the best-ranked row of each cluster (label); the rest point at it."""
    df = pl.DataFrame({"_label": labels, "_rank": rank, "id": frame["id"]})
    best = df.sort("_rank").group_by("_label", maintain_order=True).agg(
        rep=pl.col("id").first(), size=pl.len())
    df = df.join(best, on="_label", how="left", maintain_order="left")
    keep = (df["id"] == df["rep"])
    in_cluster = df["size"] > 1
    cluster = pl.when(in_cluster).then(pl.lit(f"{method}:") + df["rep"]).otherwise(None)
    return Decision(keep=keep, reason=pl.Series([reason] * frame.height),
                    representative=df["rep"].zip_with(~keep, pl.Series([None] * frame.height,
                                                                      dtype=pl.String)),
                    cluster=df.select(cluster.alias("c"))["c"])


# --- methods ---------------------------------------------------------------------------

def exact(frame: pl.DataFrame, keep: str = "first") -> Decision:
    """Rows with the same normalised-text hash; empty texts (null hash) stay apart."""
    df = frame.select("exact_hash").with_row_index("_i")
    first = df.drop_nulls().group_by("exact_hash").agg(_l=pl.col("_i").min())
    labels = (df.join(first, on="exact_hash", how="left", maintain_order="left")
              .select(pl.coalesce("_l", "_i"))).to_series().to_numpy().astype(np.int64)
    return decide(frame, labels, priority(frame, keep), "exact", "exact duplicate")


def minhash(frame: pl.DataFrame, *, threshold: float, keep: str = "first", verify: bool = True,
            texts: Callable[[list[str]], dict[str, str]] | None = None, ngram: int = 5,
            shingle: str = "word", max_bucket_pairs: int = 50) -> Decision:
    """Near-duplicates: rows sharing an LSH band are candidates; with ``verify`` only
    candidate pairs whose exact Jaccard of shingles is >= ``threshold`` connect."""
    check_threshold(threshold)
    n = frame.height
    idx = frame.select(pl.int_range(pl.len()).alias("_n"), "minhash_bands")
    exploded = (idx.drop_nulls("minhash_bands")
                .with_columns(_band=pl.int_ranges(pl.col("minhash_bands").list.len()))
                .explode(["minhash_bands", "_band"]))
    buckets = (exploded.group_by(["_band", "minhash_bands"])
               .agg(pl.col("_n").sort()).filter(pl.col("_n").list.len() > 1)["_n"].to_list())
    pairs = set()
    for members in buckets:
        if len(members) <= max_bucket_pairs:
            pairs.update((members[i], members[j]) for i in range(len(members))
                         for j in range(i + 1, len(members)))
        else:  # a huge bucket: connect everyone to its first member
            pairs.update((members[0], m) for m in members[1:])
    edges = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    if verify and len(edges):
        if texts is None:
            raise CurateError("minhash verification needs the row texts")
        nodes = np.unique(edges)
        ids = frame["id"].to_numpy()
        got = texts([ids[i] for i in nodes])
        sets = {i: set(shingles(got[ids[i]], ngram, shingle)) for i in nodes}
        ok = [len(sets[a] & sets[b]) >= threshold * len(sets[a] | sets[b]) > 0 for a, b in edges]
        edges = edges[np.array(ok, dtype=bool)]
    labels = components(n, edges[:, 0], edges[:, 1])
    reason = f"near-duplicate (minhash, Jaccard >= {threshold}{', verified' if verify else ''})"
    return decide(frame, labels, priority(frame, keep), "minhash", reason)


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
