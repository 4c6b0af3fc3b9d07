"""Decision steps as objects in a registry (like the selection strategies).

A decision step (``exact``, ``minhash``, ``semantic``, ``decontaminate``) is
added to a pipeline as the score step it needs plus a ``Dedup`` step; the plan
runner hands its ``decide`` the compact frame of alive rows (only the columns
the step declares) and ``Access`` to the engine: rows by id, and on a distributed
engine a group-wise map that runs on its cluster (None on the local engine). Each
step's ``options`` table holds every option and its default, read by the DSL and the
CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from curate.errors import CurateError
from curate.spill import Lists
from curate.steps import Dedup, Score

#: ``rows(ids, columns)``: those columns (None: id and the canonical ones) of the rows with these ids.
RowReader = Callable[[list[str], list[str] | None], Iterator[pa.Table]]
#: A sink for one line of progress or advice (the run's log).
Say = Callable[[str], None]
#: ``map_groups(table, key, fn)``: ``fn`` over pieces of ``table`` that each hold every
#: row of their values of the integer column ``key``; the results concatenated.
GroupMap = Callable[[pa.Table, str, Callable[[pa.Table], pa.Table]], pa.Table]


@dataclass(frozen=True)
class Access:
    """What a decision step may ask of the engine and the run."""

    rows: RowReader
    map_groups: GroupMap | None  # None: work in this process (the local engine)
    say: Say
    lists: Callable[[str], Lists]  # a scorer's working column, row by row of the frame


class DecisionStep:
    """One kind of decision step: the score it needs, the columns it reads, the decision."""

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]]  # every option and its default (DSL and CLI)
    is_dedup: ClassVar[bool] = True    # offered by ``Pipeline.dedup`` and ``curate dedup``

    def plan(self, options: dict[str, Any]) -> tuple[Score, Dedup]:
        """The score step and the decision step for these (complete) options."""
        raise NotImplementedError

    def columns(self, options: dict[str, Any]) -> list[str]:
        """Frame columns ``decide`` reads (besides id and _order)."""
        from curate.dedup import LENGTH_COLUMNS

        keep = options.get("keep", "first")
        return [*LENGTH_COLUMNS] if keep == "longest" else [] if keep == "first" else [keep]

    def check(self, options: dict[str, Any], available: set[str]) -> str | None:
        """A problem with the step over the columns ``available`` (None: fine)."""
        keep = options.get("keep", "first")
        if keep not in ("first", "longest") and keep not in available:
            return (f"keeps by unknown column {keep!r}; use 'first', 'longest' or one of: "
                    f"{', '.join(sorted(available))}")
        return None

    def decide(self, frame: pl.DataFrame, options: dict[str, Any], access: Access):
        """The ``selection.Decision`` over ``frame`` (alive rows, in input order)."""
        raise NotImplementedError


DECISIONS: dict[str, DecisionStep] = {}


def decision(cls: type[DecisionStep]) -> type[DecisionStep]:
    """Class decorator: register a decision step under ``cls.name``."""
    DECISIONS[cls.name] = cls()
    return cls


def dedup_methods() -> list[str]:
    return [n for n, d in DECISIONS.items() if d.is_dedup]


def get_decision(name: str) -> DecisionStep:
    if name not in DECISIONS:
        raise CurateError(f"unknown decision step {name!r}; choose one of {', '.join(DECISIONS)}")
    return DECISIONS[name]


def complete(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over the step's defaults; refuses options it does not have."""
    step = DECISIONS[name]
    unknown = set(options) - set(step.options)
    if unknown:
        raise CurateError(f"dedup {name!r} has no option(s) {sorted(unknown)}; "
                          f"options: {', '.join(step.options)}")
    return {**step.options, **options}


def _pick(o: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: o[k] for k in keys}


@decision
class Exact(DecisionStep):
    name = "exact"
    options = {"fields": "all", "punctuation": True, "keep": "first"}

    def plan(self, o):
        return Score("exact", _pick(o, "fields", "punctuation")), Dedup("exact", _pick(o, "keep"))

    def columns(self, o):
        return ["exact_hash", *super().columns(o)]

    def decide(self, frame, o, access):
        from curate import dedup

        return dedup.exact(frame, keep=o["keep"])


@decision
class MinHash(DecisionStep):
    name = "minhash"
    options = {"threshold": 0.8, "num_perm": 128, "bands": None, "rows": None, "ngram": 5,
               "shingle": "word", "fields": "all", "verify": True, "keep": "first", "seed": 1,
               "hash": "oph"}

    def plan(self, o):
        from curate.dedup import check_threshold, choose_bands

        o = dict(o)
        check_threshold(o["threshold"])
        if (o["bands"] is None) != (o["rows"] is None):
            raise CurateError("give both bands and rows, or neither")
        if o["bands"] is None:
            weights = (0.05, 0.95) if o["verify"] else (0.5, 0.5)  # verify removes false positives
            o["bands"], o["rows"] = choose_bands(o["threshold"], o["num_perm"], *weights)
        score = Score("minhash", {**_pick(o, "num_perm", "bands", "rows", "ngram", "shingle",
                                          "fields", "seed", "hash"), "sets": bool(o["verify"])})
        return score, Dedup("minhash", _pick(o, "threshold", "verify", "keep", "ngram", "shingle",
                                             "fields", "bands", "rows"))

    def columns(self, o):
        return ["minhash_bands", "minhash_chars", "minhash_shingles",
                *([] if o.get("verify", True) else ["minhash_sketch"]), *super().columns(o)]

    def decide(self, frame, o, access):
        from curate import dedup

        access.say(f"dedup minhash: {dedup.tradeoff(o['threshold'], o['bands'], o['rows'])}")
        return dedup.minhash(frame, threshold=o["threshold"], keep=o["keep"], verify=o["verify"],
                             sets=access.lists("minhash_set") if o["verify"] else None,
                             ngram=o["ngram"], shingle=o["shingle"],
                             map_groups=access.map_groups, say=access.say)


@decision
class Semantic(DecisionStep):
    name = "semantic"
    options = {"eps": 0.05, "model": "minilm", "fields": "all", "n_clusters": None,
               "keep": "first", "seed": 0}

    def plan(self, o):
        return (Score("embedding", _pick(o, "model", "fields")),
                Dedup("semantic", _pick(o, "eps", "n_clusters", "keep", "seed")))

    def columns(self, o):
        return ["embedding", *super().columns(o)]

    def decide(self, frame, o, access):
        from curate import dedup

        return dedup.semantic(frame, eps=o["eps"], keep=o["keep"], n_clusters=o["n_clusters"],
                              seed=o["seed"])


@decision
class Decontaminate(DecisionStep):
    """Drops rows that share a word n-gram with an evaluation set."""

    name = "decontaminate"
    options = {"against": None, "ngram": 13, "fields": "all"}
    is_dedup = False

    def plan(self, o):
        return Score("contamination", _pick(o, "against", "ngram", "fields")), \
            Dedup("decontaminate", _pick(o, "ngram"))

    def columns(self, o):
        return ["contamination_eval", "contamination_ngram"]

    def decide(self, frame, o, access):
        from curate.selection import Decision

        keep = frame["contamination_eval"].is_null()
        reason = pl.Series([f"contaminated: shares a {o['ngram']}-gram with {e}" if e else None
                            for e in frame["contamination_eval"]], dtype=pl.String)
        return Decision(keep, reason, detail=frame["contamination_ngram"])
