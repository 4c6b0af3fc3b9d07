"""The steps a pipeline is made of (plain data, no behaviour beyond describing themselves).

They live apart from the DSL (``curate.pipeline``) so the plan runner can read
them without importing the DSL that calls it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curate.errors import CurateError


@dataclass(frozen=True)
class Read:
    path: str | None = None
    kind: str | None = None
    adapter: str | None = None
    columns: dict[str, str] | None = None  # adapter name -> input column


@dataclass(frozen=True)
class Score:
    scorer: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Filter:
    predicate: str | pl.Expr
    name: str | None = None

    def expr(self) -> pl.Expr:
        if isinstance(self.predicate, pl.Expr):
            return self.predicate
        try:
            return pl.sql_expr(self.predicate)
        except Exception as err:  # polars raises several error types for bad SQL
            raise CurateError(f"filter {self.predicate!r} is not a valid SQL predicate ({err})") from err

    @property
    def label(self) -> str:
        return self.name or (self.predicate if isinstance(self.predicate, str) else str(self.predicate))


@dataclass(frozen=True)
class Select:
    strategy: str
    budget: int | str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dedup:
    """A decision step of the registry in ``curate.decisions``: ``exact``, ``minhash``,
    ``semantic`` or ``decontaminate`` (drops rows that matched an evaluation set)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)


Step = Score | Filter | Select | Dedup


def step_spec(step: Step) -> dict[str, Any]:
    """A step as JSON-able data (``{"step": "score", "scorer": ..., ...}``)."""
    d = {"step": type(step).__name__.lower()}
    for f in dataclasses.fields(step):
        v = getattr(step, f.name)
        d[f.name] = str(v) if isinstance(v, pl.Expr) else v
    return d
