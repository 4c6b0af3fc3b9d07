"""The same pipelines on the local engine and on a second test engine (tests/_engines.py:
small parts, reversed order, whole parts as batches) give the same run: the same
selected ids, rejected records and scores."""

from __future__ import annotations

import polars as pl
import pytest

from _engines import ReverseEngine, dependent_files, same_parts, same_run
from conftest import DATA, ROOT, curate_cli
from curate import read
from curate.engine import ENGINES
from curate.errors import CurateError
from curate.pipeline import load_pipeline_file
from curate.run import open_run

SFT = ROOT / "sample_data" / "sft"
PREF = ROOT / "sample_data" / "preference"
EVAL = DATA / "alpaca_eval" / "eval_set.parquet"


def test_default_sft_pipeline_same_on_both_engines(tmp_path):
    """Text stats, quality, exact and verified MinHash dedup (reads rows back through the
    engine), relevance embeddings and Deita selection; the test engine ingests 5 parts."""
    pipe = load_pipeline_file(ROOT / "pipelines" / "sft_select.py").bind(
        budget=60, use_ifd=False).with_input(SFT)
    for engine in ("local", "reverse"):
        pipe.write(tmp_path / engine, engine=engine, cache_dir=False, quiet=True)
    assert len(list((tmp_path / "reverse" / "data").glob("*.parquet"))) == 5
    assert len(list((tmp_path / "local" / "data").glob("*.parquet"))) == 1
    same_run(tmp_path / "local", tmp_path / "reverse")
    assert open_run(tmp_path / "local").manifest()["counts"]["selected"] == 60


def test_files_ingested_in_workers_same_as_one_after_another(tmp_path):
    """The local engine ingests files in forked workers; files that depend on the ones
    before them (a repeated row, a column whose type changes, a bad line) come out as
    when ingested one after another: the same parts, ids and rejected records."""
    dependent_files(tmp_path / "in")
    pipe = read(tmp_path / "in").score("quality")
    runs = [pipe.write(tmp_path / str(w), cache_dir=False, quiet=True, workers=w) for w in (1, 2)]
    data = same_parts(runs[0].path, runs[1].path)
    assert [d.height for d in data] == [120, 120, 40]
    assert pl.concat([d["id"] for d in data]).n_unique() == 280  # repeated rows, new ids
    assert data[2]["rating"].to_list() == ["good"] * 40  # the type of a.parquet clashed
    for name in ("selected", "rejected"):
        a, b = (pl.from_arrow(r.table(name)).sort("id") for r in runs)
        assert a.equals(b), name
    assert runs[1].manifest()["counts"] == runs[0].manifest()["counts"] == {
        "input": 281, "ingest_rejected": 1, "selected": 280, "rejected": 1}


def test_files_whose_kind_changes_ingested_in_workers_as_one_after_another(tmp_path):
    """sft rows after a file of text rows become text rows (that file is ingested again,
    after the first); a later copy of them repeats those text rows and gets other ids,
    as when the files are ingested one after another. A file that only fails after the
    ones before it fails with the error of ingesting them in order."""
    src = tmp_path / "in"
    src.mkdir()
    pl.read_parquet(DATA / "c4_demo" / "c4_demo.parquet")[:5].select("text").write_ndjson(
        src / "a.jsonl")
    sft = pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet")[:5]
    sft.write_ndjson(src / "b.jsonl")
    sft.write_ndjson(src / "c.jsonl")
    runs = [read(src).write(tmp_path / str(w), cache_dir=False, quiet=True, workers=w)
            for w in (1, 2)]
    data = same_parts(runs[0].path, runs[1].path)
    assert pl.concat([d["id"] for d in data]).n_unique() == 15
    assert runs[1].manifest()["counts"] == {"input": 15, "ingest_rejected": 0, "selected": 15,
                                            "rejected": 0}
    (src / "a.jsonl").unlink()  # now sft first, then preference rows, then a file of bad rows
    pl.read_parquet(PREF / "dpo_en_demo.parquet")[:5].write_parquet(src / "c.parquet")
    (src / "d.jsonl").write_text('{"instruction": "cut off\n')
    for w in (1, 2):
        with pytest.raises(CurateError, match="gives preference rows but the dataset is sft"):
            read(src).write(tmp_path / f"bad{w}", cache_dir=False, quiet=True, workers=w)


def test_a_worker_that_breaks_mid_ingest_stops_the_run(tmp_path, monkeypatch):
    """A file whose ingest raises an unexpected error in a worker: the error reaches the
    caller, as it is."""
    import curate.engine as engine

    dependent_files(tmp_path / "in")
    real = engine.ingest_file

    def broken(root, file, *args, **kwargs):
        if file.name == "c.jsonl":
            raise RuntimeError("disk on fire")
        yield from real(root, file, *args, **kwargs)

    monkeypatch.setattr(engine, "ingest_file", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        read(tmp_path / "in").write(tmp_path / "run", cache_dir=False, quiet=True, workers=2)


def test_preference_decontamination_and_forked_workers_same_on_both_engines(tmp_path):
    """Cheap scorers replicated into 2 forked worker processes on the local engine,
    decontamination, a filter and a stratified selection."""
    pipe = (read(PREF).score("quality").score("text_stats").decontaminate(EVAL, ngram=8)
            .dedup("minhash", threshold=0.7).filter("text_stats_response_words > 3")
            .select("stratified", by="source", budget=100))
    runs = {e: pipe.write(tmp_path / e, engine=e, cache_dir=False, quiet=True, workers=2,
                          batch_rows=16) for e in ("local", "reverse")}
    assert runs["local"].manifest()["scorers"]["quality"]["workers"] == 2
    same_run(runs["local"].path, runs["reverse"].path)
    # many small parts: each worker task scores a whole part, in batches
    parts = pipe.write(tmp_path / "parts", cache_dir=False, quiet=True, workers=2, batch_rows=16,
                       chunk_rows=30)
    assert len(list((tmp_path / "parts" / "data").glob("*.parquet"))) == 10
    same_run(parts.path, runs["reverse"].path)


def test_engine_instance_and_unknown_engine(tmp_path):
    run = read(SFT).score("quality").select("random", budget=5).write(
        tmp_path / "r", engine=ReverseEngine(), cache_dir=False, quiet=True)
    assert run.manifest()["engine"] == "reverse" and run.manifest()["counts"]["selected"] == 5
    with pytest.raises(CurateError, match="unknown engine 'spark'; available engines: local, ray, reverse"):
        read(SFT).write(tmp_path / "x", engine="spark", cache_dir=False, quiet=True)
    assert not (tmp_path / "x").exists()
    proc = curate_cli("run", ROOT / "pipelines" / "sft_select.py", "-i", SFT, "-o", tmp_path / "y",
                      "--engine", "nope", check=False)
    assert proc.returncode != 0 and "unknown engine 'nope'" in proc.stderr
    assert not (tmp_path / "y").exists() and "local" in ENGINES


def test_whole_dataset_fit_runs_once_and_is_cached(tmp_path, monkeypatch):
    """The decontamination index is a fit: computed once per run by the engine, cached by
    the scorer's cache key, and reused by a later run that scores other rows."""
    from scorers.contamination import Contamination

    calls = []
    real = Contamination.fit
    monkeypatch.setattr(Contamination, "fit", lambda self: calls.append(1) or real(self))
    a = read(SFT).decontaminate(EVAL, ngram=8).write(tmp_path / "a", cache_dir=tmp_path / "c",
                                                    quiet=True, batch_rows=16)
    assert len(calls) == 1 and len(list((tmp_path / "c" / "fits").glob("contamination-*.pkl"))) == 1
    b = read(PREF).decontaminate(EVAL, ngram=8).write(tmp_path / "b", cache_dir=tmp_path / "c",
                                                     quiet=True)
    assert len(calls) == 1  # the new rows were scored with the cached index
    assert b.manifest()["scorers"]["contamination"]["computed"] > 0
    assert a.manifest()["scorers"]["contamination"]["setup"]["eval_ngrams"] > 1000


def test_resources_size_the_local_workers():
    from curate.engine import LocalEngine
    from curate.scorer import get_scorer

    assert get_scorer("perplexity", device="cuda").resources.gpus == 1  # declares its GPU
    assert get_scorer("perplexity", device="cpu").resources.gpus == 0
    engine = LocalEngine(workers=4, batch_rows=10)
    assert engine.replicas(get_scorer("minhash"), 1000) == 4  # single-core Python: one per core
    assert engine.replicas(get_scorer("minhash"), 39) == 1  # too little work to fork for
    assert engine.replicas(get_scorer("embedding"), 1000) == 1  # uses the cores itself
