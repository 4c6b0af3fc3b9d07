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

import inspect
import math
from typing import Any

import numpy as np
import polars as pl

from curate.budget import (TOKEN_COLUMN, Budget, Decision, Fill, Ranking, balanced_quotas,  # noqa: F401
                           largest_remainder, parse_budget, token_costs)
from curate.errors import CurateError
from curate.strategies import (STRATEGIES, Strategy, _sql, combine, facility_objective,  # noqa: F401
                               gumbel, seeded_order, strategy)
import curate.sae_select  # noqa: E402,F401  (registers sae_target and sae_coverage)

__all__ = ["STRATEGIES", "TOKEN_COLUMN", "Budget", "Decision", "Fill", "Ranking", "Strategy",
           "balanced_quotas", "check_options", "combine", "facility_objective", "gumbel",
           "largest_remainder", "parse_budget", "requirements", "seeded_order", "select", "strategy"]


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
    costs = token_costs(frame, token_column) if b is not None and b.unit == "tokens" else None
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
