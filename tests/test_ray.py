"""The Ray engine on one small local Ray cluster (started once for this module, on
loopback, 2 CPUs): the same run as the local engine, a worker that dies mid-batch,
a scorer that raises on some rows, and the errors a user can hit."""

from __future__ import annotations

import os
import sys

import polars as pl
import pytest

from _engines import Faulty, dependent_files, same_parts, same_run  # noqa: F401  (Faulty registers the test scorer)
from conftest import DATA, ROOT, cli
from curate import read
from curate.errors import CurateError
from curate.run import open_run

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra")  # installed by .[test]

SFT = ROOT / "sample_data" / "sft"
PREF = ROOT / "sample_data" / "preference"
EVAL = DATA / "alpaca_eval" / "eval_set.parquet"
TESTS = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module; workers import the test scorers."""
    paths = [TESTS, str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_preference_pipeline_same_as_local(cluster, tmp_path):
    """Single-core scorers as Ray tasks, a tokenizer scorer in an actor, the
    decontamination fit, verified MinHash dedup reading rows back, a filter and a
    stratified selection: identical ids, reasons and scores."""
    pipe = (read(PREF).score("quality").score("text_stats").decontaminate(EVAL, ngram=8)
            .dedup("minhash", threshold=0.7).filter("text_stats_response_words > 3")
            .select("stratified", by="source", budget=100))
    runs = {e: pipe.write(tmp_path / e, engine=e, cache_dir=False, quiet=True, workers=2)
            for e in ("local", "ray")}
    same_run(runs["local"].path, runs["ray"].path)
    man = runs["ray"].manifest()
    assert man["engine"] == "ray" and man["counts"]["selected"] == 100
    assert man["scorers"]["quality"]["workers"] == 2  # one task per CPU
    assert man["scorers"]["text_stats"]["setup"]["replicas"] == 1  # one actor


def test_ingest_of_many_files_same_as_local(cluster, tmp_path):
    """One Ray task per file; files that depend on the ones before them (rows repeated
    from an earlier file, a column whose type changes, a bad JSONL line) come out as
    the local engine's ingesting them one after another: the same parts, ids, columns
    and rejected records."""
    dependent_files(tmp_path / "in")
    pipe = read(tmp_path / "in").score("quality")
    local = pipe.write(tmp_path / "local", cache_dir=False, quiet=True, workers=1)
    ray_run = pipe.write(tmp_path / "ray", engine="ray", cache_dir=False, quiet=True)
    same_run(local.path, ray_run.path)
    data = same_parts(local.path, ray_run.path)
    assert [d.height for d in data] == [120, 120, 40]
    assert pl.concat([d["id"] for d in data]).n_unique() == 280  # repeated rows, new ids
    assert data[0]["rating"].to_list() == list(range(120)) and "rating" not in data[1].columns
    assert data[2]["rating"].to_list() == ["good"] * 40  # not an int: kept as text
    assert ray_run.manifest()["counts"] == {"input": 281, "ingest_rejected": 1, "selected": 280,
                                            "rejected": 1}


def test_minhash_candidate_pairs_by_a_distributed_group_by(cluster, tmp_path):
    """The band-hash group-by runs as a Ray Data shuffle in pieces; its pairs equal the
    in-process group-by's, big buckets (joined to their first row) included."""
    from curate.dedup import band_keys, bucket_pairs
    from curate.engine import get_engine

    run = read(DATA / "gpteacher" / "toolformer_dedupe.parquet").score("minhash").write(
        tmp_path / "r", cache_dir=False, quiet=True)
    keys = band_keys(pl.from_arrow(run.table("scores", columns=["minhash_bands"])))
    assert keys.num_rows > 10_000
    for most in (50, 3):
        local = pl.from_arrow(bucket_pairs(keys, most)).sort("a", "b")
        spread = pl.from_arrow(get_engine("ray").map_groups(
            keys, "hash", lambda t: bucket_pairs(t, most))).unique().sort("a", "b")
        assert local.height > 500 and spread.equals(local)


def test_worker_death_is_retried_without_losing_rows(cluster, tmp_path):
    marker = tmp_path / "died"
    run = read(SFT).score("test_faulty", die_marker=str(marker)).write(
        tmp_path / "r", engine="ray", cache_dir=False, quiet=True)
    assert marker.exists()  # a worker did die mid-batch
    scores = pl.from_arrow(run.table("scores", columns=["id", "faulty_chars"]))
    assert scores.height == 300 and scores["id"].n_unique() == 300
    assert scores["faulty_chars"].null_count() == 0
    assert run.manifest()["counts"] == {"input": 300, "ingest_rejected": 0, "selected": 300,
                                        "rejected": 0}


def test_killed_ray_run_resumes_from_the_score_cache(cluster, tmp_path):
    from test_resume import kill_and_resume

    kill_and_resume(tmp_path, "--engine", "ray", "--address", cluster, rows=2000)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_scorer_raising_on_rows_rejects_those_rows(cluster, tmp_path, engine):
    from curate.ingest import ingest
    from curate.text import field_texts

    needle = "Python"
    texts = {i: t for table, _, _ in ingest(str(SFT)) if table is not None
             for i, t in zip(table["id"].to_pylist(), field_texts(table, "all"))}
    bad = {i for i, t in texts.items() if needle in t}
    assert 0 < len(bad) < 30
    run = read(SFT).score("test_faulty", needle=needle).write(
        tmp_path / engine, engine=engine, cache_dir=False, quiet=True, workers=2)
    rej = pl.from_arrow(run.table("rejected"))
    assert set(rej["id"]) == bad and set(rej["stage"]) == {"score"}
    assert set(rej["reason"]) == {"score test_faulty raised ValueError: cannot score a row with "
                                  "'Python'"}
    man = run.manifest()
    assert man["counts"]["selected"] == 300 - len(bad)
    assert man["scorers"]["test_faulty"]["failed"] == len(bad)


def test_bad_ray_inputs(cluster, tmp_path, monkeypatch):
    # a resource the cluster cannot give: an error, not a run that waits forever
    with pytest.raises(CurateError, match=r"needs 1 GPU\(s\) per replica but the Ray cluster has 0"):
        read(SFT).score("perplexity", device="cuda").write(tmp_path / "gpu", engine="ray",
                                                          cache_dir=False, quiet=True)
    # a file of only bad rows among good ones: the local engine's error, as itself
    src = tmp_path / "in"
    src.mkdir()
    pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet")[:50].write_parquet(
        src / "a.parquet")
    (src / "b.jsonl").write_text('{"instruction": "x", "output": ""}\n' * 3)
    errors = []
    for engine in ("local", "ray"):
        with pytest.raises(CurateError) as err:
            read(src).write(tmp_path / engine, engine=engine, cache_dir=False, quiet=True)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "b.jsonl: all 3 rows are bad" in errors[1]
    assert type(err.value).__name__ == "InputError"
    # Ray not installed: one line naming the extra
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CurateError, match=r"the ray engine needs Ray: pip install -e '\.\[ray\]'"):
        read(SFT).write(tmp_path / "noray", engine="ray", cache_dir=False, quiet=True)
    assert not (tmp_path / "noray").exists()
    monkeypatch.undo()
    # --address is only for the ray engine; an unreachable cluster is one error line
    proc = cli("run", ROOT / "pipelines" / "sft_select.py", "-i", SFT, "-o", tmp_path / "a",
               "--address", cluster)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --address is for --engine ray (the engine is local)"
    proc = cli("run", ROOT / "pipelines" / "sft_select.py", "-i", SFT, "-o", tmp_path / "b",
               "--engine", "ray", "--address", "127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: cannot connect to the Ray cluster at 127.0.0.1:1")
    assert not (tmp_path / "b").exists()


def test_cli_connects_to_a_running_cluster(cluster, tmp_path):
    (tmp_path / "p.py").write_text('from curate import read\n'
                                   'pipeline = read().score("quality").dedup("exact")'
                                   '.select("random", budget=20)\n')
    proc = cli("run", tmp_path / "p.py", "-i", SFT, "-o", tmp_path / "r", "--engine", "ray",
               "--address", cluster, "-q")
    assert proc.returncode == 0, proc.stderr
    man = open_run(tmp_path / "r").manifest()
    assert man["engine"] == "ray" and man["counts"]["selected"] == 20
