"""Selection strategies: choose rows of a score frame under a budget.

A strategy reads the frame of alive rows (``id``, ``source``, ``prompt_id`` and the
score columns, e.g. ``embedding``) and produces a preference *order* of the rows
it considers eligible, plus a reason for each row it rules out. One shared budget
function then takes a prefix of that order:

- a budget in **rows** (``1000``, ``"1000"``, ``"10k"``) keeps exactly
  ``min(n, eligible)`` rows;
- a budget in **tokens** (``"50000tokens"``, ``"50k tokens"``, ``"2M tokens"``) walks
  the order and takes a row when it still fits (total <= budget), skipping rows that
  do not fit and going on, so the budget is never exceeded. Token counts come from
  the ``token_column`` option (default ``text_stats_tokens``, written by
  ``.score("text_stats")``).

Sequential strategies (``deita``, ``kcenter``, ``facility_location``) fill the budget
themselves while they walk, because what they keep decides what comes next.

Every strategy is deterministic for its ``seed`` and independent of the order of the
rows in the frame (random choices come from hashes of row ids, see
``seeded_order``); rows whose score is null go last. Rows that are not kept get a
reason: a specific one from the strategy (below a threshold, too similar to a kept
row, ...) or ``over budget (<strategy>, budget <b>)``.

Strategies: ``random``, ``topk``, ``threshold``, ``stratified``, ``weighted``
(see ``combine``), ``grape``, ``importance`` (DSIR), ``deita``, ``kmeans_quality``,
``kcenter``, ``facility_location``.
"""

from __future__ import annotations

import heapq
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
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


Strategy = Callable[..., "Ranking | pl.Series | Decision"]
STRATEGIES: dict[str, Strategy] = {}
TOKEN_COLUMN = "text_stats_tokens"


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


def _token_costs(frame: pl.DataFrame, column: str) -> np.ndarray:
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


# --- options, columns ------------------------------------------------------------------

def _strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise CurateError(f"unknown selection strategy {name!r}; "
                          f"choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The strategy's options with their defaults filled in; CurateError for an unknown
    strategy, an unknown option or a missing required one."""
    fn = _strategy(name)
    params = list(inspect.signature(fn).parameters.values())[2:]
    known = {p.name: p for p in params}
    unknown = set(options) - set(known) - {"token_column"}
    if unknown:
        raise CurateError(f"selection strategy {name!r} has no option(s) {sorted(unknown)}; "
                          f"its options: {', '.join([*known, 'token_column'])}")
    out = {k: p.default for k, p in known.items() if p.default is not inspect.Parameter.empty}
    out.update(options)
    missing = [k for k in known if k not in out]
    if missing:
        raise CurateError(f"selection strategy {name!r} needs option(s) "
                          f"{', '.join(f'{k}=' for k in missing)}")
    _check_values(name, out)
    return out


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _check_values(name: str, o: dict[str, Any]) -> None:
    """The checks of option values that need no data, so a plan with a bad value is
    refused before a run starts (the strategies rely on them)."""
    if "seed" in o and (isinstance(o["seed"], bool) or not isinstance(o["seed"], int)):
        raise CurateError(f"{name}: seed must be an integer, got {o['seed']!r}")
    if name in ("topk", "threshold") and (o.get("by") is None) == (o.get("expr") is None):
        raise CurateError(f"{name}: give exactly one of by=<score column> or expr=<SQL expression>")
    if name == "threshold":
        if o.get("min") is None and o.get("max") is None:
            raise CurateError("threshold: give min=, max= or both")
        for key in ("min", "max"):
            if o.get(key) is not None and not _is_number(o[key]):
                raise CurateError(f"threshold: {key} must be a number, got {o[key]!r}")
    if name == "deita" and not (_is_number(o["threshold"]) and -1 <= o["threshold"] <= 1):
        raise CurateError(f"deita: threshold must be a cosine similarity in [-1, 1], got "
                          f"{o['threshold']!r}")
    if name == "kmeans_quality":
        if not (_is_number(o["temperature"]) and o["temperature"] > 0):
            raise CurateError(f"kmeans_quality: temperature must be > 0, got {o['temperature']!r}")
        k = o.get("k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise CurateError(f"kmeans_quality: k must be a positive integer, got {k!r}")
    if "block" in o and (isinstance(o["block"], bool) or not isinstance(o["block"], int)
                         or o["block"] < 1):
        raise CurateError(f"{name}: block must be a positive integer, got {o['block']!r}")
    if name == "weighted":
        w = o.get("weights")
        if not isinstance(w, dict) or not w:
            raise CurateError("weighted: weights must be a non-empty {column: weight} mapping")
        for col, v in w.items():
            if not _is_number(v):
                raise CurateError(f"weighted: weight of {col!r} must be a finite number, got {v!r}")
        if o.get("normalize") not in ("rank", "zscore", "minmax"):
            raise CurateError(f"weighted: normalize must be 'rank', 'zscore' or 'minmax', "
                              f"got {o.get('normalize')!r}")


def requirements(name: str, budget: Any, options: dict[str, Any]) -> list[tuple[str, str]]:
    """Columns a select step reads, each with the fix when it is missing. Raises
    CurateError for an unknown strategy, bad options or a bad budget, so a plan can be
    checked before any scorer runs."""
    fn = _strategy(name)
    opts = check_options(name, options)
    b = parse_budget(budget)
    need: list[tuple[str, str]] = []
    for opt in fn.column_options:  # type: ignore[attr-defined]
        col = opts.get(opt)
        if isinstance(col, str):
            hint = (f"option {opt}={col!r} names a column no earlier step writes"
                    + ('; add .score("dsir", target=<target file>) to write the DSIR log '
                       'importance weight dsir_weight' if name == "importance" else ""))
            need.append((col, hint))
    if isinstance(opts.get("expr"), str):
        for col in _sql(opts["expr"], name).meta.root_names():
            need.append((col, f"expr {opts['expr']!r} uses a column no earlier step writes"))
    if isinstance(opts.get("weights"), dict):
        for col in opts["weights"]:
            need.append((col, f"weights name column {col!r} that no earlier step writes"))
    if fn.uses_embedding:  # type: ignore[attr-defined]
        col = opts.get("embedding", "embedding")
        need.append((col, f'add .score("embedding") before .select("{name}")'))
    if b is not None and b.unit == "tokens":
        col = opts.get("token_column", TOKEN_COLUMN)
        need.append((col, ('a token budget counts tokens: add .score("text_stats") (with a '
                           'tokenizer) or pass token_column=<a column of token counts>')))
    return need


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


def _spread(fill: Fill, cand: np.ndarray, group: np.ndarray, within: np.ndarray,
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
    order, quota = _spread(fill, cand, dense, _tie(frame, seed), balanced)
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
    order, quota = _spread(fill, np.arange(n), dense, within)
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


# --- the entry point ---------------------------------------------------------------------------

def select(frame: pl.DataFrame, name: str, budget: Any, options: dict[str, Any]) -> Decision:
    """Apply strategy ``name`` to the alive rows under ``budget`` (None, rows or tokens,
    see ``parse_budget``); the ``token_column`` option names the token counts."""
    fn = _strategy(name)
    check_options(name, options)
    opts = dict(options)
    token_column = opts.pop("token_column", TOKEN_COLUMN)
    b = parse_budget(budget)
    n = frame.height
    if n == 0:
        return Decision(pl.Series("keep", [], dtype=pl.Boolean))
    costs = _token_costs(frame, token_column) if b is not None and b.unit == "tokens" else None
    fill = Fill(b, n, costs)
    out = fn(frame, fill, **opts)
    if isinstance(out, Decision):
        return out
    if isinstance(out, pl.Series):
        return Decision(out)
    if out.order is not None:
        fill.take(out.order)
    keep_np = np.zeros(n, dtype=bool)
    keep_np[np.asarray(fill.taken, dtype=np.int64)] = True
    keep = pl.Series("keep", keep_np)
    default = f"over budget ({name}, budget {b})" if b is not None else f"not selected by {name}"
    nulls = pl.Series([None] * n, dtype=pl.String)
    given = out.reason if out.reason is not None else nulls
    reason = given.cast(pl.String).fill_null(default).zip_with(~keep, nulls).alias("reason")

    def dropped(s: pl.Series | None) -> pl.Series | None:
        return None if s is None else s.cast(pl.String).zip_with(~keep, nulls)

    return Decision(keep, reason, dropped(out.representative), out.cluster, dropped(out.detail))
