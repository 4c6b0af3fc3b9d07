"""The analysis report: `curate report RUN` writes a self-contained RUN/report.html.

A real run over 300 Alpaca rows (plus 15 re-spaced, upper-cased copies that
MinHash finds) with quality, text_stats, embedding, a filter, a dedup and a
select; the page is checked as HTML and, where Chromium is installed, rendered
in headless Chromium (no script errors, every plot drawn, no network).
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import DATA, curate_cli
from curate import connect, read
from curate.report import Threshold, parse_thresholds, pipeline_thresholds, write_report

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
N_ROWS, N_COPIES = 300, 15
FILTER = "quality_ngram_repetition <= 0.2 AND not quality_refusal"
SCORE_PLOTS = ["quality_ngram_repetition", "quality_line_repetition", "quality_non_alnum_ratio",
               "quality_empty_response", "quality_truncated", "quality_refusal",
               "text_stats_chars", "text_stats_words", "text_stats_turns",
               "text_stats_response_chars", "text_stats_response_words",
               "minhash_shingles", "minhash_chars"]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    rows = pl.read_parquet(ALPACA).head(N_ROWS)
    copies = rows.head(N_COPIES).with_columns(  # re-spaced, upper-cased: near-duplicates
        ("  " + pl.col("output").str.replace_all(". ", ".   ", literal=True).str.to_uppercase()
         + " ").alias("output"))
    (tmp / "in").mkdir()
    pl.concat([rows, copies]).write_parquet(tmp / "in" / "rows.parquet")
    run = (read(tmp / "in")
           .score("quality")
           .score("text_stats", tokenizer=None)
           .score("embedding", fields="prompt", max_seq_length=64)  # short texts: fast
           .filter(FILTER, name="quality")
           .dedup("minhash")
           .select("random", budget=200, seed=0)
           .write(tmp / "run", cache_dir=tmp / "cache", quiet=True))
    out = curate_cli("report", run.path)
    assert out.stdout.strip() == str(run.path / "report.html")
    return run.path


def page_of(run: Path) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def test_parse_thresholds():
    t = parse_thresholds("quality_ngram_repetition <= 0.3", "rep")
    assert t == [Threshold("quality_ngram_repetition", "<=", 0.3, "rep")]
    assert parse_thresholds("0.1 < x AND x <= 5e1") == [Threshold("x", ">", 0.1, ""),
                                                         Threshold("x", "<=", 50.0, "")]
    assert parse_thresholds("not quality_refusal") == [Threshold("quality_refusal", "=", False, "")]
    assert parse_thresholds('("a b" between 1 and 2)') == [Threshold("a b", ">=", 1.0, ""),
                                                          Threshold("a b", "<=", 2.0, "")]
    assert parse_thresholds("x = true and y > -2") == [Threshold("x", "=", True, ""),
                                                       Threshold("y", ">", -2.0, "")]
    # an OR has no single cut; unreadable parts are skipped, readable ones kept
    assert parse_thresholds("a > 1 OR b < 2") == []
    assert parse_thresholds("length(x) > 3 and y < 1") == [Threshold("y", "<", 1.0, "")]
    assert parse_thresholds("x > 2 and (y < 1 or z > 3)") == [Threshold("x", ">", 2.0, "")]
    # a polars expression is stored as its repr
    expr = (pl.col("a") >= 3) & ~pl.col("b")
    assert parse_thresholds(str(expr)) == [Threshold("a", ">=", 3.0, ""), Threshold("b", "=", False, "")]
    manifest = {"pipeline": {"steps": [{"step": "score", "scorer": "quality"},
                                       {"step": "filter", "predicate": FILTER, "name": "quality"}]}}
    assert pipeline_thresholds(manifest) == [
        Threshold("quality_ngram_repetition", "<=", 0.2, "quality"),
        Threshold("quality_refusal", "=", False, "quality")]


def test_filter_bounds_are_recorded_when_the_plan_is_built(tmp_path):
    run = (read(DATA / "llamafactory" / "alpaca_en_demo.parquet").score("quality")
           .filter((pl.col("quality_ngram_repetition") <= 0.3) & ~pl.col("quality_refusal"), name="q")
           .write(tmp_path / "r", cache_dir=False, quiet=True))
    m = run.manifest()
    assert m["bounds"] == [
        {"column": "quality_ngram_repetition", "op": "<=", "value": 0.3, "step": "q"},
        {"column": "quality_refusal", "op": "=", "value": False, "step": "q"}]
    m["pipeline"]["steps"] = []  # the report draws the recorded bounds, not re-read steps
    assert pipeline_thresholds(m) == [Threshold("quality_ngram_repetition", "<=", 0.3, "q"),
                                      Threshold("quality_refusal", "=", False, "q")]


def test_report_page_is_self_contained_with_every_section(report_run):
    page = page_of(report_run)
    # plotly.js inlined exactly once; nothing loaded from the network
    assert len(re.findall(r"<script\b", page)) > 10
    assert page.count("window.PlotlyConfig") <= 1
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]+href=[\"']?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"@import|url\([\"']?(https?:)?//", page, re.IGNORECASE)
    for sid in ("summary", "funnel", "scores", "selected-vs-rejected", "embedding-map",
                "rejections", "tokens"):
        assert page.count(f'<section id="{sid}">') == 1, sid
    for col in SCORE_PLOTS:
        assert f'id="fig-hist-{col}"' in page, col
        assert f'id="fig-svr-{col}"' in page, col
    # list columns (embedding, minhash_bands) are not histograms
    assert 'id="fig-hist-embedding"' not in page and 'id="fig-hist-minhash_bands"' not in page
    for name in ("funnel", "map-outcome", "map-cluster", "tokens"):
        assert f'id="fig-{name}"' in page, name
    n_figs = int(re.search(r'data-figures="(\d+)"', page)[1])
    assert n_figs == page.count('class="plotly-graph-div"') == 2 * len(SCORE_PLOTS) + 4


def test_report_numbers_match_the_run(report_run):
    page = page_of(report_run)
    manifest = json.loads((report_run / "manifest.json").read_text())
    con = connect(report_run)
    # header counts
    counts = manifest["counts"]
    assert counts["input"] == N_ROWS + N_COPIES
    for label, key in (("input rows", "input"), ("selected", "selected"), ("rejected", "rejected")):
        assert f'<div class="card">{label}<b>{counts[key]:,}</b>' in page
    # rejection reasons: every (stage, reason) with its count, most common first
    table = page.split('id="reasons-table"')[1].split("</table>")[0]
    got = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td><td class=\"n\">([\d,]+)</td>", table)
    want = con.execute("select stage, reason, count(*) n from rejected group by all "
                       "order by n desc, stage, reason").fetchall()
    assert [(s, html.unescape(r), int(n.replace(",", ""))) for s, r, n in got] == \
        [(s, r, n) for s, r, n in want]
    stages = {s for s, _, _ in want}
    assert {"filter", "dedup", "select"} <= stages
    # dedup examples name the kept twin and show the answer text of the dropped row
    rep_id, dup_answer = con.execute(
        "select r.representative, d.output from rejected r join data d using (id) "
        "where r.stage = 'dedup' order by d.source_row limit 1").fetchall()[0]
    assert f'kept twin <span class="id">{rep_id}</span>' in page
    assert html.escape(" ".join(dup_answer.split())[:60]) in page
    # token counts: no tokenizer in this run, so word counts of the selected set
    total = con.execute("select sum(s.text_stats_words) from selected "
                        "join scores s using (id)").fetchall()[0][0]
    assert f'data-column="text_stats_words" data-total="{total}"' in page
    assert "ran without a tokenizer" in page
    # the map colours the run's dedup clusters: every dropped duplicate is a cross, every
    # kept twin a circle, each pair in the same colour
    section = page.split('<section id="embedding-map">')[1].split("</section>")[0]
    assert "By duplicate cluster" in section and "k-means" not in section
    assert f"All {N_ROWS + N_COPIES:,} rows with an embedding." in page
    traces = {t["name"].split(" (")[0]: t for t in _figure_json(page, "fig-map-cluster")["data"]}
    dups = con.execute("select count(*), count(distinct representative) from rejected "
                       "where stage = 'dedup'").fetchall()[0]
    assert dups[0] >= N_COPIES - 2
    assert len(_array(traces["dropped duplicate"]["x"])) == dups[0]
    assert len(_array(traces["kept representative"]["x"])) == dups[1]
    assert set(_array(traces["dropped duplicate"]["marker"]["color"])) == \
        set(_array(traces["kept representative"]["marker"]["color"]))


def test_report_samples_large_runs_and_writes_elsewhere(report_run, tmp_path):
    out = tmp_path / "sub" / "page.html"
    proc = curate_cli("report", report_run, "--output", out, "--max-points", "100")
    assert proc.stdout.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    n = N_ROWS + N_COPIES
    assert f"A seeded random sample of 100 of the {n:,} rows with an embedding." in page
    points = sum(len(_array(t["x"])) for t in _figure_json(page, "fig-map-outcome")["data"])
    assert points == 100
    # a written page leaves no temporary file behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.html"]
    # the same run, a smaller sample, the same page otherwise
    assert page.count('class="plotly-graph-div"') == page_of(report_run).count('class="plotly-graph-div"')
    # histograms of a large run are binned over a sample, and the page says so
    small = write_report(report_run, tmp_path / "hist.html", max_hist_rows=50)
    page = small.read_text(encoding="utf-8")
    assert f"Score plots use a seeded random sample of 50 of {n:,} scored rows." in page
    bars = _array(_figure_json(page, "fig-hist-quality_refusal")["data"][0]["y"])
    assert sum(bars) == 50


def test_report_escapes_row_text(tmp_path, request):
    """A row whose text is HTML shows as text: nothing in it runs or renders."""
    hostile = {"instruction": "<b>Say</b> hi", "input": "",
               "output": 'As an AI language model, I cannot <script>window.__pwned = 1</script>'
                         '<img src=x onerror="window.__pwned = 2"> say that.'}
    rows = pl.concat([pl.DataFrame([hostile]), pl.read_parquet(ALPACA).head(40)])
    (tmp_path / "in").mkdir()
    rows.write_parquet(tmp_path / "in" / "rows.parquet")
    run = (read(tmp_path / "in").score("quality").filter("not quality_refusal", name="refusal <AI>")
           .write(tmp_path / "run", cache_dir=tmp_path / "cache", quiet=True))
    page = write_report(run.path).read_text(encoding="utf-8")
    assert "<script>window.__pwned" not in page and "<img src=x" not in page and "<AI>" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    driver = request.getfixturevalue("browser")  # skips here when Chromium is not installed
    from selenium.webdriver.common.by import By

    _load(driver, run.path / "report.html")
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    table = driver.find_element(By.ID, "reasons-table").text
    assert "<script>window.__pwned = 1</script>" in table and "refusal <AI>" in table
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_report_without_embeddings_or_dedup(tmp_path):
    run = (read(ALPACA).score("quality").filter("quality_line_repetition < 0.25", name="lines")
           .select("topk", budget=100, by="quality_non_alnum_ratio", descending=False)
           .write(tmp_path / "run", cache_dir=tmp_path / "cache", quiet=True))
    curate_cli("report", run.path)
    page = page_of(run.path)
    assert 'id="no-embedding"' in page and 'id="fig-map-outcome"' not in page
    assert "No token counts" in page
    # the topk cut shows as a threshold on the column it selected by
    cut = connect(run.path).execute("select max(quality_non_alnum_ratio) from selected "
                                    "join scores using (id)").fetchall()[0][0]
    fig = _figure_json(page, "fig-hist-quality_non_alnum_ratio")
    xs = [s["x0"] for s in fig["layout"]["shapes"] if s.get("type") == "line"]
    assert xs == [pytest.approx(cut)]
    fig = _figure_json(page, "fig-hist-quality_line_repetition")
    assert [s["x0"] for s in fig["layout"]["shapes"] if s.get("type") == "line"] == [0.25]


def test_report_threshold_selection_bounds_and_per_row_reasons(tmp_path):
    run = (read(ALPACA).score("quality")
           .select("threshold", by="quality_non_alnum_ratio", max=0.08, budget=400)
           .write(tmp_path / "run", cache_dir=tmp_path / "cache", quiet=True))
    page = write_report(run.path).read_text(encoding="utf-8")
    fig = _figure_json(page, "fig-hist-quality_non_alnum_ratio")
    assert [s["x0"] for s in fig["layout"]["shapes"] if s.get("type") == "line"] == [0.08]
    # one reason for every row over the bound, each row's own value in its detail
    con = connect(run.path)
    over = con.execute("select count(*) from rejected where reason like 'threshold:%'").fetchall()[0][0]
    distinct = con.execute("select count(distinct reason), count(detail), "
                           "count(*) filter (where detail like 'quality_non_alnum_ratio = 0.%') "
                           "from rejected where reason like 'threshold:%'").fetchall()[0]
    assert over > 10 and distinct == (1, over, over)
    table = page.split('id="reasons-table"')[1].split("</table>")[0]
    got = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td><td class=\"n\">([\d,]+)</td>", table)
    assert ("select", "threshold: quality_non_alnum_ratio &gt; max 0.08", f"{over:,}") in got
    assert len(got) == 2  # and the rows the budget left out


def test_report_user_errors(tmp_path):
    proc = curate_cli("report", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "does not exist" in proc.stderr


def _array(value) -> list:
    """A figure array: a JSON list, or plotly's typed array ({"dtype", "bdata": base64})."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def _figure_json(page: str, div_id: str) -> dict:
    """The data and layout a figure's Plotly.newPlot call carries."""
    start = page.index(f'Plotly.newPlot(                        "{div_id}",')
    rest = page[start:].split(",", 1)[1].lstrip()
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip(" ,\n"))
    return {"data": data, "layout": layout}


# --- in a real browser ---------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, shared by the module's browser checks."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver); "
                    "the page was checked as HTML only")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="curate-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _load(driver, path: Path) -> None:
    """Open a report and wait until every plot is drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # start from an empty console log
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 90).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && [...document.querySelectorAll('.plotly-graph-div')]"
        ".every(g => g.querySelector('.main-svg'))"))


def test_report_renders_in_headless_chromium(report_run, browser):
    from selenium.webdriver.common.by import By

    page = page_of(report_run)
    n_figs = int(re.search(r'data-figures="(\d+)"', page)[1])
    driver = browser
    _load(driver, report_run / "report.html")
    drawn = driver.execute_script(
        "return [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter(g => g.querySelector('.main-svg') && g._fullLayout).map(g => g.id)")
    assert len(drawn) == n_figs >= 2 * len(SCORE_PLOTS) + 4
    for name in ("fig-funnel", "fig-svr-quality_ngram_repetition", "fig-map-outcome",
                 "fig-map-cluster", "fig-tokens"):
        assert name in drawn
    # the filter's bound is drawn on its histogram: a line at 0.2, and a shaded false/true bar
    shapes = driver.execute_script(
        "const g = document.getElementById('fig-hist-quality_ngram_repetition');"
        "return [g.layout.shapes.map(s => [s.type, s.x0]),"
        "        g.querySelectorAll('.shapelayer path').length]")
    assert ["line", 0.2] in shapes[0] and shapes[1] >= 1
    assert driver.execute_script(
        "return document.querySelectorAll('#fig-hist-quality_refusal .shapelayer path').length") >= 1
    # the funnel draws one bar per stage, the map one point per row
    assert driver.execute_script(
        "return document.querySelectorAll('#fig-funnel .trace.bars .point').length") == 5
    points = driver.execute_script(
        "return document.querySelectorAll('#fig-map-outcome .scatterlayer .point').length")
    assert points == N_ROWS + N_COPIES
    # the rejection-reasons table has rows with examples
    rows = driver.find_elements(By.CSS_SELECTOR, "#reasons-table tbody tr")
    assert len(rows) >= 3 and all(r.find_element(By.CSS_SELECTOR, ".ex").text for r in rows)
    # no script errors, nothing fetched over the network
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [u for u in urls if u.startswith(("http:", "https:"))]
    assert driver.execute_script("return typeof Plotly") == "object"
