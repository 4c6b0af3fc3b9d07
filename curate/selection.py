"""Selection strategies: choose rows of a score frame under a budget.

A strategy takes the frame of alive rows (``id`` + score columns) and returns
a boolean mask of the rows it keeps. Every strategy is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from curate.errors import CurateError

Strategy = Callable[..., pl.Series]
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


def select(frame: pl.DataFrame, name: str, budget: int | None, options: dict[str, Any]) -> pl.Series:
    """Apply strategy ``name``; returns the keep mask."""
    if name not in STRATEGIES:
        raise CurateError(f"unknown selection strategy {name!r}; "
                          f"choose one of {', '.join(sorted(STRATEGIES))}")
    try:
        return STRATEGIES[name](frame, budget, **options)
    except TypeError as err:
        raise CurateError(f"strategy {name!r}: {err}") from err
