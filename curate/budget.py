"""Budgets and quotas: what a selection may keep and how it is spread over groups.

``Budget`` (rows or tokens) and ``parse_budget``; ``Fill``, the budget being filled
by a preference order; integer and token quotas over groups (``largest_remainder``,
``balanced_quotas``, ``spread``); and the ``Decision`` / ``Ranking`` a strategy returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError

TOKEN_COLUMN = "text_stats_tokens"


@dataclass
class Decision:
    """What a strategy decided: ``keep`` per row, and for dropped rows optionally a
    ``reason``, the ``representative`` (id of the kept row that won over it) and
    the ``cluster`` they share; ``facts`` are figures for the manifest's stage entry."""

    keep: pl.Series
    reason: pl.Series | None = None
    representative: pl.Series | None = None
    cluster: pl.Series | None = None
    detail: pl.Series | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ranking:
    """What a strategy returns: ``order``, the indices (into the frame) of the eligible
    rows, most preferred first, of which the shared budget takes a prefix; or None
    when the strategy filled the budget itself (``Fill.offer``). Optional per-row
    series (null where there is nothing to say) explain rows that are not kept."""

    order: np.ndarray | None
    reason: pl.Series | None = None
    representative: pl.Series | None = None
    cluster: pl.Series | None = None
    detail: pl.Series | None = None


# --- budgets -----------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """``n`` rows or ``n`` tokens."""

    n: int
    unit: str = "rows"

    def __str__(self) -> str:
        return f"{self.n} {self.unit}"


_MULTIPLIER = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_BUDGET_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmbg]?)\s*(rows?|tokens?|toks?)?\s*$",
                        re.IGNORECASE)


def parse_budget(value: Any) -> Budget | None:
    """``None`` (everything eligible), an int (rows), or a string: ``"1000"`` or
    ``"10k"`` (rows), ``"1000 rows"``, ``"50000tokens"``, ``"50k tokens"``,
    ``"2M tokens"`` (k = 1e3, M = 1e6, B/G = 1e9)."""
    if value is None or isinstance(value, Budget):
        return value
    hint = ("use a number of rows (1000, '10k') or of tokens ('50000tokens', '50k tokens', "
            "'2M tokens')")
    if isinstance(value, bool):
        raise CurateError(f"budget {value!r} is not a budget: {hint}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise CurateError(f"budget must be >= 0, got {value}")
        return Budget(int(value), "rows")
    if isinstance(value, float):
        if value < 0 or not value.is_integer():
            raise CurateError(f"budget {value!r} is not a whole number of rows: {hint}")
        return Budget(int(value), "rows")
    if not isinstance(value, str):
        raise CurateError(f"budget {value!r} ({type(value).__name__}) is not a budget: {hint}")
    m = _BUDGET_RE.match(value)
    if not m:
        raise CurateError(f"budget {value!r} is not a budget: {hint}")
    try:
        amount = Decimal(m[1]) * _MULTIPLIER[m[2].lower()]
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise CurateError(f"budget {value!r} is not a budget: {hint}") from None
    if amount != amount.to_integral_value():
        raise CurateError(f"budget {value!r} is not a whole number of rows or tokens")
    unit = "tokens" if (m[3] or "").lower().startswith("tok") else "rows"
    return Budget(int(amount), unit)


class Fill:
    """The budget being filled: ``offer(i)`` takes row ``i`` if it fits; ``take(order)``
    offers a whole preference order (vectorised)."""

    def __init__(self, budget: Budget | None, n_rows: int, costs: np.ndarray | None = None):
        self.budget = budget
        self.tokens = budget is not None and budget.unit == "tokens"
        self.limit = n_rows if budget is None else budget.n
        self.costs = costs
        self.used = 0.0
        self.taken: list[int] = []
        self._min_cost = float(costs.min()) if self.tokens and costs is not None and len(costs) else 0.0

    @property
    def full(self) -> bool:
        """True when no further row can be taken."""
        if self.tokens:
            return self.limit - self.used < self._min_cost
        return len(self.taken) >= self.limit

    def fits(self, i: int) -> bool:
        if self.tokens:
            return self.used + self.costs[i] <= self.limit
        return len(self.taken) < self.limit

    def offer(self, i: int) -> bool:
        """Take row ``i`` if it fits in what is left of the budget."""
        if not self.fits(i):
            return False
        if self.tokens:
            self.used += float(self.costs[i])
        self.taken.append(int(i))
        return True

    def take(self, order: np.ndarray) -> None:
        """Offer the rows of ``order`` in turn (rows: a prefix; tokens: every row that
        still fits, skipping the ones that do not)."""
        order = np.asarray(order, dtype=np.int64)
        if not self.tokens:
            room = max(self.limit - len(self.taken), 0)
            self.taken.extend(order[:room].tolist())
            return
        cost = self.costs[order]
        total = np.cumsum(cost) + self.used
        p = int(np.searchsorted(total, self.limit, side="right"))
        self.taken.extend(order[:p].tolist())
        if p:
            self.used = float(total[p - 1])
        rest, rest_cost = order[p:], cost[p:]
        if not len(rest):
            return
        cheapest_after = np.minimum.accumulate(rest_cost[::-1])[::-1]
        for t in range(len(rest)):
            if self.limit - self.used < cheapest_after[t]:
                break
            if self.used + rest_cost[t] <= self.limit:
                self.used += float(rest_cost[t])
                self.taken.append(int(rest[t]))

    def takes_all(self, rows: np.ndarray) -> bool:
        """Whether every row of ``rows`` fits at once (then no choice is needed)."""
        if self.tokens:
            return float(self.costs[rows].sum()) <= self.limit - self.used
        return len(rows) <= self.limit - len(self.taken)


def token_costs(frame: pl.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        raise CurateError(f"a token budget needs the token count column {column!r}: add "
                          f'.score("text_stats") (with a tokenizer) before .select, or pass '
                          f"token_column=<a column of token counts>")
    s = frame[column]
    if not s.dtype.is_numeric():
        raise CurateError(f"token column {column!r} is {s.dtype}, not a number of tokens")
    if s.null_count():
        raise CurateError(f"token column {column!r} is null for {s.null_count()} row(s) (was "
                          f"text_stats scored with tokenizer=None?); score text_stats with a "
                          f"tokenizer or pass token_column=<a column of token counts>")
    costs = s.cast(pl.Float64).to_numpy()
    if len(costs) and (np.isnan(costs).any() or costs.min() < 0):
        raise CurateError(f"token column {column!r} has negative or NaN token counts")
    return costs


# --- spreading a budget over groups -------------------------------------------------------

def largest_remainder(sizes: np.ndarray, n: int) -> np.ndarray:
    """Integer quotas proportional to ``sizes`` summing to exactly ``n`` (<= sizes.sum()):
    floors first, then one more to the largest remainders (ties: larger group, then
    lower group index)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0 or n <= 0:
        return np.zeros(len(sizes), dtype=np.int64)
    n = min(n, total)
    q = sizes * n // total
    rem = sizes * n - q * total
    extra = n - int(q.sum())
    pick = np.lexsort((np.arange(len(sizes)), -sizes, -rem))[:extra]
    q[pick] += 1
    return q


def balanced_quotas(sizes: np.ndarray, n: int) -> np.ndarray:
    """Equal integer quotas summing to exactly min(n, sizes.sum()); groups smaller than
    their share give all their rows and the leftover is shared by the others (ties for
    the last few rows: larger group, then lower group index)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    q = np.zeros(len(sizes), dtype=np.int64)
    left = min(n, int(sizes.sum()))
    groups = np.argsort(sizes, kind="stable")
    for pos, g in enumerate(groups):
        share = left // (len(groups) - pos)
        if sizes[g] <= share:
            q[g] = sizes[g]
            left -= int(sizes[g])
            continue
        rest = groups[pos:]
        base, extra = divmod(left, len(rest))
        q[rest] = base
        plus = sorted(rest.tolist(), key=lambda x: (-sizes[x], x))[:extra]
        q[plus] += 1
        break
    return q


def _waterfill(capacity: np.ndarray, total: float) -> np.ndarray:
    """Equal real shares of ``total`` capped at each group's ``capacity``."""
    share = np.zeros(len(capacity))
    left = float(total)
    groups = np.argsort(capacity, kind="stable")
    for pos, g in enumerate(groups):
        s = left / (len(groups) - pos)
        if capacity[g] <= s:
            share[g] = capacity[g]
            left -= capacity[g]
        else:
            share[groups[pos:]] = s
            break
    return share


def spread(fill: Fill, cand: np.ndarray, group: np.ndarray, within: np.ndarray,
            balanced: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Preference order of ``cand`` (row indices) spreading the budget over groups.

    ``group`` is a group index per candidate (0..G-1) and ``within`` a preference key
    inside the group (lower first). Row budget: each group gets an integer quota
    (proportional to its size by largest remainder, or balanced), the rows within the
    quotas come first (interleaved), the rest after. Token budget: each group gets a
    share of the tokens (proportional to its size in rows, or balanced); rows come in
    the order of how much of its group's share they would use up.
    Returns the order and the quota per group (rows only)."""
    if not len(cand):
        return cand, None
    n_groups = int(group.max()) + 1
    sizes = np.bincount(group, minlength=n_groups)
    order_in = np.lexsort((within, group))  # by group, then preference
    rank = np.empty(len(cand), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank[order_in] = np.arange(len(cand)) - np.repeat(starts, sizes)
    if not fill.tokens:
        n = min(fill.limit - len(fill.taken), len(cand))
        quota = balanced_quotas(sizes, n) if balanced else largest_remainder(sizes, n)
        inq = rank < quota[group]
        key = np.where(inq, (rank + 1) / np.maximum(quota[group], 1), (rank + 1) / sizes[group])
        order = np.lexsort((rank, group, key, ~inq))
        return cand[order], quota
    cost = fill.costs[cand]
    running = np.cumsum(cost[order_in])  # tokens so far, in (group, preference) order
    before_group = running[starts] - cost[order_in][starts]
    cum = np.empty(len(cand))
    cum[order_in] = running - np.repeat(before_group, sizes)  # group's tokens up to the row
    budget = fill.limit - fill.used
    if balanced:
        share = _waterfill(np.bincount(group, weights=cost, minlength=n_groups), budget)
    else:
        share = budget * sizes / sizes.sum()
    key = cum / np.maximum(share[group], 1e-12)
    return cand[np.lexsort((rank, group, key))], None
