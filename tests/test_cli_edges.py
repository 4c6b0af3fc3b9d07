"""The rough edges of the CLI a new user hits, through the
real ``curate`` command on the real sample data:

10. every SQL output format works on every view (nested columns as JSON text in
    CSV), and a failed write leaves no file;
11. a typo is refused before any run directory exists, and a failed run does not
    block the corrected command;
12. SQL on a failed run is refused like explain and report;
13. explain shows the step that dropped a row, its predicate and the row's values;
14. ``curate scorers`` shows required options and whole descriptions;
15. rejection reasons are stable (one group per rule), the row's value is in detail;
16. no pipeline / a pipeline that raises: one ``error:`` line, traceback with --debug;
17. progress as plain lines when stderr is not a terminal, no transformers bars,
    one summary line, ``report --quiet``.

Only the model-free scorers (quality, exact, minhash) run here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SAMPLE_PREF, SAMPLE_SFT, cli
from conftest import curate_cli as ok

from curate import read
from curate.sql import connect

csv.field_size_limit(sys.maxsize)
SFT_PIPELINE = ROOT / "pipelines" / "sft_select.py"
FILTER = "not quality_refusal AND quality_ngram_repetition <= 0.1"


def error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The one-line error contract: exit 2, no traceback, ONE stderr line `error: ...`."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in re.split(r"[\r\n]+", proc.stderr) if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for name in names:
        assert name in lines[0], f"{name!r} not in: {lines[0]}"
    return lines[0]


def manifest(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "manifest.json").read_text())


def sql_rows(run_dir: Path, query: str) -> list[tuple]:
    con = connect(run_dir)
    try:
        return con.sql(query).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """sample_data/sft (300 alpaca rows): quality + minhash scores, a filter, exact
    dedup and a threshold selection, so rows are dropped by all three kinds of step."""
    tmp = tmp_path_factory.mktemp("edges")
    run = (read(SAMPLE_SFT).score("quality").score("minhash").filter(FILTER)
           .dedup("exact").select("threshold", by="quality_non_alnum_ratio", max=0.08)
           .write(tmp / "sft", cache_dir=tmp / "cache", quiet=True))
    return run.path


@pytest.fixture(scope="module")
def pref_run(tmp_path_factory) -> Path:
    """sample_data/preference (300 sharegpt DPO pairs) deduplicated exactly, by the CLI."""
    tmp = tmp_path_factory.mktemp("edges_pref")
    ok("dedup", SAMPLE_PREF, "--method", "exact", "-o", tmp / "pref", "-q", "--cache-dir", tmp / "c")
    return tmp / "pref"


# --- 10: every output format on every view --------------------------------------------------

def test_csv_of_nested_columns_is_json_text(pref_run, tmp_path):
    """`select * from selected --format csv` used to crash on the messages columns."""
    want = {r["id"]: r for r in pq.read_table(pref_run / "data").to_pylist()}
    n_selected = sql_rows(pref_run, "select count(*) from selected")[0][0]
    assert n_selected == 295  # 5 of the 300 pairs are exact duplicates
    out = tmp_path / "selected.csv"
    proc = ok("sql", pref_run, "select * from selected", "--format", "csv", "-o", out)
    assert proc.stdout == "" and out.stat().st_size > 100_000
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == n_selected
    for row in rows:
        orig = want[row["id"]]
        for col in ("prompt", "chosen", "rejected", "conversations"):
            assert json.loads(row[col]) == orig[col], (row["id"], col)  # byte for byte
        assert int(row["source_row"]) == orig["source_row"]
    # to stdout as well
    text = ok("sql", pref_run, "select id, chosen from selected order by id limit 3", "-f", "csv").stdout
    first = list(csv.DictReader(io.StringIO(text)))[0]
    assert json.loads(first["chosen"])[0]["role"] == "assistant"


@pytest.mark.parametrize("view", ["data", "scores", "selected", "rejected"])
def test_every_format_on_every_view(sft_run, pref_run, tmp_path, view):
    """Through the CLI on the preference run, and through the same writer in-process
    on the SFT run (to keep the test short)."""
    from curate.sql import query, write_result

    for run in (sft_run, pref_run):
        n = sql_rows(run, f"select count(*) from {view}")[0][0]
        assert n > 0
        for fmt in ("csv", "json", "parquet"):
            out = tmp_path / f"{run.name}_{view}.{fmt}"
            if run == pref_run:
                ok("sql", run, f"select * from {view}", "-f", fmt, "-o", out)
            else:
                write_result(query(run, f"select * from {view}").arrow(), fmt, out)
            if fmt == "csv":
                got = len(list(csv.DictReader(out.open(encoding="utf-8", newline=""))))
            elif fmt == "json":
                got = len([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])
            else:
                got = pq.read_metadata(out).num_rows
            assert got == n, (run.name, view, fmt)
        table = ok("sql", run, f"select * from {view}", "--max-rows", "3").stdout
        if n > 10:  # cut to 3 rows, with the count
            assert f"{n} rows" in table
        else:  # small results are shown whole
            assert all(i in table for (i,) in sql_rows(run, f"select id from {view}"))


def test_minhash_band_lists_in_csv_and_json(sft_run):
    ids_bands = sql_rows(sft_run, "select id, minhash_bands from scores order by id limit 5")
    text = ok("sql", sft_run, "select id, minhash_bands from scores order by id limit 5", "-f", "csv").stdout
    got = [(r["id"], json.loads(r["minhash_bands"])) for r in csv.DictReader(io.StringIO(text))]
    assert got == [(i, list(b)) for i, b in ids_bands]
    assert all(len(b) == 9 for _, b in got)  # 9 bands x 13 rows for threshold 0.8
    lines = ok("sql", sft_run, "select id, minhash_bands from scores order by id limit 5",
               "-f", "json").stdout.splitlines()
    assert [(d["id"], d["minhash_bands"]) for d in map(json.loads, lines)] == got


ODD = ("select interval 1 day as span, 12345678901234567890::hugeint as big, "
       "'a'::enum('a', 'b') as label, union_value(k := 1) as u, map {'x': 1} as m, "
       "'\\xAA'::blob as raw, 'nan'::double as nan_value, [1.0, 2.0]::float[2] as arr, "
       "{'x': 1} as st, null as nothing, time '10:00' as t, date '2020-01-02' as d")


def test_types_csv_and_parquet_have_no_type_for(sft_run, tmp_path):
    """Intervals, unions, maps, blobs, fixed arrays, NaN: no format crashes, JSON stays valid."""
    rows = list(csv.DictReader(io.StringIO(ok("sql", sft_run, ODD, "-f", "csv").stdout)))
    assert len(rows) == 1
    r = rows[0]
    assert r["span"] == "0 months 1 days 0 ns" and r["big"] == "12345678901234567890"
    assert json.loads(r["m"]) == {"x": 1} and json.loads(r["arr"]) == [1.0, 2.0]
    assert json.loads(r["st"]) == {"x": 1} and r["raw"] == "base64:qg==" and r["d"] == "2020-01-02"
    line = ok("sql", sft_run, ODD, "-f", "json").stdout.strip()
    d = json.loads(line)  # strict JSON: NaN became null
    assert d["nan_value"] is None and d["big"] == 12345678901234567890 and d["u"] == 1
    assert d["m"] == {"x": 1} and d["t"] == "10:00:00" and d["nothing"] is None
    out = tmp_path / "odd.parquet"
    ok("sql", sft_run, ODD, "-f", "parquet", "-o", out)
    back = pq.read_table(out).to_pylist()[0]
    assert back["span"] == "0 months 1 days 0 ns" and back["arr"] == [1.0, 2.0]
    assert ok("sql", sft_run, ODD).returncode == 0  # the table


def test_a_failed_write_leaves_no_file(sft_run, tmp_path):
    out = tmp_path / "result.csv"
    late = ("select case when i = 2999999 then error('late failure') else i end as x "
            "from range(3000000) t(i)")
    error_line(cli("sql", sft_run, late, "-f", "csv", "-o", out), "late failure")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.write_text("the previous result\n")  # a failure never touches an existing file
    error_line(cli("sql", sft_run, late, "-f", "csv", "-o", out), "late failure")
    assert out.read_text() == "the previous result\n" and len(list(tmp_path.iterdir())) == 1
    error_line(cli("sql", sft_run, "select 1", "-f", "csv", "-o", tmp_path / "no" / "x.csv"),
               "does not exist")
    error_line(cli("sql", sft_run, "select 1", "-f", "parquet"), "--output")


# --- 11: typos are refused before anything exists; a failed run does not block -------------

def test_typos_leave_no_run_directory(sft_run, tmp_path):
    out = tmp_path / "out"
    error_line(cli("dedup", SAMPLE_SFT, "--method", "semantic", "--eps", "5", "-o", out, "-q"),
               "--eps 5", "(0, 1)")
    error_line(cli("dedup", SAMPLE_SFT, "--method", "minhash", "--threshold", "80", "-o", out),
               "--threshold 80")
    line = error_line(cli("dedup", SAMPLE_SFT, "--method", "exact", "--keep", "badcol", "-o", out),
                      "--keep 'badcol'")
    assert "exact_chars" in line and "instruction" in line  # what it could be
    error_line(cli("select", sft_run, "--strategy", "topk", "-o", out), "exactly one of by")
    error_line(cli("select", sft_run, "--strategy", "deita", "-o", out), "needs option(s) by=")
    error_line(cli("select", sft_run, "--strategy", "threshold", "--option", "by=nope",
                   "--option", "max=1", "-o", out), "unknown column 'nope'")
    error_line(cli("select", sft_run, "-o", out), "--strategy")  # a click usage error, one line
    assert not out.exists()


def test_failed_run_is_replaced_by_the_corrected_command(tmp_path):
    out = tmp_path / "run"
    # the SFT pipeline on preference data fails after the run directory exists
    error_line(cli("run", SFT_PIPELINE, "-i", SAMPLE_PREF, "-o", out, "-q", "--set", "use_ifd=false"),
               "preference")
    assert manifest(out)["status"] == "failed"
    # the corrected command needs no --overwrite
    proc = ok("score", SAMPLE_PREF, "-s", "quality", "-o", out, "--cache-dir", tmp_path / "c")
    assert "replacing a failed run" in proc.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["counts"]["input"] == 300 and m["input"]["kind"] == "preference"
    # a complete different run is still refused, and so is one that may still be running
    error_line(cli("ingest", SAMPLE_SFT, "-o", out, "-q"), "already holds a different run (complete:",
               "--overwrite")
    m["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(m))
    error_line(cli("ingest", SAMPLE_SFT, "-o", out, "-q"), "different run (running or killed:")
    assert manifest(out)["counts"]["input"] == 300


# --- 12: SQL on a failed run --------------------------------------------------------------

def test_sql_refuses_a_failed_run_like_explain_and_report(tmp_path):
    out = tmp_path / "run"
    error_line(cli("run", SFT_PIPELINE, "-i", SAMPLE_PREF, "-o", out, "-q", "--set", "use_ifd=false"))
    for args in (("sql", out, "select count(*) from selected"), ("explain", out, "0"),
                 ("report", out)):
        line = error_line(cli(*args), str(out), "failed")
        assert "run the same command again" in line
    # asked for explicitly, it shows what the run wrote, with a warning
    proc = ok("sql", out, "select count(*) from selected", "-f", "csv", "--allow-incomplete")
    assert proc.stdout.splitlines()[1] == "0" and proc.stderr.startswith("warning:")


# --- 13: explain shows the step, the predicate and the row's values -------------------------

def test_explain_names_the_failed_part_of_a_filter(sft_run):
    row_id, ngram, refusal = sql_rows(
        sft_run, "select r.id, s.quality_ngram_repetition, s.quality_refusal from rejected r "
                 "join scores s using (id) where r.stage = 'filter' and not s.quality_refusal "
                 "order by r.id limit 1")[0]
    assert ngram > 0.1 and refusal is False
    text = ok("explain", sft_run, row_id).stdout
    assert f"step 3 of 6: filter '{FILTER}'" in text
    fail = re.search(r"^\s+FAIL\s+quality_ngram_repetition <= 0\.1\s+quality_ngram_repetition = (\S+)$",
                     text, re.M)
    assert fail and math.isclose(float(fail[1]), ngram, rel_tol=1e-5), text
    assert re.search(r"^\s+pass\s+not quality_refusal\s+quality_refusal = False$", text, re.M), text
    # vectors and lists are summarised, not dumped
    assert "score minhash_bands = [9 ints]" in text
    assert "score minhash_sketch = [128 bytes]" in text
    assert len(max(text.splitlines(), key=len)) < 700
    # the rejected row records the values too, with a reason the same for every row
    detail = sql_rows(sft_run, f"select detail from rejected where id = '{row_id}'")[0][0]
    assert detail == f"quality_refusal = false, quality_ngram_repetition = {ngram}"


def test_explain_a_refusal_and_a_select_step(sft_run):
    refusal_id = sql_rows(sft_run, "select r.id from rejected r join scores s using (id) "
                                   "where r.stage = 'filter' and s.quality_refusal limit 1")[0][0]
    text = ok("explain", sft_run, refusal_id).stdout
    assert re.search(r"^\s+FAIL\s+not quality_refusal\s+quality_refusal = True$", text, re.M), text
    sel_id, ratio = sql_rows(sft_run, "select r.id, s.quality_non_alnum_ratio from rejected r "
                                      "join scores s using (id) where r.stage = 'select' limit 1")[0]
    text = ok("explain", sft_run, sel_id).stdout
    assert "step 6 of 6: select threshold (budget None) by=quality_non_alnum_ratio max=0.08" in text
    assert f"quality_non_alnum_ratio = {ratio:.6g}" in text and ratio > 0.08


def test_vectors_are_summarised():
    from curate.explain import summarize

    v = np.random.default_rng(0).normal(size=384)
    assert summarize((v / np.linalg.norm(v)).tolist()) == "[384 floats, norm 1.00]"
    assert summarize((3 * v / np.linalg.norm(v)).tolist()) == "[384 floats, norm 3.00]"
    assert summarize("x" * 1000).endswith("… (1,000 chars)")


# --- 14: curate scorers --------------------------------------------------------------------

def test_scorers_lists_required_options_and_whole_descriptions():
    from curate.scorer import SCORERS, description, scorer_names

    scorer_names()  # imports the scorers package, which registers them
    # scorers the tests register themselves (tests/_engines.py) are not in the CLI's process
    SCORERS = {n: c for n, c in SCORERS.items() if not n.startswith("test_")}  # noqa: N806
    text = ok("scorers").stdout
    assert "_MISSING_TYPE" not in text and "object at 0x" not in text
    blocks = {m[1]: m[2] for m in re.finditer(r"^(\w+)  \(v\d+\)\n((?:    .*\n?)*)", text, re.M)}
    assert set(blocks) == set(SCORERS) and len(blocks) >= 12
    for name, option in (("contamination", "against"), ("dsir", "target"),
                         ("target_similarity", "target")):
        assert f"{option} (required)" in blocks[name], blocks[name]
    for name, cls in SCORERS.items():
        doc = " ".join(blocks[name].split("\n    options:")[0].split())
        assert doc == description(cls) and doc.endswith((".", ")")), (name, doc)
    # paragraphs over several docstring lines are shown whole, not cut at the first line
    longer = [n for n, cls in SCORERS.items()
              if len(description(cls)) > len(cls.__doc__.strip().splitlines()[0]) + 10]
    assert len(longer) >= 3, longer


# --- 15: stable reasons ------------------------------------------------------------------------

def test_reasons_are_stable_and_values_are_in_detail(sft_run):
    groups = sql_rows(sft_run, "select stage, reason, count(*), count(detail) "
                               "from rejected group by all order by 1")
    n_rejected = sql_rows(sft_run, "select count(*) from rejected")[0][0]
    assert n_rejected >= 40 and len(groups) == 3, groups  # one reason per step
    (_, dedup_reason, n_dup, _), (_, f_reason, n_f, f_details), (_, s_reason, n_s, s_details) = groups
    assert dedup_reason == "exact duplicate" and n_dup == 1
    assert f_reason == FILTER and n_f == 25 and f_details == n_f
    assert s_reason == "threshold: quality_non_alnum_ratio > max 0.08" and s_details == n_s
    over = sql_rows(sft_run, "select count(*) from rejected r join scores s using (id) "
                             "where r.stage = 'select' and s.quality_non_alnum_ratio > 0.08 and "
                             "r.detail = 'quality_non_alnum_ratio = ' || s.quality_non_alnum_ratio")
    assert over[0][0] == n_s == 38


def test_deita_reason_is_stable_with_cosine_in_detail():
    """Deita over hashed bag-of-words vectors of the 300 real sample rows (a stand-in
    for sentence embeddings that needs no model): every row dropped for similarity has
    the same reason, and its detail holds the cosine the vectors give and the kept row."""
    import polars as pl

    from curate import selection

    rows = pq.read_table(SAMPLE_SFT / "alpaca_en_demo.parquet").to_pylist()
    dim = 64
    x = np.zeros((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        for word in f"{r['instruction']} {r['input']} {r['output']}".lower().split():
            x[i, hash(word) % dim] += 1  # the hash seed changes the vectors, not the rule
    frame = pl.DataFrame({"id": [f"row{i}" for i in range(len(rows))],
                          "words": [len(r["output"].split()) for r in rows],
                          "embedding": x.tolist()})
    d = selection.select(frame, "deita", None, {"by": "words", "threshold": 0.8})
    dropped = d.reason.drop_nulls().to_list()
    assert len(dropped) > 50 and set(dropped) == {"too similar to a kept row (cosine > 0.8)"}
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = {f"row{i}": i for i in range(len(rows))}
    for i in np.flatnonzero(d.reason.is_not_null().to_numpy()):
        rep = d.representative[int(i)]
        cos = float(xn[i] @ xn[index[rep]])
        assert d.detail[int(i)] == f"cosine {cos:.3f} to {rep}" and cos > 0.8


# --- 16: no pipeline, a pipeline that raises ---------------------------------------------------

def test_run_without_a_pipeline_or_with_a_broken_one(tmp_path):
    error_line(cli("run"), "PIPELINE_FILE")
    bad = tmp_path / "bad.py"
    bad.write_text("from curate import read\n\nraise ValueError('budget too big')\n")
    line = error_line(cli("run", bad, "-i", SAMPLE_SFT, "-o", tmp_path / "out"),
                      f"{bad}:3", "ValueError: budget too big", "--debug")
    assert not (tmp_path / "out").exists(), line
    built = tmp_path / "built.py"
    built.write_text("from curate import Param, pipeline, read\n\n\n@pipeline(n=Param(1))\n"
                     "def p(n):\n    return read().select('random', budget=10 // (n - 1))\n\n\n"
                     "pipeline = p\n")
    error_line(cli("run", built, "-i", SAMPLE_SFT, "-o", tmp_path / "out"),
               f"{built}:6", "ZeroDivisionError")
    broken = tmp_path / "broken.py"
    broken.write_text("def x(:\n")
    error_line(cli("run", broken, "--help"), f"{broken}:1", "SyntaxError")
    # the traceback, on request
    for proc in (cli("--debug", "run", bad, "-i", SAMPLE_SFT, "-o", tmp_path / "out"),
                 ok("run", bad, "-i", SAMPLE_SFT, "-o", tmp_path / "out", check=False,
                    env={"CURATE_DEBUG": "1"})):
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr and 'ValueError: budget too big' in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: pipeline file")


# --- 17: progress, transformers' bars, one summary line, report --quiet -------------------------

def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path):
    proc = ok("score", SAMPLE_SFT, "-s", "quality", "-o", tmp_path / "run", "--no-cache",
              "--batch-rows", "50", "--workers", "1", env={"CURATE_PROGRESS_INTERVAL": "0"})
    err = proc.stderr
    assert "\r" not in err and "\x1b" not in err
    seen = [int(m[1]) for m in re.finditer(r"^score quality: (\d+)/300 rows \(\d+%", err, re.M)]
    assert seen[:6] == [50, 100, 150, 200, 250, 300], err
    assert re.search(r"^score quality: done, 300/300 rows \(100%", err, re.M), err
    assert len(re.findall(r"selected 300 .*of 300", err)) == 1, err  # the summary, once
    assert proc.stdout.strip() == str(tmp_path / "run")
    # with the default interval a short job prints no progress lines at all
    quiet_bar = ok("score", SAMPLE_SFT, "-s", "quality", "-o", tmp_path / "run2", "--no-cache",
                   "--workers", "1").stderr
    assert "rows (" not in quiet_bar and "\r" not in quiet_bar
    assert ok("score", SAMPLE_SFT, "-s", "quality", "-o", tmp_path / "run3", "-q",
              "--cache-dir", tmp_path / "c").stderr == ""


def test_transformers_bars_and_messages_are_silenced():
    code = ("import sys\n"
            "from curate.progress import Log\n"
            "if sys.argv[1] == 'curate': Log()\n"
            "from transformers.utils import logging\n"
            "import huggingface_hub.utils as hub\n"
            "print(logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled(),"
            " logging.get_verbosity())\n")
    env_off = {k: v for k, v in __import__("os").environ.items()
               if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    run = [subprocess.run([sys.executable, "-c", code, who], capture_output=True, text=True,
                          env=env_off, cwd=ROOT) for who in ("curate", "plain")]
    assert run[0].stdout.split() == ["False", "True", "40"], run[0].stderr  # 40: ERROR
    assert run[1].stdout.split()[:2] == ["True", "False"], run[1].stderr  # the test can fail


def test_report_quiet(sft_run, tmp_path):
    page = tmp_path / "page.html"
    loud = ok("report", sft_run, "-o", page)
    assert loud.stdout.strip() == str(page) and loud.stderr.startswith("report: ")
    quiet = ok("report", sft_run, "-o", page, "--quiet")
    assert quiet.stdout.strip() == str(page) and quiet.stderr == ""
    assert page.stat().st_size > 100_000


def test_train_config_file(tmp_path):
    """``curate finetune/experiment --config FILE``: the file's hyper-parameters, the
    flags given over them; a file that is not a JSON object is one clear error."""
    from curate.cli import _train_config
    from curate.errors import CurateError

    good = tmp_path / "hp.json"
    good.write_text(json.dumps({"lora_r": 8, "learning_rate": 1e-4}))
    config = _train_config(str(good), {"lora_r": 4, "epochs": None})
    assert (config.lora_r, config.learning_rate, config.epochs) == (4, 1e-4, 1.0)
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(CurateError, match="expected a JSON object"):
        _train_config(str(bad), {})
