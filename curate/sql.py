"""DuckDB SQL over a run: views ``data``, ``scores``, ``selected``, ``rejected``.

The views read the run's Parquet through Arrow datasets registered before the
connection is locked down (external access off, configuration locked), so a
query can read the run but cannot write, copy over or delete any file.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from curate.errors import CurateError
from curate.run import OUTPUT_DIRS, open_run

FORMATS = ("table", "csv", "json", "parquet")


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the run's views, joinable on ``id``."""
    run = open_run(run_dir, require_complete=False)
    con = duckdb.connect(":memory:")
    for name in OUTPUT_DIRS:
        con.register(f"_{name}_arrow", run.dataset(name))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(run_dir: str | Path, sql: str) -> duckdb.DuckDBPyRelation:
    """Run one SQL query over a run and return the result relation."""
    con = connect(run_dir)
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        raise CurateError(f"SQL error: {str(err).splitlines()[0]}") from err
    if rel is None:
        raise CurateError("the statement returned no rows; only queries (SELECT ...) make sense here")
    return rel
