"""The default SFT pipeline on a real pool with known-bad rows injected.

The injection lives here, in the test: rows built from a held-out real set
(AlpacaEval prompts and reference answers) made bad in five ways.
"""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from conftest import DATA, ROOT, curate_cli
from curate import connect

PIPELINE = ROOT / "pipelines" / "sft_select.py"
REFUSAL = ("I'm sorry, but as an AI language model, I cannot help with that request. "
           "Please consult a qualified professional.")


def inject(held_out: pl.DataFrame, per_kind: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = held_out.filter(pl.col("output").str.split(" ").list.len() >= 40).to_dicts()
    rng.shuffle(rows)
    bad = []
    take = iter(rows)
    for kind in ("empty", "other_question", "repeated", "refusal", "truncated"):
        for _ in range(per_kind):
            r = next(take)
            answer = r["output"]
            if kind == "empty":
                answer = ""
            elif kind == "other_question":
                answer = rows[-1 - len(bad)]["output"]  # a real answer to another prompt
            elif kind == "repeated":
                first = answer.split(". ")[0].rstrip(".") + ". "
                answer = first * 8
            elif kind == "refusal":
                answer = REFUSAL
            else:
                words = answer.split(" ")
                answer = " ".join(words[: len(words) // 2]).rstrip(".!?")
            bad.append({"instruction": r["instruction"], "input": "", "output": answer,
                        "injected": kind})
    return bad


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("inject")
    clean = pl.concat([
        pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet"),
        pl.read_parquet(DATA / "gpteacher" / "roleplay_rest.parquet"),
    ]).with_columns(injected=pl.lit("none"))
    bad = pl.DataFrame(inject(pl.read_parquet(DATA / "alpaca_eval" / "eval_set.parquet"), 25))
    rows = pl.concat([clean, bad.select(clean.columns)]).sample(fraction=1.0, shuffle=True, seed=0)
    (d / "pool").mkdir()
    rows.write_parquet(d / "pool" / "rows.parquet")
    return d, clean.height, bad.height


def outcome(run_dir) -> dict[str, tuple[int, int]]:
    """injected kind -> (selected, total) using the kept original column."""
    con = connect(run_dir)
    total = dict(con.sql("select injected, count(*) from data group by 1").fetchall())
    # rows rejected at ingest (empty answers) are not in `data`: count them from rejected
    ingest_bad = con.sql("select count(*) from rejected where stage = 'ingest'").fetchall()[0][0]
    total["empty"] = total.get("empty", 0) + ingest_bad
    sel = dict(con.sql("select injected, count(*) from selected group by 1").fetchall())
    return {k: (sel.get(k, 0), n) for k, n in total.items()}


def test_default_sft_pipeline_rejects_injected_rows(pool, tmp_path):
    d, n_clean, n_bad = pool
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    common = ["--input", d / "pool", "--cache-dir", cache, "--set", "use_ifd=false", "-q"]
    curate_cli("run", PIPELINE, *common, "--output", whole, "--set", f"budget={n_clean + n_bad}")
    res = outcome(whole)
    injected_kept = sum(s for k, (s, _) in res.items() if k != "none")
    assert injected_kept <= 0.10 * n_bad, res  # >= 90% of the injected rows rejected
    clean_kept, clean_total = res["none"]
    assert clean_total == n_clean and clean_kept >= 0.8 * n_clean, res
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["counts"]["selected"] + manifest["counts"]["rejected"] == n_clean + n_bad

    default = tmp_path / "default"
    curate_cli("run", PIPELINE, *common, "--output", default)
    res = outcome(default)
    selected = sum(s for s, _ in res.values())
    assert selected == 1000
    assert sum(s for k, (s, _) in res.items() if k != "none") < 0.01 * selected, res
