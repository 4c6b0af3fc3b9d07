"""GRAPE-style fit: per prompt keep the answer the target model finds most
probable, and build preference pairs from several answers to one prompt."""

from __future__ import annotations

import polars as pl

from conftest import DATA, curate_cli
from curate import connect, read

PREDICTIONS = DATA / "self_instruct" / "human_eval_predictions.parquet"


def several_answers(tmp_path, prompts: int = 2):
    """Real rows: 8 GPT-3 variants answering the same self-instruct tasks."""
    d = pl.read_parquet(PREDICTIONS)
    keys = d.select("instruction", "input").unique(maintain_order=True).head(prompts)
    src = tmp_path / "in"
    src.mkdir()
    d.join(keys, on=["instruction", "input"]).write_parquet(src / "rows.parquet")
    return src


def brute_force_best(con, by: str) -> dict[str, str]:
    rows = con.sql(f"select d.prompt_id, d.id, s.{by} from data d join scores s using (id)").fetchall()
    best: dict[str, tuple] = {}
    for pid, rid, value in rows:
        if value is not None and (pid not in best or value > best[pid][1]):
            best[pid] = (rid, value)
    return {pid: rid for pid, (rid, _) in best.items()}


def test_grape_on_a_cheap_score_matches_brute_force(tmp_path):
    src = several_answers(tmp_path, prompts=6)
    out = tmp_path / "r"
    read(src).score("text_stats", tokenizer=None).select("grape", by="text_stats_response_words") \
        .write(out, cache_dir=False, quiet=True)
    con = connect(out)
    prompt_of = dict(con.sql("select id, prompt_id from data").fetchall())
    words = dict(con.sql("select id, text_stats_response_words from scores").fetchall())
    kept = [r[0] for r in con.sql("select id from selected").fetchall()]
    assert sorted(prompt_of[i] for i in kept) == sorted(set(prompt_of.values()))  # one per prompt
    best = brute_force_best(con, "text_stats_response_words")
    for rid in kept:
        assert words[rid] == words[best[prompt_of[rid]]]  # a maximum of its prompt
    lost = con.sql("select id, representative, reason from rejected where stage = 'select'").fetchall()
    assert len(lost) == len(prompt_of) - 6
    for rid, rep, reason in lost:
        assert rep in kept and prompt_of[rep] == prompt_of[rid]
        assert words[rid] <= words[rep] and "more probable answer" in reason


def test_grape_with_perplexity_and_pairs(tmp_path):
    src = several_answers(tmp_path, prompts=2)
    out = tmp_path / "r"
    read(src).score("perplexity", max_length=256).select("grape").write(out, cache_dir=False, quiet=True)
    con = connect(out)
    best = brute_force_best(con, "logprob_conditional")
    kept = {r[0] for r in con.sql("select id from selected").fetchall()}
    assert kept == set(best.values()) and len(kept) == 2
    rejected_id = con.sql("select id from rejected limit 1").fetchall()[0][0]
    text = curate_cli("explain", out, rejected_id).stdout
    assert "representative:" in text and "kept twin" in text

    pairs_file = tmp_path / "pairs.parquet"
    curate_cli("pairs", out, "--output", pairs_file)
    pairs = pl.read_parquet(pairs_file)
    assert pairs.height == 2
    assert set(pairs["chosen_id"]) == kept
    assert (pairs["chosen_value"] > pairs["rejected_value"]).all()
    assert pairs["pair_reason"][0].startswith("highest vs lowest logprob_conditional of 8 answers")
    # the pairs are a preference dataset curate reads back
    run = read(pairs_file).write(tmp_path / "p", cache_dir=False, quiet=True)
    assert run.manifest()["input"]["kind"] == "preference"
    assert run.manifest()["counts"]["selected"] == 2
