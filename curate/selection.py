"""Selection strategies: choose rows of a score frame under a budget.

A strategy takes the frame of alive rows (``id`` + score columns) and returns
a boolean mask of the rows it keeps. Every strategy is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from curate.errors import CurateError



@dataclass
class Decision:
    """What a strategy decided: ``keep`` per row, and for dropped rows optionally a
    ``reason``, the ``representative`` (id of the kept row that won over it) and
    the ``cluster`` they share."""

    keep: pl.Series
    reason: pl.Series | None = None
    representative: pl.Series | None = None
    cluster: pl.Series | None = None
    detail: pl.Series | None = None


Strategy = Callable[..., "pl.Series | Decision"]
STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn
    return deco


def _budget_rows(frame: pl.DataFrame, budget: int | None) -> int:
    if budget is None:
        return frame.height
    if budget < 0:
        raise CurateError(f"budget must be >= 0, got {budget}")
    return min(budget, frame.height)


def seeded_order(ids: pl.Series, seed: int) -> pl.Series:
    """A pseudo-random rank per row that depends only on (id, seed), not on row order."""
    return (ids + f"#{seed}").hash(seed=0).rank("ordinal")


@strategy("random")
def random_rows(frame: pl.DataFrame, budget: int | None, *, seed: int = 0) -> pl.Series:
    """Uniform random sample of ``budget`` rows (the baseline every comparison needs)."""
    n = _budget_rows(frame, budget)
    return seeded_order(frame["id"], seed) <= n


@strategy("topk")
def topk(frame: pl.DataFrame, budget: int | None, *, by: str, descending: bool = True,
         seed: int = 0) -> pl.Series:
    """The ``budget`` rows with the highest (or lowest) ``by``; nulls last, ties by a seeded order."""
    if by not in frame.columns:
        raise CurateError(f"topk: no column {by!r}; available: {', '.join(frame.columns)}")
    n = _budget_rows(frame, budget)
    order = (frame.with_row_index("_i")
             .with_columns(_tie=seeded_order(frame["id"], seed))
             .sort([by, "_tie"], descending=[descending, False], nulls_last=True)["_i"])
    keep = pl.Series([False] * frame.height)
    return keep.scatter(order.head(n), True)


@strategy("grape")
def grape(frame: pl.DataFrame, budget: int | None, *, by: str = "logprob_conditional",
          group: str = "prompt_id", seed: int = 0) -> Decision:
    """GRAPE-style fit: among rows answering the same prompt (same ``group``), keep the
    one the target model finds most probable (highest ``by``, by default the mean
    log-probability under the chat template); ties go to a seeded order of ids.
    Rows whose ``by`` is null lose to any scored row. Under a budget, the winners
    with the highest ``by`` are kept."""
    for col in (by, group):
        if col not in frame.columns:
            raise CurateError(f"grape: no column {col!r}; available: {', '.join(frame.columns)}")
    ranked = (frame.select("id", by, group)
              .with_row_index("_i")
              .with_columns(_tie=seeded_order(frame["id"], seed),
                            _group=pl.coalesce(pl.col(group), pl.col("id")))
              .sort([by, "_tie"], descending=[True, False], nulls_last=True))
    winners = ranked.group_by("_group", maintain_order=True).agg(
        _winner=pl.col("id").first(), _wi=pl.col("_i").first(), _score=pl.col(by).first())
    n = _budget_rows(winners, budget)
    kept = set(winners.sort(["_score"], descending=True, nulls_last=True, maintain_order=True)
               .head(n)["_wi"].to_list())
    rep = (frame.select("id", _group=pl.coalesce(pl.col(group), pl.col("id")))
           .join(winners.select("_group", "_winner"), on="_group", how="left")["_winner"])
    keep = pl.Series([i in kept for i in range(frame.height)])
    lost_group = rep != frame["id"]
    reason = pl.Series([f"a more probable answer to the same prompt was kept (by {by})" if lost
                        else f"over budget (grape, budget {budget})" for lost in lost_group])
    return Decision(keep, reason, rep.zip_with(lost_group, pl.Series([None] * frame.height,
                                                                     dtype=pl.String)))


def select(frame: pl.DataFrame, name: str, budget: int | None, options: dict[str, Any]) -> Decision:
    """Apply strategy ``name`` to the alive rows."""
    if name not in STRATEGIES:
        raise CurateError(f"unknown selection strategy {name!r}; "
                          f"choose one of {', '.join(sorted(STRATEGIES))}")
    try:
        out = STRATEGIES[name](frame, budget, **options)
    except TypeError as err:
        raise CurateError(f"strategy {name!r}: {err}") from err
    return out if isinstance(out, Decision) else Decision(out)
