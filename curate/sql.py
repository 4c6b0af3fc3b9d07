"""DuckDB SQL over a run: views ``data``, ``scores``, ``selected``, ``rejected``.

The views read the run's Parquet through Arrow datasets registered before the
connection is locked down (external access off, configuration locked), so a
query can read the run but cannot write, copy over or delete any file.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import functools
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.run import OUTPUT_DIRS, REJECTED_SCHEMA, Run, _temp_beside, open_run

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


def connect(run_dir: str | Path, *, require_complete: bool = True) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the run's views, joinable on ``id``.

    A run that failed or is unfinished is refused (its views would answer with
    missing rows as if nothing were there) unless ``require_complete=False``, which
    shows what it wrote before it stopped (empty views for folders not written)."""
    run = open_run(run_dir, require_complete=require_complete)
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


def query(run_dir: str | Path, sql: str, *, require_complete: bool = True) -> Result:
    """Run one SQL query over a run and return the result relation (lazy, read-only)."""
    con = connect(run_dir, require_complete=require_complete)
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        raise _sql_error(err) from err
    if rel is None:
        raise CurateError("the statement returned no rows; only queries (SELECT ...) make sense here")
    return Result(rel, con)


# --- writing a result: csv / json / parquet --------------------------------------------------

def plain(value: Any) -> Any:
    """A Python value of a query result as plain JSON data: nested lists and dicts of
    str / int / float / bool / None. NaN and infinities become null (JSON has none),
    bytes become text (UTF-8, or ``base64:`` when they are not text), decimals become
    numbers, dates and times ISO strings, map entries ``{key: value}``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, pa.MonthDayNano):  # an interval
        return f"{value.months} months {value.days} days {value.nanoseconds} ns"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(x, tuple) and len(x) == 2 for x in value):  # a map
            try:
                return {str(k): plain(v) for k, v in value}
            except TypeError:
                pass
        return [plain(v) for v in value]
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    return str(value)


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """A column as strings: nested values as JSON text, anything else via ``plain``."""
    out = []
    for v in col.to_pylist():
        v = plain(v)
        out.append(None if v is None else v if isinstance(v, str)
                   else json.dumps(v, ensure_ascii=False))
    return pa.array(out, pa.string())


def _csv_native(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _csv_native(t.value_type)
    return (pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_date(t) or pa.types.is_time(t)
            or pa.types.is_timestamp(t) or pa.types.is_duration(t))


def _parquet_native(field: pa.Field) -> bool:
    try:
        pq.write_table(pa.table({field.name: pa.array([], field.type)}), io.BytesIO())
    except (pa.ArrowException, ValueError, TypeError):
        return False
    return True


def for_csv(table: pa.Table) -> pa.Table:
    """The table with every column a CSV can hold: lists, structs, maps (every
    ``messages`` column) as JSON text; bytes, intervals and other types as text."""
    if all(_csv_native(f.type) for f in table.schema):
        return table
    return pa.table({f.name: col if _csv_native(f.type) else _as_text(col)
                     for f, col in zip(table.schema, table.columns)})


def for_parquet(table: pa.Table) -> pa.Table:
    """The table with the columns Parquet has no type for (intervals, unions) as text."""
    bad = [f for f in table.schema if not _parquet_native(f)]
    if not bad:
        return table
    return pa.table({f.name: _as_text(col) if f in bad else col
                     for f, col in zip(table.schema, table.columns)})


def json_lines(table: pa.Table) -> Iterator[str]:
    """One JSON object per row (JSON Lines), valid JSON for every column type."""
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield json.dumps(plain(row), ensure_ascii=False)


def _write(table: pa.Table, fmt: str, sink: BinaryIO) -> None:
    if fmt == "parquet":
        pq.write_table(for_parquet(table), sink)
    elif fmt in ("csv", "table"):
        pacsv.write_csv(for_csv(table), sink)
    elif fmt == "json":
        for line in json_lines(table):
            sink.write(line.encode("utf-8") + b"\n")
    else:
        raise CurateError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_result(table: pa.Table, fmt: str, output: str | Path | None) -> None:
    """Write a query result as ``csv``, ``json`` (JSON Lines) or ``parquet`` to the
    file ``output`` (atomically: a failed write leaves no file and never a half one)
    or to stdout (not for parquet)."""
    if output is None:
        if fmt == "parquet":
            raise CurateError("--format parquet needs --output FILE")
        _write(table, fmt, sys.stdout.buffer)
        sys.stdout.flush()
        return
    path = Path(output)
    if path.is_dir():
        raise CurateError(f"--output {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise CurateError(f"--output {path}: folder {path.parent} does not exist")
    try:
        fd, tmp = _temp_beside(path)
    except OSError as err:
        raise CurateError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            _write(table, fmt, fh)
        os.replace(tmp, path)
    except OSError as err:
        raise CurateError(f"cannot write {path}: {err.strerror or err}") from err
    except pa.ArrowException as err:
        raise CurateError(f"cannot write the result as {fmt}: {str(err).splitlines()[0]}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
