"""Dedup: exact, MinHash-LSH and semantic duplicates, keep rules, decontamination."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import xxhash
from datasketch import MinHash

from conftest import DATA, curate_cli
from curate import CurateError, connect, read
from curate.dedup import candidate_probability, choose_bands, components
from curate.text import shingles
from scorers.minhash import signatures

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"


def alpaca_with_copies(tmp_path, n: int = 150, edit=None, copies: int = 15) -> tuple:
    """Real rows plus edited copies of the first ``copies`` of them (appended)."""
    d = pl.read_parquet(ALPACA).head(n)
    edit = edit or (lambda s: "  " + s.replace(". ", ".   ").upper() + " ")
    extra = d.head(copies).with_columns(pl.Series("output", [edit(s) for s in d.head(copies)["output"]]))
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    pl.concat([d, extra]).write_parquet(src / "rows.parquet")
    return src, n, copies


def rejected(run_dir) -> list[tuple]:
    return connect(run_dir).sql(
        "select r.id, r.stage, r.reason, r.cluster, r.representative, d.source_row, k.source_row "
        "from rejected r join data d using (id) left join data k on k.id = r.representative "
        "order by d.source_row").fetchall()


def test_signatures_equal_datasketch():
    texts = pl.read_parquet(ALPACA)["output"].to_list()[:60] + ["", "one two"]
    sh = [shingles(t) for t in texts]
    ours = signatures(sh, 128, 7)
    for s, row in zip(sh, ours):
        m = MinHash(num_perm=128, seed=7, hashfunc=xxhash.xxh32_intdigest)
        m.update_batch([x.encode() for x in s])
        assert np.array_equal(m.hashvalues, row)


def test_band_choice_and_tradeoff():
    b, r = choose_bands(0.8, 128)
    assert b * r <= 128
    assert candidate_probability(0.9, b, r) > 0.9 > 0.1 > candidate_probability(0.5, b, r)
    rb, rr = choose_bands(0.8, 128, fp_weight=0.3, fn_weight=0.7)  # the weights used with verify
    assert candidate_probability(0.9, rb, rr) > max(0.95, candidate_probability(0.9, b, r))
    with pytest.raises(CurateError, match=r"\(0, 1\]"):
        choose_bands(0.0, 128)


def test_components_label_propagation():
    labels = components(7, np.array([0, 2, 5, 4]), np.array([1, 1, 6, 5]))
    assert labels.tolist() == [0, 0, 0, 3, 4, 4, 4]


@pytest.mark.parametrize("method,options", [("exact", {}), ("minhash", {}),
                                            ("minhash", {"hash": "datasketch"})])
def test_edited_copies_are_dropped_with_their_twin(tmp_path, method, options):
    src, n, copies = alpaca_with_copies(tmp_path)
    out = tmp_path / method
    run = read(src).dedup(method, **options).write(out, cache_dir=False, quiet=True)
    rows = rejected(out)
    assert len(rows) == copies
    for rid, stage, reason, cluster, rep, row, rep_row in rows:
        assert stage == "dedup" and row == rep_row + n  # the copy goes, its original stays
        assert cluster == f"{method}:{rep}"
    assert run.manifest()["counts"]["selected"] + run.manifest()["counts"]["rejected"] == n + copies
    text = curate_cli("explain", out, rows[0][0]).stdout
    assert "REJECTED" in text and "kept twin" in text and rows[0][4] in text


def test_keep_rules(tmp_path):
    src, n, copies = alpaca_with_copies(tmp_path, edit=lambda s: s + " Hope this helps.")
    longest = read(src).dedup("minhash", keep="longest").write(tmp_path / "l", cache_dir=False, quiet=True)
    assert all(row < n for *_, row, rep_row in rejected(longest.path))  # originals (shorter) go
    by_score = (read(src).score("text_stats", tokenizer=None)
                .dedup("minhash", keep="text_stats_response_words")
                .write(tmp_path / "s", cache_dir=False, quiet=True))
    assert [r[5] for r in rejected(by_score.path)] == [r[5] for r in rejected(longest.path)]
    with pytest.raises(CurateError, match="keeps by unknown column"):
        read(src).dedup("exact", keep="nope").write(tmp_path / "x", cache_dir=False, quiet=True)


def test_empty_texts_are_never_matched(tmp_path):
    # the text kind has no prompt: every prompt text is empty
    run = read(DATA / "c4_demo" / "c4_demo.parquet").dedup("minhash", fields="prompt").write(
        tmp_path / "r", cache_dir=False, quiet=True)
    assert run.manifest()["counts"]["rejected"] == 0
    run = read(DATA / "c4_demo" / "c4_demo.parquet").dedup("exact", fields="prompt").write(
        tmp_path / "e", cache_dir=False, quiet=True)
    assert run.manifest()["counts"]["rejected"] == 0


def test_character_shingles_find_chinese_near_duplicates(tmp_path):
    zh = DATA / "llamafactory" / "oaast_sft_zh.parquet"
    d = pl.read_parquet(zh).head(120)
    edited = d.head(10).with_columns(pl.col("output").str.replace("。", "！"))
    src = tmp_path / "zh"
    src.mkdir()
    pl.concat([d, edited]).write_parquet(src / "rows.parquet")
    char = read(src).dedup("minhash", shingle="char", ngram=5, threshold=0.7).write(
        tmp_path / "c", cache_dir=False, quiet=True)
    word = read(src).dedup("minhash", threshold=0.7).write(tmp_path / "w", cache_dir=False, quiet=True)
    char_dropped = {r[5] for r in rejected(char.path)}
    assert set(range(120, 130)) <= char_dropped  # every edited copy found
    assert len(rejected(word.path)) < len(char_dropped)  # no spaces: word shingles see one token


def test_semantic_dedup_drops_reworded_copies(tmp_path):
    src, n, copies = alpaca_with_copies(tmp_path, n=60, copies=6,
                                        edit=lambda s: s.replace(".", " .").replace(",", " ,"))
    run = read(src).dedup("semantic", eps=0.02).write(tmp_path / "r", cache_dir=False, quiet=True)
    dropped = {r[5] for r in rejected(run.path)}
    assert set(range(n, n + copies)) <= dropped
    assert len(dropped) <= copies + 2  # near-nothing else at cosine > 0.98


def test_bad_dedup_options(tmp_path):
    with pytest.raises(CurateError, match=r"threshold must be in \(0, 1\]"):
        read(ALPACA).dedup("minhash", threshold=1.2)
    with pytest.raises(CurateError, match="unknown dedup method"):
        read(ALPACA).dedup("fuzzy")
    with pytest.raises(CurateError, match="no option"):
        read(ALPACA).dedup("exact", threshold=0.5)
    with pytest.raises(CurateError, match="minhash: hash must be one of oph, datasketch, got 'md5'"):
        read(ALPACA).dedup("minhash", hash="md5").write(tmp_path / "h", cache_dir=False, quiet=True)
    bad = curate_cli("dedup", ALPACA, "--threshold", "0", "-o", tmp_path / "o", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: --threshold 0.0: must be a Jaccard similarity in (0, 1]"
    missing = curate_cli("decontaminate", ALPACA, "--against", tmp_path / "nope.jsonl",
                         "-o", tmp_path / "d", check=False)
    assert missing.returncode == 2 and "nope.jsonl does not exist" in missing.stderr


def test_decontamination_finds_planted_eval_questions(tmp_path):
    train = pl.read_parquet(DATA / "gsm8k" / "train.parquet").head(300)
    test = pl.read_parquet(DATA / "gsm8k" / "test.parquet")
    planted = test.head(5)
    src = tmp_path / "train"
    src.mkdir()
    pl.concat([train, planted]).write_parquet(src / "rows.parquet")
    out = tmp_path / "r"
    curate_cli("decontaminate", src, "--against", DATA / "gsm8k" / "test.parquet",
               "--against", DATA / "mt_bench" / "question.parquet", "-o", out, "--no-cache", "-q")
    rows = connect(out).sql("select d.source_row, r.reason, r.detail, r.stage from rejected r "
                            "join data d using (id)").fetchall()
    rows_by = {r[0]: r for r in rows}
    assert set(range(300, 305)) <= set(rows_by)
    for row, reason, detail, stage in rows:
        assert stage == "dedup" and reason == "contaminated: shares a 13-gram with test.parquet"
        assert len(detail.split()) == 13
    assert len(rows) < 300 * 0.05 + 5  # the train split is mostly clean


def test_minhash_accuracy_against_exact_jaccard(tmp_path):
    """Ground truth from real text with realistic edits at known Jaccard: at threshold
    0.8 with verification, precision >= 0.99 and recall >= 0.95 (doc level)."""
    import random

    import _dedup_truth as T

    texts = random.Random(0).sample(T.real_texts(), 6000)
    docs, fams = T.make_corpus(texts, 3000, 0.5, seed=7)
    truth = T.true_duplicates(docs, fams, 0.8)
    src = tmp_path / "corpus"
    src.mkdir()
    pl.DataFrame({"text": docs}).write_parquet(src / "docs.parquet")
    run = read(src, kind="text").dedup("minhash", threshold=0.8, verify=True).write(
        tmp_path / "r", cache_dir=False, quiet=True)
    pairs = connect(run.path).sql(
        "select d.source_row, k.source_row from rejected r join data d using (id) "
        "join data k on k.id = r.representative where r.stage = 'dedup'").fetchall()
    s = T.score(T.clusters_from_pairs(len(docs), pairs), truth, len(docs))
    assert len(truth) > 500
    assert s["precision"] >= 0.99 and s["recall"] >= 0.95, s


def test_worker_processes_give_the_same_result(tmp_path):
    src = DATA / "gpteacher" / "roleplay_rest.parquet"
    runs = [read(src).dedup("minhash", threshold=0.7).score("quality")
            .write(tmp_path / f"w{n}", cache_dir=False, quiet=True, workers=n, batch_rows=64)
            for n in (1, 2)]
    assert runs[1].manifest()["scorers"]["minhash"]["workers"] == 2
    q = "select * from scores order by id"
    a, b = (connect(r.path).sql(q).fetchall() for r in runs)
    assert a == b and len(a) == 1146


def test_hard_corpora_run_with_correct_accounting(tmp_path):
    """Small-scale versions of the corpora that break dedup tools: every document the
    same, a 10 MB document (and its copy), empty and whitespace-only documents, a line
    that is not UTF-8, and a threshold of 1.0. Each run completes and every row is
    either selected or rejected with its reason."""
    real = pl.read_parquet(DATA / "c4_demo" / "c4_demo.parquet")["text"].to_list()
    same = tmp_path / "same"
    same.mkdir()
    pl.DataFrame({"text": [real[0]] * 300}).write_parquet(same / "same.parquet")
    for method in ("minhash", "exact"):
        man = read(same, kind="text").dedup(method).write(
            tmp_path / f"same-{method}", cache_dir=False, quiet=True).manifest()
        assert man["counts"] == {"input": 300, "ingest_rejected": 0, "selected": 1, "rejected": 299}

    big = " ".join(real) * (10_000_000 // len(" ".join(real)) + 1)
    assert len(big) >= 10_000_000
    docs = real[:50] + [big, big, "", "   \n\t ", real[1]]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    with open(mixed / "docs.jsonl", "wb") as f:
        for d in docs:
            f.write(json.dumps({"text": d}).encode() + b"\n")
        f.write(b'{"text": "caf\xe9 latin-1 bytes"}\n')  # not UTF-8
    run = read(mixed, kind="text").dedup("minhash", threshold=1.0).write(
        tmp_path / "mixed-run", cache_dir=False, quiet=True)
    man = run.manifest()
    rej = pl.from_arrow(run.table("rejected"))
    assert man["counts"]["input"] == len(docs) + 1
    assert man["counts"]["selected"] + man["counts"]["rejected"] == man["counts"]["input"]
    reasons = rej.group_by("stage").len().sort("stage").rows()
    # dropped: the 10 MB copy and the repeated real[1]; the undecodable line and the
    # two blank documents at ingest
    assert dict(reasons) == {"dedup": 2, "ingest": 3}, rej.select("stage", "reason").rows()
    assert set(rej.filter(pl.col("stage") == "dedup")["reason"]) == {
        "near-duplicate (MinHash, Jaccard >= 1.0, verified)"}
    stage = next(s for s in man["stages"] if s["stage"] == "dedup")  # figures of the step
    assert stage["candidate_pairs"] == 2 + stage["removed_by_verification"]
    assert stage["peak_rss_mb"]["main"] > 0
