"""Engines: where batches run. The plan runner (``curate.runner``) owns everything
else, so an engine implements only what differs between running on this machine
and running on a cluster:

- ``ingest(source, staging)``: the input as canonical Parquet data parts;
- ``map_batches(scorer, parts, columns)``: a scorer's columns for the wanted rows
  of the parts, as tables of ``id`` + score columns + ``_error``, in any order
  (``score_rows`` makes such a table from a batch);
- ``read_rows(parts, columns)``: the wanted rows of the parts (for decision steps
  that look at texts, such as MinHash verification);
- ``map_groups(table, key, fn)``: a function over groups of a compact table (for
  decision steps: MinHash candidate pairs are a group-by over band hashes).

An engine sizes its workers from each scorer's declared ``resources`` and runs
``setup()`` where the batches run. Engines register under a short name
(``local`` here, ``ray`` in ``curate.ray_engine``); ``Pipeline.write(..., engine=NAME)``
and ``curate run --engine`` pick one.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import shutil
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.ingest import IngestStats, ingest
from curate.memory import freeze_gc, release_freed
from curate.run import write_table
from curate.scorer import Scorer
from curate.steps import Read


@dataclass(frozen=True)
class Part:
    """Rows of one data part: its file and the ids wanted from it (None: all)."""

    path: Path
    ids: pa.Array | None = None

    @property
    def rows(self) -> int:
        return len(self.ids) if self.ids is not None else pq.read_metadata(self.path).num_rows


def read_part(part: Part, columns: list[str]) -> pa.Table:
    """The ``columns`` of the wanted rows of ``part`` (read whole, then filtered by id in
    memory: ids are random, so no row group could be skipped, and Arrow's in-memory
    filter is faster than its dataset filter)."""
    table = pq.read_table(part.path, columns=list(dict.fromkeys(["id", *columns])))
    if part.ids is not None and len(part.ids) < table.num_rows:
        table = table.filter(pc.is_in(table["id"], value_set=part.ids))
    return table.select(columns)


ERROR = "_error"


def score_rows(scorer: Scorer, data: pa.RecordBatch | pa.Table) -> pa.Table:
    """``id`` + the scorer's columns + ``_error`` for the rows of ``data``. When the
    scorer raises on the batch, the rows are scored one by one: a row that still
    raises gets null scores and the error as ``_error`` (the runner rejects it); the
    others keep their scores. A CurateError (a user error, such as a bad option) stops
    the run instead."""
    if isinstance(data, pa.Table):
        data = data.combine_chunks()
        data = (data.to_batches()[0] if data.num_rows else
                pa.RecordBatch.from_pylist([], schema=data.schema))
    try:
        scores = scorer.score_batch(data)
        errors = pa.nulls(data.num_rows, pa.string())
    except CurateError:
        raise
    except Exception as err:
        if data.num_rows > 1:
            return pa.concat_tables([score_rows(scorer, data.slice(i, 1))
                                     for i in range(data.num_rows)])
        from curate.schema import kind_of

        schema = scorer.output_schema(kind_of(data.schema))
        scores = pa.table({f.name: pa.nulls(data.num_rows, f.type) for f in schema}, schema=schema)
        msg = " ".join(str(err).split())[:300]
        errors = pa.array([f"score {scorer.name} raised {type(err).__name__}: {msg}"], pa.string())
    release_freed()
    return scores.add_column(0, "id", data.column("id")).append_column(ERROR, errors)


class Engine(ABC):
    """What differs between engines (see the module docstring)."""

    name: ClassVar[str]
    distributed: ClassVar[bool] = False  # decision steps hand group-wise work to map_groups

    def __init__(self, *, batch_rows: int = 256, workers: int | None = None,
                 chunk_rows: int = 10_000):
        self.batch_rows, self.chunk_rows = batch_rows, chunk_rows
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.info: dict[str, dict[str, Any]] = {}  # per scorer name: facts for the manifest

    def ingest(self, source: Read, staging: Path,
               on_rows: Callable[[int], None] = lambda n: None) -> tuple[IngestStats, list[dict]]:
        """Write ``source`` as canonical data parts ``staging/part-NNNNN.parquet``; returns
        the ingest stats and the rejected records of bad rows."""
        shutil.rmtree(staging, ignore_errors=True)
        records: list[dict] = []
        stats = IngestStats()
        for n, (table, bad, stats) in enumerate(ingest(source.path, kind=source.kind,
                                                      adapter=source.adapter, columns=source.columns,
                                                      chunk_rows=self.chunk_rows, on_rows=on_rows)):
            if table is not None:
                write_table(table, staging / f"part-{n:05d}.parquet")
            records.extend(bad)
        return stats, records

    def fit(self, scorer: Scorer) -> Any:
        """The scorer's whole-dataset state (``Scorer.fit``), computed on a copy so the
        scorer shipped to workers carries only the state, no model loaded for it."""
        return copy.deepcopy(scorer).fit()

    @abstractmethod
    def map_batches(self, scorer: Scorer, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        """``id`` + the scorer's columns for every wanted row of ``parts`` (read with
        ``columns``), batch by batch, in any order."""

    def read_rows(self, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        """The ``columns`` of the wanted rows, one table per part."""
        for part in parts:
            yield read_part(part, columns)

    def map_groups(self, table: pa.Table, key: str, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """``fn`` over pieces of ``table`` that each hold every row of their values of
        the integer column ``key``, the results concatenated (here: one piece)."""
        return fn(table)


ENGINES: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make an engine available under ``cls.name``."""
    ENGINES[cls.name] = cls
    return cls


# engines whose module is imported on first use (it needs an optional package)
LAZY_ENGINES = {"ray": "curate.ray_engine"}


def engine_class(name: str) -> type[Engine]:
    """The engine registered as ``name`` (importing a lazily loaded one: a missing
    optional package is a CurateError naming what to install)."""
    if name not in ENGINES and name in LAZY_ENGINES:
        import importlib

        importlib.import_module(LAZY_ENGINES[name])
    if name not in ENGINES:
        known = sorted(set(ENGINES) | set(LAZY_ENGINES))
        raise CurateError(f"unknown engine {name!r}; available engines: {', '.join(known)}")
    return ENGINES[name]


def get_engine(engine: str | Engine, **options: Any) -> Engine:
    """An engine instance: ``engine`` itself, or the registered engine of that name."""
    if isinstance(engine, Engine):
        return engine
    return engine_class(engine)(**options)


# --- the local engine -------------------------------------------------------------

_WORKER_SCORER: Scorer | None = None


def _init_worker(scorer: Scorer) -> None:
    global _WORKER_SCORER
    _WORKER_SCORER = scorer
    scorer.setup()


_WORKER_PART: tuple[tuple, pa.Table] | None = None  # the part a worker read last


def _score_in_worker(part: Part, columns: list[str], start: int, rows: int) -> pa.Table:
    """Score rows ``start`` .. ``start + rows`` of a part, read here (once per part), so
    the parent does not read and ship the data."""
    global _WORKER_PART
    assert _WORKER_SCORER is not None
    key = (part.path, tuple(columns))
    if _WORKER_PART is None or _WORKER_PART[0] != key:
        _WORKER_PART = (key, read_part(part, columns))
    return score_rows(_WORKER_SCORER, _WORKER_PART[1].slice(start, rows))


@register_engine
class LocalEngine(Engine):
    """This machine, streaming part by part. A scorer that declares single-core work
    (``Resources(cpus=1)``) is replicated over ``workers`` forked processes when there
    is enough to do; any other scorer runs in this process with its own threads."""

    name = "local"

    def replicas(self, scorer: Scorer, rows: int) -> int:
        r = scorer.resources
        if r.cpus is None or r.gpus > 0 or rows < 4 * self.batch_rows:
            return 1
        return max(1, int(self.workers // r.cpus))

    def batches(self, parts: list[Part], columns: list[str], size: int) -> Iterator[pa.RecordBatch]:
        for table in self.read_rows(parts, columns):
            yield from table.to_batches(max_chunksize=size)

    def map_batches(self, scorer: Scorer, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        workers = self.replicas(scorer, sum(p.rows for p in parts))
        self.info[scorer.name] = {"workers": workers}
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            scorer.setup()
            freeze_gc()
            self.info[scorer.name]["setup"] = scorer.describe()
            for batch in self.batches(parts, columns, scorer.batch_rows or self.batch_rows):
                yield score_rows(scorer, batch)
            scorer.unload()
            return
        # fork: works from scripts without a __main__ guard; replicated scorers are plain
        # Python/numpy/pyarrow code (no torch or polars thread pools in the children).
        # Workers read the parts themselves and get bigger batches (per-task overhead).
        ctx = multiprocessing.get_context("fork")
        size = max(self.batch_rows, 2048)
        release_freed(0)  # children start with the parent's pages: as few as may be
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(scorer,)) as pool:
            pending: deque = deque()
            for part in parts:
                for start in range(0, part.rows, size):
                    pending.append(pool.submit(_score_in_worker, part, columns, start, size))
                    if len(pending) >= 2 * workers:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        self.info[scorer.name]["setup"] = scorer.describe()
