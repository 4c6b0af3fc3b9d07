"""DuckDB SQL over a run: views ``data``, ``scores``, ``selected``, ``rejected``.

The views read the run's Parquet through Arrow datasets registered before the
connection is locked down (external access off, configuration locked), so a
query can read the run but cannot write, copy over or delete any file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curate.errors import CurateError
from curate.run import OUTPUT_DIRS, REJECTED_SCHEMA, Run, open_run

FORMATS = ("table", "csv", "json", "parquet")

# The columns a view has when its folder holds no Parquet yet (a failed or
# interrupted run): queries over it still bind and return no rows.
EMPTY_SCHEMAS = {"data": pa.schema([("id", pa.string())]),
                 "scores": pa.schema([("id", pa.string())]),
                 "selected": pa.schema([("id", pa.string())]),
                 "rejected": REJECTED_SCHEMA}


def _source(run: Run, name: str) -> Any:
    """What the view ``name`` reads: the folder's Arrow dataset, or an empty table."""
    ds = run.dataset(name)
    if ds.schema.names:
        return ds
    return EMPTY_SCHEMAS[name].empty_table()


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the run's views, joinable on ``id``."""
    run = open_run(run_dir, require_complete=False)
    con = duckdb.connect(":memory:")
    try:
        for name in OUTPUT_DIRS:
            con.register(f"_{name}_arrow", _source(run, name))
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except (duckdb.Error, pa.ArrowException) as err:
        con.close()
        raise CurateError(f"run {run.path}: cannot open its Parquet for SQL "
                          f"({str(err).splitlines()[0]})") from err
    return con


def _sql_error(err: duckdb.Error) -> CurateError:
    return CurateError(f"SQL error: {str(err).splitlines()[0]}")


class Result:
    """A query's result relation whose execution errors (a failed cast, ``error()``,
    a division by zero found while running) are CurateErrors like the parse errors.

    DuckDB relations are lazy: ``con.sql`` only parses and binds; the query runs
    when the result is shown or fetched. Every method and attribute of the
    relation is available; calls that return a relation return a Result again,
    and ``arrow()`` returns the whole result as a ``pyarrow.Table``.
    """

    def __init__(self, rel: duckdb.DuckDBPyRelation, con: duckdb.DuckDBPyConnection):
        self._rel = rel
        self._con = con  # keeps the connection open as long as the result is used

    @property
    def relation(self) -> duckdb.DuckDBPyRelation:
        return self._rel

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rel, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                out = attr(*args, **kwargs)
                if name == "arrow" and isinstance(out, pa.RecordBatchReader):
                    # DuckDB streams the batches: run the query to the end here, so
                    # an error in a late batch is reported like any other
                    out = out.read_all()
            except duckdb.Error as err:
                raise _sql_error(err) from err
            except (pa.ArrowException, OSError) as err:  # a DuckDB error raised through Arrow
                raise CurateError(f"SQL error: {str(err).splitlines()[0]}") from err
            return Result(out, self._con) if isinstance(out, duckdb.DuckDBPyRelation) else out
        return call

    def __len__(self) -> int:
        return len(self._rel)

    def __repr__(self) -> str:
        try:
            return repr(self._rel)
        except duckdb.Error as err:
            raise _sql_error(err) from err


def query(run_dir: str | Path, sql: str) -> Result:
    """Run one SQL query over a run and return the result relation (lazy, read-only)."""
    con = connect(run_dir)
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        raise _sql_error(err) from err
    if rel is None:
        raise CurateError("the statement returned no rows; only queries (SELECT ...) make sense here")
    return Result(rel, con)
