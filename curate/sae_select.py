"""Selection by SAE features (columns written by ``.score("sae", ...)``), and the
feature-coverage figures the report shows.

- ``sae_target``: highest ``sae_target_similarity`` first (ties by the seeded order);
- ``sae_coverage``: greedy coverage of distinct features: each pick is the row whose
  stored top features include the most features not yet covered, where a feature
  counts as covered once ``cap`` picked rows have it (``cap=1``: pure distinct
  coverage; a larger cap lets a common feature be picked again, but never more than
  ``cap`` times). When every remaining row's gain is 0 the counts start over.
  Lazy greedy (gains only shrink), ties by the seeded order; rows that do not fit a
  token budget are skipped.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.budget import Fill, Ranking
from curate.strategies import seeded_order, strategy

IDS = "sae_feature_ids"
SIM = "sae_target_similarity"


def _need(frame: pl.DataFrame, col: str, who: str) -> pl.Series:
    if col not in frame.columns:
        raise CurateError(f"{who} needs column {col!r}: add .score(\"sae\", sae=SAE_DIR"
                          f"{', target=FILE' if col == SIM else ''}) before .select(\"{who}\")")
    return frame[col]


@strategy("sae_target", columns=("by",))
def sae_target(frame: pl.DataFrame, fill: Fill, *, by: str = SIM, seed: int = 0) -> Ranking:
    """Rows most similar to the target task's SAE feature prototype first (nulls last)."""
    v = _need(frame, by, "sae_target")
    if not v.dtype.is_numeric():
        raise CurateError(f"sae_target: {by!r} is {v.dtype}, not a number")
    if frame.height and v.null_count() == frame.height:
        raise CurateError(f"sae_target: {by!r} is null for every row: score sae with target=FILE")
    df = pl.DataFrame({"_v": v.cast(pl.Float64).fill_nan(None),
                       "_t": seeded_order(frame["id"], seed)}).with_row_index("_i")
    order = df.sort(["_v", "_t"], descending=[True, False], nulls_last=True)["_i"]
    return Ranking(order.to_numpy().astype(np.int64))


@strategy("sae_coverage", columns=("features",))
def sae_coverage(frame: pl.DataFrame, fill: Fill, *, features: str = IDS, cap: int = 1,
                 seed: int = 0) -> Ranking:
    """Greedy coverage of distinct SAE features, each feature counted at most ``cap``
    times (see the module doc)."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise CurateError(f"sae_coverage: cap must be a positive integer, got {cap!r}")
    sets = [np.unique(np.asarray(f if f is not None else [], dtype=np.int64))
            for f in _need(frame, features, "sae_coverage").to_list()]
    n = frame.height
    tie = seeded_order(frame["id"], seed).to_numpy()
    if fill.takes_all(np.arange(n)):
        return Ranking(np.argsort(tie, kind="stable").astype(np.int64))
    width = int(max((s.max() for s in sets if len(s)), default=-1)) + 1
    count = np.zeros(max(width, 1), dtype=np.int64)
    taken = np.zeros(n, dtype=bool)

    def gain(i: int) -> int:
        return int((count[sets[i]] < cap).sum())

    heap = [(-len(s), int(tie[i]), i) for i, s in enumerate(sets)]
    heapq.heapify(heap)
    while heap and not fill.full:
        neg, t, i = heapq.heappop(heap)
        g = gain(i)
        if g < -neg:  # stale: push back with its current gain
            heapq.heappush(heap, (-g, t, i))
            continue
        if g == 0 and count.any():  # everything left is covered: start a new round
            count[:] = 0
            heap.append((neg, t, i))
            heap = [(-gain(j), int(tie[j]), j) for _, _, j in heap if not taken[j]]
            heapq.heapify(heap)
            continue
        if fill.offer(i):
            taken[i] = True
            count[sets[i]] += 1
    return Ranking(None)


def coverage(frame: pl.DataFrame, keep: pl.Series | np.ndarray, features: str = IDS
             ) -> dict[str, Any] | None:
    """Distinct features covered by the kept rows and by the others (from each row's
    stored top features); None when the frame has no SAE features."""
    if features not in frame.columns:
        return None
    keep = np.asarray(keep, dtype=bool)
    lists = frame[features].to_list()

    def features_of(mask: np.ndarray) -> set[int]:
        return {int(f) for lst, m in zip(lists, mask) if m for f in (lst or [])}

    def stats(mask: np.ndarray) -> dict[str, Any]:
        per_row = [len(lst or []) for lst, m in zip(lists, mask) if m]
        return {"rows": len(per_row), "distinct_features": len(features_of(mask)),
                "features_per_row": float(np.mean(per_row)) if per_row else 0.0}

    sel, rej = stats(keep), stats(~keep)
    every = len(features_of(np.ones(len(keep), dtype=bool)))
    return {"selected": sel, "rejected": rej, "all_distinct_features": every,
            "selected_share": sel["distinct_features"] / every if every else 0.0,
            "only_in_rejected": len(features_of(~keep) - features_of(keep))}


def coverage_html(frame: pl.DataFrame, keep: pl.Series | np.ndarray) -> str:
    """The report's section on SAE feature coverage ('' when the run has no SAE scores)."""
    c = coverage(frame, keep)
    if c is None:
        return ""
    s, r = c["selected"], c["rejected"]
    return ("<p>Distinct SAE features among the rows' stored top features "
            "(<code>sae_feature_ids</code>).</p>\n<table>\n"
            "<tr><th></th><th>rows</th><th>distinct features</th><th>top features per row</th></tr>\n"
            f"<tr><td>selected</td><td>{s['rows']:,}</td><td>{s['distinct_features']:,}</td>"
            f"<td>{s['features_per_row']:.1f}</td></tr>\n"
            f"<tr><td>rejected</td><td>{r['rows']:,}</td><td>{r['distinct_features']:,}</td>"
            f"<td>{r['features_per_row']:.1f}</td></tr>\n</table>\n"
            f"<p>The selection covers {c['selected_share']:.1%} of the "
            f"{c['all_distinct_features']:,} features seen in the input; "
            f"{c['only_in_rejected']:,} appear only in rejected rows.</p>\n")


def run_coverage_html(run: Any, rejected_ids: pl.Series) -> str:
    """The coverage section for a run (rows with SAE features only; '' without them)."""
    if IDS not in run.dataset("scores").schema.names:
        return ""
    frame = pl.from_arrow(run.table("scores", columns=["id", IDS]))
    frame = frame.with_columns(pl.col("id").cast(pl.String)).filter(pl.col(IDS).is_not_null())
    keep = ~frame["id"].is_in(rejected_ids.cast(pl.String).implode())
    return coverage_html(frame, keep)
