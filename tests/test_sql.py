"""SQL over a run: the four views joined on id, the output formats, the Python
connection, and the promise that SQL cannot write, copy or read outside the run.

The run is built once from a real file (alpaca_eval eval_set: 805 rows, 2 with an
empty reference answer) with the model-free ``quality`` scorer and a filter, so
every view has rows: data, scores, selected, and rejected (ingest + filter).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import DATA, ROOT, cli
from conftest import curate_cli as ok

import curate
from curate import CurateError, read
from curate.sql import query

EVAL_SET = DATA / "alpaca_eval" / "eval_set.parquet"
ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"


def one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in re.split(r"[\r\n]+", proc.stderr) if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def csv_value(proc: subprocess.CompletedProcess) -> int:
    """The single value of a ``--format csv`` result."""
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert len(rows) == 2, proc.stdout
    return int(rows[1][0])


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sql") / "run"
    r = (read(EVAL_SET).score("quality").filter("not quality_truncated", name="truncated")
         .write(out, quiet=True, cache_dir=False))
    m = r.manifest()
    assert m["status"] == "complete"
    return r


@pytest.fixture(scope="module")
def counts(run):
    m = run.manifest()["counts"]
    pq_rows = {name: sum(pq.read_metadata(p).num_rows for p in run.dir(name).glob("*.parquet"))
               for name in ("data", "scores", "selected", "rejected")}
    return {**m, **{f"pq_{k}": v for k, v in pq_rows.items()}}


# --- queries and views ------------------------------------------------------------

def test_count_selected(run, counts):
    proc = ok("sql", run.path, "select count(*) from selected")
    assert str(counts["pq_selected"]) in proc.stdout  # the default table format
    assert csv_value(ok("sql", run.path, "select count(*) from selected", "-f", "csv")) \
        == counts["selected"] == counts["pq_selected"]


def test_views_join_on_id(run, counts):
    n_sel, n_rej, n_in = counts["selected"], counts["rejected"], counts["input"]
    n_ingest_rej = counts["ingest_rejected"]
    assert 0 < n_ingest_rej < n_rej < n_in  # the run has rejects of both stages

    con = curate.connect(run.path)

    def q(sql: str) -> int:
        return con.sql(sql).fetchall()[0][0]

    # through the CLI
    assert csv_value(ok("sql", run.path, "select count(*) from selected join scores using (id)",
                        "-f", "csv")) == n_sel
    assert csv_value(ok("sql", run.path, "select count(*) from (select id from selected "
                        "union all select id from rejected)", "-f", "csv")) == n_in
    # and the same views through the Python connection
    assert q("select count(*) from selected join scores using (id)") == n_sel
    assert q("select count(*) from data join scores using (id)") == n_in - n_ingest_rej
    assert q("select count(*) from data") == counts["pq_data"] == n_in - n_ingest_rej
    # every input row is in exactly one of selected / rejected
    assert q("select count(*) from selected join rejected using (id)") == 0
    assert q("select count(*) from (select id from selected union select id from rejected)") == n_in
    # rows dropped by the filter are in data and carry their scores and reason
    assert q("select count(*) from rejected join data using (id) join scores using (id) "
             "where rejected.stage = 'filter' and reason = 'truncated' "
             "and quality_truncated") == n_rej - n_ingest_rej
    assert q("select count(*) from rejected where stage = 'ingest' "
             "and id not in (select id from data)") == n_ingest_rej
    assert q("select count(*) from selected join scores using (id) "
             "where quality_truncated") == 0


def test_formats(run, counts, tmp_path):
    sql = "select id, quality_ngram_repetition from scores order by id limit 7"
    rows = list(csv.DictReader(io.StringIO(ok("sql", run.path, sql, "-f", "csv").stdout)))
    js = [json.loads(ln) for ln in ok("sql", run.path, sql, "-f", "json").stdout.splitlines()]
    out = tmp_path / "result.parquet"
    ok("sql", run.path, sql, "-f", "parquet", "-o", out)
    pt = pq.read_table(out).to_pylist()
    assert len(rows) == len(js) == len(pt) == 7
    assert [r["id"] for r in rows] == [r["id"] for r in js] == [r["id"] for r in pt]
    assert [float(r["quality_ngram_repetition"]) for r in rows] == \
        pytest.approx([r["quality_ngram_repetition"] for r in pt])
    assert [r["quality_ngram_repetition"] for r in js] == \
        pytest.approx([r["quality_ngram_repetition"] for r in pt])


def test_whole_view_as_parquet_and_json_file(run, counts, tmp_path):
    full = tmp_path / "selected.parquet"
    ok("sql", run.path, "select * from selected", "-f", "parquet", "-o", full)
    t = pq.read_table(full)
    assert t.num_rows == counts["selected"]
    assert {"id", "messages", "instruction", "output"} <= set(t.column_names)
    ok("sql", run.path, "select id from rejected", "-f", "json", "-o", tmp_path / "r.json")
    lines = (tmp_path / "r.json").read_text().splitlines()
    assert len(lines) == counts["rejected"] and all(set(json.loads(x)) == {"id"} for x in lines)


def test_parquet_format_needs_an_output_file(run):
    one_line_error(cli("sql", run.path, "select 1", "-f", "parquet"), "--output")


def test_python_connection_has_the_same_views(run, counts):
    con = curate.connect(run.path)
    assert isinstance(con, duckdb.DuckDBPyConnection)
    assert con.sql("select count(*) from selected").fetchall()[0][0] == counts["selected"]
    assert con.sql("select count(*) from rejected").fetchall()[0][0] == counts["rejected"]
    assert con.sql("select count(*) from selected join scores using (id)").fetchall()[0][0] \
        == counts["selected"]
    views = {r[0] for r in con.sql("select view_name from duckdb_views() "
                                   "where not internal").fetchall()}
    assert {"data", "scores", "selected", "rejected"} <= views
    cli_ids = [r[0] for r in csv.reader(io.StringIO(
        ok("sql", run.path, "select id from rejected order by id", "-f", "csv").stdout))][1:]
    assert len(cli_ids) == counts["rejected"]
    assert [r[0] for r in con.sql("select id from rejected order by id").fetchall()] == cli_ids
    # query() is the same over the API
    assert query(run.path, "select count(*) from data").fetchall()[0][0] == counts["pq_data"]


# --- read-only ------------------------------------------------------------------------

def attacks(run_path: Path, tmp: Path) -> list[str]:
    return [
        f"COPY (select 1) TO '{run_path}/selected/x.parquet'",
        f"COPY (select 1 as id) TO '{run_path}/selected/part-00000.parquet' (FORMAT parquet)",
        f"COPY selected TO '{tmp}/stolen.parquet'",
        f"COPY (select * from rejected) TO '{tmp}/out.csv'",
        f"COPY (select 1) TO '{run_path}/manifest.json'",
        "select * from read_csv('/etc/passwd')",
        "select * from read_text('/etc/hostname')",
        f"select * from read_parquet('{run_path}/data/*.parquet')",
        f"select * from '{run_path}/selected/part-00000.parquet'",
        "select * from glob('/*')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        f"SET temp_directory = '{tmp}/spill'",
        f"ATTACH '{tmp}/new.duckdb' AS x",
        f"EXPORT DATABASE '{tmp}/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"select 1; COPY (select 1) TO '{tmp}/second.csv'",
    ]


ATTACKS = attacks(Path("RUN"), Path("TMP"))


@pytest.mark.parametrize("template", ATTACKS)
def test_sql_cannot_write_or_read_outside_the_run(run, tmp_path, template):
    tmp = tmp_path / "elsewhere"
    tmp.mkdir()
    sql = template.replace("RUN", str(run.path)).replace("TMP", str(tmp))
    before = tree_hashes(run.path)
    one_line_error(cli("sql", run.path, sql), "SQL error")
    con = curate.connect(run.path)
    with pytest.raises(duckdb.Error):
        con.execute(sql)
    con.close()
    with pytest.raises(CurateError):
        query(run.path, sql)
    assert tree_hashes(run.path) == before, "a SQL statement changed the run's files"
    assert list(tmp.iterdir()) == [], "a SQL statement wrote a file"
    assert not (ROOT / ".tmp").exists()


def test_connection_stays_locked_after_an_error(run):
    con = curate.connect(run.path)
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert con.sql("select current_setting('enable_external_access')").fetchall()[0][0] is False
    with pytest.raises(duckdb.Error):
        con.execute("select * from read_csv('/etc/passwd')")
    assert con.sql("select count(*) from selected").fetchall()[0][0] > 0


# --- errors -----------------------------------------------------------------------------

def test_syntax_error_is_one_line(run):
    one_line_error(cli("sql", run.path, "selec count(*) from selected"), "SQL error", "selec")
    one_line_error(cli("sql", run.path, "select nope from selected"), "SQL error", "nope")
    one_line_error(cli("sql", run.path, "select * from no_such_view"), "no_such_view")


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_error_while_the_query_runs_is_one_line(run, fmt, tmp_path):
    """Errors DuckDB finds only while executing (after parsing and binding)."""
    extra = ("-o", tmp_path / "x.parquet") if fmt == "parquet" else ()
    one_line_error(cli("sql", run.path, "select cast(id as integer) from selected",
                       "-f", fmt, *extra), "SQL error", "Conversion")
    assert not (tmp_path / "x.parquet").exists()


def test_error_in_a_late_batch_is_one_line(run, tmp_path):
    """DuckDB streams Arrow batches: an error after the first batches still gives
    one error line, not a traceback."""
    sql = ("select case when i = 2999999 then error('late failure') else i end as x "
           "from range(3000000) t(i)")
    one_line_error(cli("sql", run.path, sql, "-f", "csv", "-o", tmp_path / "x.csv"),
                   "late failure")


def test_sql_on_a_directory_that_is_not_a_run(tmp_path):
    one_line_error(cli("sql", tmp_path, "select 1"), str(tmp_path), "manifest.json")
    one_line_error(cli("sql", tmp_path / "missing", "select 1"), "does not exist")


def test_sql_on_a_failed_run_with_missing_folders(tmp_path):
    """A run that failed during ingest has no selected/scores folders; SQL over it is
    refused unless asked for (--allow-incomplete, to look at what happened), and
    then the views are empty."""
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pq.read_table(ALPACA).slice(0, 20), inp / "a.parquet")
    (inp / "b.parquet").write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "run"
    proc = cli("ingest", inp, "-o", out, "-q")
    assert proc.returncode != 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    one_line_error(cli("sql", out, "select count(*) from selected"), str(out), "failed")
    assert csv_value(ok("sql", out, "select count(*) from selected join rejected using (id)",
                        "-f", "csv", "--allow-incomplete")) == 0
    con = curate.connect(out, require_complete=False)
    for view in ("data", "scores", "selected", "rejected"):
        assert con.sql(f"select count(*) from {view}").fetchall()[0][0] == 0
    assert "reason" in [r[0] for r in con.sql("describe rejected").fetchall()]


def test_run_files_honour_the_umask(run):
    old = os.umask(0o022)
    os.umask(old)
    want = 0o666 & ~old
    modes = {str(p.relative_to(run.path)): p.stat().st_mode & 0o777
             for p in run.path.rglob("*") if p.is_file()}
    assert modes and all(m == want for m in modes.values()), modes
