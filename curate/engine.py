"""Engines: where batches run. The plan runner (``curate.runner``) owns everything
else, so an engine implements only what differs between running on this machine
and running on a cluster:

- ``map_tasks(fn, calls)``: independent tasks, such as input files ingested apart
  into canonical Parquet data parts (``ingest`` runs them and reconciles the files);
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError, InputError
from curate.ingest import (IngestState, IngestStats, RowIds, check_kind, ingest, ingest_file,
                           occurrences, renumber, seen_ids)
from curate.memory import freeze_gc, keep_heap, release_freed
from curate.readers import InputFiles, scan
from curate.run import read_parquet, write_table
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
    table = read_parquet(part.path, columns=list(dict.fromkeys(["id", *columns])))
    if part.ids is not None and len(part.ids) < table.num_rows:
        table = table.filter(pc.is_in(table["id"], value_set=part.ids))
    return table.select(columns)


def ingest_one_file(source: Read, file: str, index: int, staging: str, state: IngestState,
                    chunk_rows: int, final: bool
                    ) -> tuple[IngestStats, IngestState, list[dict], list[Any]]:
    """Ingest one input file after the files that gave ``state``; its chunks are kept as
    uncompressed Arrow files ``staging/fNNNNN-CCCCC.arrow`` (CCCCC counts its chunks)
    until ``finish_file`` makes them data parts, or written as data parts at once when
    its ids are ``final`` (``state`` holds every earlier file). Returns its stats, the
    state after it (row ids aside), its rejected records and, per chunk, (part name, the
    content hashes of its rows, final) or None for a chunk of no good rows."""
    for old in Path(staging).glob(f"f{index:05d}-*"):  # from a first try
        old.unlink()
    stats = IngestStats(kind=source.kind)
    records: list[dict] = []
    parts: list[Any] = []
    state.ids.log = []
    for c, (table, bad, _) in enumerate(ingest_file(
            Path(source.path), Path(file), state, stats, kind=source.kind, adapter=source.adapter,
            columns=source.columns, chunk_rows=chunk_rows)):
        name = f"f{index:05d}-{c:05d}"
        hashes = np.array(state.ids.log, dtype=np.uint64)
        state.ids.log = []
        if table is not None and final:
            write_table(table, Path(staging) / f"{name}.parquet")
        elif table is not None:
            with pa.OSFile(str(Path(staging) / f"{name}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        parts.append((name, hashes, final) if table is not None else None)
        records.extend(bad)
    state.ids = RowIds()  # the hashes tell them (``occurrences``), at a fraction of the size
    return stats, state, records, parts


def finish_file(staging: str, parts: list[Any], rows: list[Any]) -> None:
    """Write the chunks of one file (``ingest_one_file``'s) as data parts
    ``staging/fNNNNN-CCCCC.parquet``; per chunk, ``rows`` are None or (positions,
    occurrence numbers) of the rows whose ids change (``renumber``)."""
    for part, change in zip(parts, rows):
        if part is None or part[2]:  # written already
            continue
        chunk = Path(staging) / f"{part[0]}.arrow"
        with pa.memory_map(str(chunk)) as source:
            table = pa.ipc.open_file(source).read_all()
            if change is not None:
                table = renumber(table, part[1], *change)
            write_table(table, Path(staging) / f"{part[0]}.parquet")
        chunk.unlink()


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
        the ingest stats and the rejected records of bad rows. Files are ingested apart
        (``map_tasks``) when there are several and more than one worker."""
        check_kind(source.kind)
        found = scan(source.path)
        if len(found.files) > 1 and self.workers > 1:
            return self._ingest_files(source, found, staging, on_rows)
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

    def map_tasks(self, fn: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """``fn(*call)`` for every call, yielding (index in ``calls``, result) as each
        finishes; a call that raises a CurateError yields the error instead. ``fn`` is
        a module-level function (it may run in another process)."""
        for k, call in enumerate(calls):
            try:
                yield k, fn(*call)
            except CurateError as err:
                yield k, err

    def _ingest_files(self, source: Read, found: InputFiles, staging: Path,
                      on_rows: Callable[[int], None]) -> tuple[IngestStats, list[dict]]:
        """``ingest`` with each file ingested on its own. A file's ids, kind and column
        types can depend on the files before it (a row repeated from an earlier file gets
        another id): each file's result is checked against the files before it, in input
        order. Its chunks wait as Arrow files until then, and are written as data parts
        with the ids of their rows that repeat rows of earlier files changed
        (``finish_file``; occurrence numbers from ``occurrences``): written once, not
        rewritten. The rare file whose kind, column types or bad rows clash (or that
        failed on its own) is ingested once more, here, after those files, so the parts,
        ids and errors are those of ingesting the files one after another."""
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        files = found.files

        def call(i: int, state: IngestState, final: bool) -> tuple:
            return source, str(files[i]), i, str(staging), state, self.chunk_rows, final

        results: list[Any] = [None] * len(files)
        first = [call(i, IngestState(kind=source.kind), i == 0) for i in range(len(files))]
        for i, result in self.map_tasks(ingest_one_file, first):
            if not isinstance(result, CurateError):  # else raised again below, in input order
                results[i] = result
                on_rows(result[0].rows_read)
        before = IngestState(kind=source.kind)  # after the files so far (ids aside)
        for i in range(len(files)):
            if results[i] is None or before.clash(results[i][1]):  # failed on its own, or
                # could come out otherwise after the files before it: ingested again here
                counted = results[i] is not None
                before.ids = seen_ids([p[1] for r in results[:i] for p in r[3] if p is not None])
                results[i] = ingest_one_file(*call(i, before, True))
                if not counted:
                    on_rows(results[i][0].rows_read)
                before = results[i][1]  # that try went on from ``before``
            else:
                before.absorb(results[i][1])
            results[i] = (results[i][0], None, *results[i][2:])  # its state is in ``before``
        # the ids of rows that repeat rows of earlier files change (each file is an in-order
        # span of the occurrences of its contents: those in earlier files come first)
        numbers = occurrences([np.concatenate([p[1] for p in r[3] if p is not None] or
                                              [np.zeros(0, np.uint64)]) for r in results])
        finish: list[tuple] = []  # finish_file calls
        for i, (number, earlier) in enumerate(numbers):
            parts, rows, start = results[i][3], [], 0
            if all(part is None or part[2] for part in parts):  # ids final, parts written
                continue
            for part in parts:
                n = len(part[1]) if part is not None else 0
                moved = np.flatnonzero(earlier[start:start + n])
                rows.append((moved, number[start:start + n][moved]) if len(moved) else None)
                start += n
            finish.append((str(staging), parts, rows))
        for _, result in self.map_tasks(finish_file, finish):
            if isinstance(result, CurateError):
                raise result
        if not any(r[0].rows_read for r in results):
            raise InputError(f"{source.path}: the input has no rows")
        stats = IngestStats(files=[str(f) for f in files], kind=before.kind, skipped=found.skipped)
        records: list[dict] = []
        n = 0
        for file_stats, _, file_records, parts in results:
            for part in parts:  # the numbering of ingesting the files one after another
                if part is not None:
                    (staging / f"{part[0]}.parquet").rename(staging / f"part-{n:05d}.parquet")
                n += 1
            records.extend(file_records)
            stats.add(file_stats)
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
    keep_heap()
    scorer.setup()


_WORKER_PART: tuple[tuple, pa.Table] | None = None  # the part a worker read last


def _score_in_worker(part: Part, columns: list[str], start: int, rows: int, batch: int
                     ) -> pa.Table:
    """Score rows ``start`` .. ``start + rows`` of a part, ``batch`` rows at a time, read
    here (once per part), so the parent does not read and ship the data."""
    global _WORKER_PART
    assert _WORKER_SCORER is not None
    key = (part.path, tuple(columns))
    if _WORKER_PART is None or _WORKER_PART[0] != key:
        _WORKER_PART = (key, read_part(part, columns))
    table = _WORKER_PART[1].slice(start, rows)
    return pa.concat_tables([score_rows(_WORKER_SCORER, table.slice(i, batch))
                             for i in range(0, max(table.num_rows, 1), batch)])


def _before_fork() -> None:
    """Ready this process to be forked: memory it freed handed back (children start with
    its pages: as few as may be), and pandas imported once here rather than in every
    child (pyarrow imports it on its first array built from Python objects: 0.2 s)."""
    release_freed(0)
    pa.array([0])


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

    def map_tasks(self, fn: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """Tasks in ``workers`` forked processes (ingest: pyarrow only in the children)."""
        if len(calls) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            yield from super().map_tasks(fn, calls)
            return
        _before_fork()
        with ProcessPoolExecutor(min(self.workers, len(calls)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(fn, *call): k for k, call in enumerate(calls)}
            for future in as_completed(futures):
                err = future.exception()
                if err is not None and not isinstance(err, CurateError):
                    raise err
                yield futures[future], err or future.result()

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
        # With parts enough to keep every worker busy a task is a whole part, so each
        # part is read once; with few, a task is one batch (workers share a part's reads).
        ctx = multiprocessing.get_context("fork")
        size = max(self.batch_rows, 2048)
        whole = len(parts) >= 4 * workers
        _before_fork()
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(scorer,)) as pool:
            pending: deque = deque()
            for part in parts:
                rows = part.rows
                span = max(rows, 1) if whole else size
                for start in range(0, rows, span):
                    pending.append(pool.submit(_score_in_worker, part, columns, start, span,
                                               size))
                    if len(pending) >= 2 * workers:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        self.info[scorer.name]["setup"] = scorer.describe()
