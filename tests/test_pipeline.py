"""End-to-end behaviour of the pipeline DSL, the CLI and the run directory."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import DATA, ROOT, SAMPLE_PREF, SAMPLE_SFT, curate_cli
from curate import CurateError, connect, read
from curate.pipeline import load_pipeline_file

SFT_PIPELINE = ROOT / "pipelines" / "sft_select.py"
PREF_PIPELINE = ROOT / "pipelines" / "preference_select.py"


def ids(run, name: str = "selected") -> list[str]:
    return sorted(run.table(name, columns=["id"])["id"].to_pylist())


def one(con, sql: str):
    """The single value of a query."""
    return con.sql(sql).fetchall()[0][0]


def sql_count(run_dir, sql: str) -> int:
    out = curate_cli("sql", run_dir, sql, "--format", "csv").stdout.strip().splitlines()
    return int(out[-1])


def test_default_sft_pipeline_accounts_for_every_row_and_caches(tmp_path):
    """Acceptance: selected + rejected == input rows; a second run gives the same
    ids and reports that every score came from the cache."""
    cache = tmp_path / "cache"
    r1, r2 = tmp_path / "R1", tmp_path / "R2"
    fast = ("--set", "use_ifd=false")  # IFD under the LM has its own tests; minutes on CPU
    first = curate_cli("run", SFT_PIPELINE, "--input", SAMPLE_SFT, "--output", r1, "--cache-dir", cache, *fast)
    n_input = pq.read_metadata(next(SAMPLE_SFT.glob("*.parquet"))).num_rows
    selected = sql_count(r1, "select count(*) from selected")
    rejected = sql_count(r1, "select count(*) from rejected")
    assert selected + rejected == n_input == 300
    assert 0 < rejected < 60  # the sample has a few refusals and truncated answers
    assert "0 from cache" in first.stderr
    second = curate_cli("run", SFT_PIPELINE, "--input", SAMPLE_SFT, "--output", r2, "--cache-dir", cache, *fast)
    assert "score quality: 300 rows, 300 from cache, 0 computed" in second.stderr
    assert "text_stats: 300 rows, 300 from cache, 0 computed" in second.stderr
    m1, m2 = (json.loads((r / "manifest.json").read_text()) for r in (r1, r2))
    assert m1["status"] == m2["status"] == "complete"
    assert m2["scorers"]["quality"]["from_cache"] == 300
    con1, con2 = connect(r1), connect(r2)
    q = "select id from selected order by id"
    assert con1.sql(q).fetchall() == con2.sql(q).fetchall()
    # every rejected row has a stage and a reason; no id is in both
    assert one(con1, "select count(*) from rejected where stage is null or reason is null") == 0
    assert one(con1, "select count(*) from selected join rejected using (id)") == 0


def test_preference_pipeline_on_sample(tmp_path):
    out = tmp_path / "P"
    curate_cli("run", PREF_PIPELINE, "--input", SAMPLE_PREF, "--output", out,
               "--cache-dir", tmp_path / "c", "--set", "budget=100")
    con = connect(out)
    assert one(con, "select count(*) from selected") == 100
    assert one(con, "select count(*) from selected") + \
        one(con, "select count(*) from rejected") == 300
    # canonical preference columns, originals kept
    cols = {r[0] for r in con.sql("describe selected").fetchall()}
    assert {"id", "prompt", "chosen", "rejected", "conversations", "raw_chosen"} <= cols


def test_filter_sql_string_equals_polars_expression(tmp_path):
    base = read(SAMPLE_SFT).score("quality")
    a = base.filter("quality_ngram_repetition < 0.05 AND NOT quality_refusal").write(
        tmp_path / "a", cache_dir=tmp_path / "c", quiet=True)
    b = base.filter((pl.col("quality_ngram_repetition") < 0.05) & ~pl.col("quality_refusal")).write(
        tmp_path / "b", cache_dir=tmp_path / "c", quiet=True)
    assert ids(a) == ids(b)
    scores = pl.from_arrow(a.table("scores"))
    expected = scores.filter((pl.col("quality_ngram_repetition") < 0.05) & ~pl.col("quality_refusal"))
    assert ids(a) == sorted(expected["id"].to_list())
    assert 0 < len(ids(a)) < 300


def test_topk_select_budget_and_order(tmp_path):
    run = (read(SAMPLE_SFT).score("quality")
           .select("topk", by="quality_non_alnum_ratio", budget=25, descending=False)
           .write(tmp_path / "r", cache_dir=tmp_path / "c", quiet=True))
    scores = pl.from_arrow(run.table("scores"))
    chosen = scores.filter(pl.col("id").is_in(ids(run)))
    assert chosen.height == 25
    others = scores.filter(~pl.col("id").is_in(ids(run)))
    assert chosen["quality_non_alnum_ratio"].max() <= others["quality_non_alnum_ratio"].min()
    rej = pl.from_arrow(run.table("rejected"))
    assert set(rej["stage"]) == {"select"} and rej.height == 275


def test_random_select_is_deterministic_and_seeded(tmp_path):
    def run(seed, name):
        return ids(read(SAMPLE_SFT).select("random", budget=50, seed=seed)
                   .write(tmp_path / name, cache_dir=False, quiet=True))
    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert len(a) == 50 and a == b and a != c


def test_params_listed_and_overridden(tmp_path):
    tpl = load_pipeline_file(SFT_PIPELINE)
    assert tpl.params["budget"].default == 1000
    pipe = tpl.bind(budget="7", drop_refusals="false")
    assert pipe.params["budget"] == 7 and pipe.params["drop_refusals"] is False
    assert not any(getattr(s, "name", None) == "refusal" for s in pipe.steps)
    with pytest.raises(CurateError, match="no parameter"):
        tpl.bind(nope="1")
    with pytest.raises(CurateError, match="not a budget"):
        tpl.bind(budget="many")
    with pytest.raises(CurateError, match="expected a float"):
        tpl.bind(max_ifd="high")
    assert tpl.bind(budget="50k tokens").steps[-1].budget == "50k tokens"
    helptext = curate_cli("run", SFT_PIPELINE, "--help").stdout
    assert "budget" in helptext and "default 1000" in helptext and "--set" in helptext
    out = tmp_path / "r"
    curate_cli("run", SFT_PIPELINE, "-i", SAMPLE_SFT, "-o", out, "--cache-dir", tmp_path / "c",
               "--set", "budget=7", "--set", "use_ifd=false", "-q")
    assert sql_count(out, "select count(*) from selected") == 7


def test_cache_recomputes_only_what_changed(tmp_path):
    cache = tmp_path / "cache"
    part = tmp_path / "in"
    part.mkdir()
    rows = pq.read_table(DATA / "llamafactory" / "alpaca_en_demo.parquet")
    pq.write_table(rows.slice(0, 100), part / "a.parquet")
    r1 = read(part).score("quality").write(tmp_path / "r1", cache_dir=cache, quiet=True)
    assert r1.manifest()["scorers"]["quality"]["computed"] == 100
    pq.write_table(rows.slice(100, 30), part / "b.parquet")  # new rows arrive
    r2 = read(part).score("quality").write(tmp_path / "r2", cache_dir=cache, quiet=True)
    info = r2.manifest()["scorers"]["quality"]
    assert (info["from_cache"], info["computed"]) == (100, 30)
    r3 = read(part).score("quality", ngram=2).write(tmp_path / "r3", cache_dir=cache, quiet=True)
    assert r3.manifest()["scorers"]["quality"]["computed"] == 130  # new config: new key


def test_explain_rejected_and_selected(tmp_path):
    out = tmp_path / "r"
    run = (read(SAMPLE_SFT).score("quality").filter("not quality_refusal", name="refusal")
           .write(out, cache_dir=tmp_path / "c", quiet=True))
    con = connect(out)
    rejected_id = one(con, "select id from rejected limit 1")
    selected_id = one(con, "select id from selected limit 1")
    text = curate_cli("explain", out, rejected_id).stdout
    assert "REJECTED" in text and "stage: filter" in text and "reason: refusal" in text
    assert "quality_refusal = True" in text
    assert "SELECTED" in curate_cli("explain", out, selected_id).stdout
    missing = curate_cli("explain", out, "0000", check=False)
    assert missing.returncode != 0 and "no row with id" in missing.stderr
    assert run.manifest()["status"] == "complete"


def test_text_kind_and_kind_override(tmp_path):
    c4 = read(DATA / "c4_demo" / "c4_demo.parquet").score("quality").write(
        tmp_path / "c4", cache_dir=False, quiet=True)
    assert c4.manifest()["input"]["kind"] == "text"
    assert len(ids(c4)) == 300
    # an SFT file read as text (e.g. an eval set for decontamination)
    gsm = read(DATA / "gsm8k" / "test.parquet", kind="text").write(tmp_path / "g", cache_dir=False,
                                                                     quiet=True)
    texts = gsm.table("data", columns=["text"])["text"].to_pylist()
    assert len(texts) == 1319 and "Janet" in texts[0]


def test_same_output_same_run_resumes_different_run_refused(tmp_path):
    out = tmp_path / "r"
    read(SAMPLE_SFT).write(out, cache_dir=False, quiet=True)
    read(SAMPLE_SFT).write(out, cache_dir=False, quiet=True)  # same run: allowed
    with pytest.raises(CurateError, match="--overwrite"):
        read(SAMPLE_SFT).select("random", budget=3).write(out, cache_dir=False, quiet=True)
    run = read(SAMPLE_SFT).select("random", budget=3).write(out, cache_dir=False, quiet=True,
                                                            overwrite=True)
    assert len(ids(run)) == 3
    shutil.rmtree(out)


def test_preference_pipeline_drops_pairs_that_teach_nothing(tmp_path):
    """Pairs whose chosen and rejected answers are the same (or nearly) are dropped
    with their reason; a rating margin from the data can filter pairs too."""
    d = pl.read_parquet(SAMPLE_PREF / "dpo_en_demo.parquet").head(30)
    same = d.head(3).with_columns(rejected=pl.col("chosen"))
    src = tmp_path / "in"
    src.mkdir()
    pl.concat([d, same]).write_parquet(src / "pairs.parquet")
    out = tmp_path / "P"
    curate_cli("run", PREF_PIPELINE, "--input", src, "--output", out, "--cache-dir", tmp_path / "c",
               "--set", "budget=1000", "-q")
    con = connect(out)
    reasons = dict(con.sql("select d.source_row, r.reason from rejected r join data d using (id)").fetchall())
    assert all(reasons.get(i) == "chosen equals rejected" for i in (30, 31, 32))
    assert one(con, "select count(*) from selected") + one(con, "select count(*) from rejected") == 33
    # a margin over the pair's own columns: ingest keeps the original ratings next to the scores
    ann = pl.read_parquet(DATA / "alpaca_eval" / "annotations.parquet").head(200)
    (tmp_path / "ann").mkdir()
    ann.write_parquet(tmp_path / "ann" / "a.parquet")
    run = (read(tmp_path / "ann").filter("abs(preference - 1.5) >= 0.4", name="weak judge preference")
           .write(tmp_path / "A", cache_dir=False, quiet=True))
    kept = pl.from_arrow(run.table("selected"))
    assert kept.height > 0 and ((kept["preference"] - 1.5).abs() >= 0.4).all()


def test_run_parquet_codec(tmp_path):
    """A run's Parquet is uncompressed by default; $CURATE_PARQUET_COMPRESSION picks a
    codec for every part (same rows); an unknown codec is one error before any work."""
    def codecs(run_dir) -> set[str]:
        return {pq.read_metadata(p).row_group(0).column(0).compression
                for name in ("data", "selected", "scores") for p in (run_dir / name).glob("*.parquet")}

    plain, packed = tmp_path / "plain", tmp_path / "zstd"
    curate_cli("dedup", SAMPLE_SFT, "--method", "exact", "--output", plain, "--no-cache")
    curate_cli("dedup", SAMPLE_SFT, "--method", "exact", "--output", packed, "--no-cache",
               env={"CURATE_PARQUET_COMPRESSION": "zstd"})
    assert codecs(plain) == {"UNCOMPRESSED"} and codecs(packed) == {"ZSTD"}
    read_back = [pl.read_parquet(d / "selected").sort("id") for d in (plain, packed)]
    assert read_back[0].height > 0 and read_back[0].equals(read_back[1])
    bad = curate_cli("dedup", SAMPLE_SFT, "--method", "exact", "--output", tmp_path / "bad",
                     check=False, env={"CURATE_PARQUET_COMPRESSION": "lzma"})
    assert bad.returncode == 2 and "CURATE_PARQUET_COMPRESSION='lzma'" in bad.stderr
    assert not (tmp_path / "bad").exists()
