"""Target-aware scores: similarity to a target set and DSIR importance weights
rank rows of the target task first in a mixed pool of real data."""

from __future__ import annotations

import polars as pl
import pytest

from conftest import DATA
from curate import CurateError, connect, read


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """150 grade-school maths rows mixed with 150 general instructions (real data),
    and a target file of 40 other maths questions."""
    d = tmp_path_factory.mktemp("target")
    (d / "pool").mkdir()
    pl.read_parquet(DATA / "gsm8k" / "train.parquet").head(150).write_parquet(d / "pool" / "math.parquet")
    pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet").head(150).write_parquet(
        d / "pool" / "general.parquet")
    pl.read_parquet(DATA / "gsm8k" / "test.parquet").head(40).write_parquet(d / "target.parquet")
    return d


def top_share(run_dir, column: str, fraction: float = 0.2) -> float:
    con = connect(run_dir)
    n = con.sql("select count(*) from scores").fetchall()[0][0]
    k = int(n * fraction)
    top = con.sql(f"select d.source from scores s join data d using (id) "
                  f"order by s.{column} desc limit {k}").fetchall()
    return sum(src == "math.parquet" for (src,) in top) / k


def test_target_similarity_top_20_percent_is_the_target_task(pool, tmp_path):
    run = read(pool / "pool").score("target_similarity", target=str(pool / "target.parquet")).write(
        tmp_path / "r", cache_dir=False, quiet=True)
    assert top_share(run.path, "target_similarity") >= 0.9


def test_dsir_weights_rank_the_target_task_first(pool, tmp_path):
    run = read(pool / "pool").score("dsir", target=str(pool / "target.parquet")).write(
        tmp_path / "r", cache_dir=False, quiet=True)
    assert top_share(run.path, "dsir_weight_mean") >= 0.9


def test_missing_target_file_is_a_clear_error(pool, tmp_path):
    with pytest.raises(CurateError, match="does not exist"):
        read(pool / "pool").score("target_similarity", target=str(tmp_path / "nope.jsonl")).write(
            tmp_path / "r", cache_dir=False, quiet=True)
