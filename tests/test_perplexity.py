"""Perplexity scorer: batched values equal a plain forward pass, sensible
orderings, and bad rows get null scores with a reason (never NaN)."""

from __future__ import annotations

import json
import math
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import DATA, curate_cli
from curate.models import hf_dir, resolve
from curate.schema import MESSAGES
from curate.scorer import get_scorer
from scorers.perplexity import FALLBACK_TEMPLATE

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"


def short_alpaca(n: int, max_chars: int = 300) -> list[dict]:
    """``n`` real alpaca rows with short answers (mixed lengths), as message lists."""
    rows = pq.read_table(ALPACA).to_pylist()
    rows = [r for r in rows if len(r["output"]) <= max_chars][:n]
    return [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in rows]


def sft_batch(convs: list[list[dict]]) -> pa.RecordBatch:
    return pa.table({"id": [str(i) for i in range(len(convs))],
                     "messages": pa.array(convs, MESSAGES)}).to_batches()[0]


@pytest.fixture(scope="module")
def ppl():
    """float32 with padded token-budget batches (the GPU path), on any machine."""
    scorer = get_scorer("perplexity", max_batch_tokens=2048, dtype="float32")
    scorer.setup()
    return scorer


def reference_mean_logprob(scorer, seq) -> float:
    """One row alone, plain transformers forward over the full logits."""
    with torch.inference_mode():
        logits = scorer._lm(torch.tensor([seq.ids])).logits.float()[0]
    lp = torch.log_softmax(logits, -1)
    vals = [lp[t - 1, seq.ids[t]].item() for t in seq.targets]
    return sum(vals) / len(vals)


def test_batched_equals_one_row_forward(ppl):
    convs = short_alpaca(6)
    lengths = [len(ppl.conversation(c).ids) for c in convs]
    assert max(lengths) > 2 * min(lengths)  # mixed lengths, so padding is exercised
    out = ppl.score_batch(sft_batch(convs)).to_pylist()
    for conv, row in zip(convs, out):
        cond = reference_mean_logprob(ppl, ppl.conversation(conv))
        alone = reference_mean_logprob(ppl, ppl.answers_alone(conv[1:]))
        assert row["logprob_conditional"] == pytest.approx(cond, rel=1e-3)
        assert row["logprob_unconditional"] == pytest.approx(alone, rel=1e-3)
        assert row["ppl_conditional"] == pytest.approx(math.exp(-cond), rel=1e-3)
        assert row["ifd"] == pytest.approx(cond / alone, rel=1e-3)
        assert row["ppl_null_reason"] is None and row["ppl_truncated"] is False


def test_bf16_agrees_with_fp32_closely_enough_for_selection(ppl):
    """bf16 (the default on CPUs with native bf16 and on GPUs) vs float32 on 40 real rows:
    IFD ranks the rows the same way and perplexities barely move."""
    import numpy as np
    from scipy.stats import spearmanr

    bf16 = get_scorer("perplexity", dtype="bfloat16")
    assert bf16.cache_key() != ppl.cache_key()  # the dtype is part of the cache key
    batch = sft_batch(short_alpaca(40, max_chars=800))
    a, b = ppl.score_batch(batch).to_pydict(), bf16.score_batch(batch).to_pydict()
    rho = spearmanr(a["ifd"], b["ifd"]).statistic
    rel = np.abs(np.array(b["ppl_conditional"]) / np.array(a["ppl_conditional"]) - 1)
    assert rho >= 0.99, rho
    assert np.median(rel) < 0.01, np.median(rel)


def test_cpu_lanes_give_the_same_scores_as_one_pass_at_a_time(monkeypatch):
    """On a CPU the passes run one per core in threads sharing the model; each
    sequence's value is the same as when the passes run one at a time."""
    import curate.lanes

    assert curate.lanes.cpu_lanes(2) == (2, 1) and curate.lanes.cpu_lanes(16) == (4, 4)
    scorer = get_scorer("perplexity", device="cpu")
    batch = sft_batch(short_alpaca(6, max_chars=400))
    lanes = scorer.score_batch(batch).to_pydict()
    monkeypatch.setattr(curate.lanes, "cpu_lanes", lambda threads: (1, threads))
    one = scorer.score_batch(batch).to_pydict()
    assert lanes["ifd"] == pytest.approx(one["ifd"], rel=1e-6)
    assert lanes["logprob_conditional"] == pytest.approx(one["logprob_conditional"], rel=1e-6)


def test_shared_prefix_computed_once_gives_the_full_pass_scores(monkeypatch):
    """On a CPU the tokens every sequence starts with (SmolLM2's default system prompt)
    are run once and their keys and values reused: in float32 the scores equal those of
    full passes, and the one-row reference."""
    import scorers.perplexity as P

    scorer = get_scorer("perplexity", device="cpu", dtype="float32")
    scorer.setup()
    convs = short_alpaca(5)
    seqs = [scorer.conversation(c) for c in convs] + [scorer.answers_alone(c[1:]) for c in convs]
    prefix = P.shared_prefix(seqs)
    assert scorer._tok.decode(prefix).startswith("<|im_start|>system\nYou are a helpful")
    assert len(prefix) == 22 and all(s.ids[:22] == prefix for s in seqs)
    # a prefix ends before the first scored token's context, and short ones are not used
    assert P.shared_prefix([P.Sequence(list(range(30)), [5, 6])]) == []
    assert len(P.shared_prefix([P.Sequence(list(range(30)), [12])])) == 11
    cached = scorer.score_batch(sft_batch(convs)).to_pydict()
    assert len(scorer._prefix_kv) == 1
    monkeypatch.setattr(P, "MIN_PREFIX", 10**6)  # no shared prefix: full passes
    full = scorer.score_batch(sft_batch(convs)).to_pydict()
    for k in ("logprob_conditional", "logprob_unconditional", "ifd"):
        assert cached[k] == pytest.approx(full[k], rel=1e-5), k
    assert cached["logprob_conditional"][0] == pytest.approx(
        reference_mean_logprob(scorer, seqs[0]), rel=1e-5)


def test_targets_are_exactly_the_answer_and_end_of_turn(ppl):
    conv = short_alpaca(1)[0]
    seq = ppl.conversation(conv)
    text = ppl._tok.decode([seq.ids[t] for t in seq.targets])
    assert text == conv[1]["content"] + "<|im_end|>"


def test_own_instruction_beats_unrelated_instruction(ppl):
    convs = short_alpaca(4)
    swapped = [[convs[(i + 1) % 4][0], convs[i][1]] for i in range(4)]
    own = ppl.score_batch(sft_batch(convs)).column("ppl_conditional").to_pylist()
    other = ppl.score_batch(sft_batch(swapped)).column("ppl_conditional").to_pylist()
    assert all(a < b for a, b in zip(own, other)), (own, other)


def test_bad_rows_get_null_and_reason_never_nan(ppl):
    good = short_alpaca(1)[0]
    convs = [
        [good[0], {"role": "assistant", "content": ""}],
        [good[0], {"role": "assistant", "content": "   \n "}],
        [good[0], {"role": "assistant", "content": "<|im_end|>"}],
        good,
    ]
    rows = ppl.score_batch(sft_batch(convs)).to_pylist()
    for r in rows[:3]:
        assert r["ppl_conditional"] is None and r["ifd"] is None
        assert r["ppl_null_reason"] == "no answer tokens to score"
    assert rows[3]["ppl_conditional"] > 1
    for r in rows:
        for v in r.values():
            assert not (isinstance(v, float) and math.isnan(v))


def test_long_rows_are_cut_and_flagged():
    scorer = get_scorer("perplexity", max_length=48)
    scorer.setup()
    convs = short_alpaca(2)
    long_prompt = [{"role": "user", "content": "word " * 200}, convs[0][1]]
    rows = scorer.score_batch(sft_batch([convs[0], long_prompt])).to_pylist()
    assert rows[0]["ppl_truncated"] is True  # answer partly beyond 48 tokens
    assert rows[0]["ppl_conditional"] is not None and rows[0]["response_tokens"] < 48
    assert rows[1]["ppl_conditional"] is None
    assert rows[1]["ppl_null_reason"] == "answer starts beyond the context length"


def test_preference_rows_score_both_sides(ppl):
    prompt = short_alpaca(1)[0][:1]
    good_answer = short_alpaca(1)[0][1:]
    bad_answer = [{"role": "assistant", "content": "Banana telescope purple the of seventeen."}]
    table = pa.table({"id": ["p"], "prompt": pa.array([prompt], MESSAGES),
                      "chosen": pa.array([good_answer], MESSAGES),
                      "rejected": pa.array([bad_answer], MESSAGES)})
    row = ppl.score_batch(table.to_batches()[0]).to_pylist()[0]
    assert row["chosen_ppl_conditional"] < row["rejected_ppl_conditional"]
    assert row["logprob_margin"] == pytest.approx(
        row["chosen_logprob_conditional"] - row["rejected_logprob_conditional"])
    assert row["logprob_margin"] > 0


def test_model_without_chat_template_falls_back(tmp_path, caplog):
    src = hf_dir(resolve("smollm2-135m"))
    local = tmp_path / "model"
    shutil.copytree(src, local)
    (local / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((local / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (local / "tokenizer_config.json").write_text(json.dumps(cfg))
    scorer = get_scorer("perplexity", model=str(local))
    with caplog.at_level("WARNING"):
        scorer.setup()
    assert scorer.describe()["template"] == FALLBACK_TEMPLATE
    assert "no chat template" in caplog.text
    row = scorer.score_batch(sft_batch(short_alpaca(1))).to_pylist()[0]
    assert row["ppl_conditional"] > 1 and row["ifd"] > 0


def test_cli_score_and_sql(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rows = pl.read_parquet(ALPACA).filter(pl.col("output").str.len_chars() < 200).head(5)
    rows.write_parquet(src / "rows.parquet")
    out = tmp_path / "P"
    curate_cli("score", src, "--scorer", "perplexity", "--output", out, "--cache-dir", tmp_path / "c")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scorers"]["perplexity"]["setup"]["template"] == "chat template of the tokenizer"
    # peak memory per scorer step and for the run: the 135M model is in it
    assert manifest["scorers"]["perplexity"]["peak_rss_mb"]["main"] > 250
    assert manifest["peak_rss_mb"]["main"] >= manifest["scorers"]["perplexity"]["peak_rss_mb"]["main"]
    scores = pl.read_parquet(next((out / "scores").glob("*.parquet")))
    assert scores.height == 5 and scores["ifd"].null_count() == 0
    avg = curate_cli("sql", out, "select avg(ifd) from scores", "--format", "csv").stdout.splitlines()[-1]
    assert float(avg) == pytest.approx(scores["ifd"].mean())


def test_progress_moves_during_a_model_scorer(tmp_path):
    """On a CPU the perplexity scorer takes 8 rows per batch, so its progress line
    advances many times over 48 rows instead of once at the end."""
    import re

    src = tmp_path / "in"
    src.mkdir()
    pl.read_parquet(ALPACA).head(48).write_parquet(src / "rows.parquet")
    proc = curate_cli("score", src, "--scorer", "perplexity", "--option", "max_length=48",
                      "--option", "device=cpu", "--output", tmp_path / "P", "--no-cache",
                      env={"CURATE_PROGRESS": "plain", "CURATE_PROGRESS_INTERVAL": "0"})
    done = [int(m[1]) for m in re.finditer(r"score perplexity: (\d+)/48 rows", proc.stderr)]
    assert len(set(done)) >= 5 and min(done) <= 8 and max(done) == 48, proc.stderr[-2000:]
    # each line has the answer tokens so far, tokens/s and the time left
    lines = [ln for ln in proc.stderr.splitlines() if re.match(r"score perplexity: \d+/48 rows", ln)]
    assert all(re.search(r"[\d,]+ answer tokens, [\d,]+ tokens/s", ln) for ln in lines), lines
    assert any("s left" in ln for ln in lines), lines
    scores = pl.read_parquet(tmp_path / "P" / "scores")
    man = json.loads((tmp_path / "P" / "manifest.json").read_text())["scorers"]["perplexity"]
    assert man["answer_tokens"] == scores["response_tokens"].sum() > 48
    assert man["tokens_per_s"] > 0 and man["peak_rss_mb"]["main"] > 0
    final = re.search(r"score perplexity: 48 rows, .*; ([\d,]+) answer tokens, [\d,]+ tokens/s",
                      proc.stderr)
    assert final and int(final[1].replace(",", "")) == man["answer_tokens"]
