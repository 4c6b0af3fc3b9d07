"""`curate experiment` on a tiny real pool (GSM8K and Alpaca rows), a GSM8K target and
GSM8K test rows: the results table, the interval columns and the plots are written;
an experiment killed after its first (strategy, seed) reuses that cell when rerun;
adding a strategy trains only that one; bad input gets one clear error."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import DATA, ROOT, cli, curate_cli
from curate.errors import CurateError
from curate.experiment import RANDOM, Experiment, run_experiment, summarize

TRAIN = ["--max-steps", "2", "--grad-accum", "1", "--max-length", "160", "--learning-rate", "1e-3"]


def shortest(frame: pl.DataFrame, n: int, offset: int = 0) -> pl.DataFrame:
    return (frame.with_columns(pl.col("output").str.len_chars().alias("_n"))
            .sort("_n", "instruction").drop("_n")[offset:offset + n])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("expdata")
    gsm = pl.read_parquet(DATA / "gsm8k" / "train.parquet").select(
        pl.col("question").alias("instruction"), pl.lit("").alias("input"),
        pl.col("answer").alias("output"))
    alpaca = pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet")
    pl.concat([shortest(gsm, 6), shortest(alpaca, 18)]).write_parquet(tmp / "pool.parquet")
    shortest(gsm, 5, offset=6).write_parquet(tmp / "target.parquet")  # not in the pool
    test = pl.read_parquet(DATA / "gsm8k" / "test.parquet").with_columns(
        pl.col("question").alias("instruction"), pl.col("answer").alias("output"))
    shortest(test, 4).select("question", "answer").write_parquet(tmp / "eval.parquet")
    return tmp


def experiment_args(data, out, strategies="random,target_similarity"):
    return ["experiment", "--pool", data / "pool.parquet", "--eval", data / "eval.parquet",
            "--target", data / "target.parquet", "--budget", "4", "--strategies", strategies,
            "--eval-max-length", "200", "--cache-dir", data / "cache", "-o", out, *TRAIN]


def test_killed_experiment_resumes_and_writes_results(data, tmp_path):
    out = tmp_path / "EXP"
    args = [sys.executable, "-m", "curate.cli", *map(str, experiment_args(data, out))]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "cells" / "random-s0" / "cell.json"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.exists(), "the first trained cell never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "experiment.json").read_text())["status"] == "running"
    assert not (out / "results.parquet").exists()
    before = first.read_text()

    done = curate_cli(*experiment_args(data, out))
    assert "base seed 0: mean eval loss" in done.stderr and "random seed 0" in done.stderr
    assert "[2/3] random seed 0: mean eval loss" in done.stderr and "(reused)" in done.stderr
    assert "target_similarity seed 0: mean eval loss" in done.stderr
    assert first.read_text() == before  # the cell was not redone
    info = json.loads((out / "experiment.json").read_text())
    assert info["status"] == "complete"
    assert info["cells"]["random-s0"]["reused"] and not info["cells"]["target_similarity-s0"]["reused"]
    assert info["eval_rows_in_pool"] == 0

    results = pl.read_parquet(out / "results.parquet")
    assert results.columns == ["strategy", "seed", "eval_id", "loss", "tokens"]
    assert results.group_by("strategy").len().sort("strategy").rows() == [
        ("base", 4), ("random", 4), ("target_similarity", 4)]
    assert results["loss"].is_null().sum() == 0 and results["loss"].min() > 0
    # every trained model moved away from the base model on the same eval rows
    base = results.filter(pl.col("strategy") == "base").sort("eval_id")["loss"].to_numpy()
    for s in ("random", "target_similarity"):
        tuned = results.filter(pl.col("strategy") == s).sort("eval_id")["loss"].to_numpy()
        assert abs(tuned - base).max() > 1e-4

    summary = pl.read_parquet(out / "summary.parquet")
    assert {"mean_loss", "std_loss", "diff_vs_random", "ci_low", "ci_high"} <= set(summary.columns)
    for r in summary.to_dicts():
        assert r["mean_loss"] == pytest.approx(
            results.filter(pl.col("strategy") == r["strategy"])["loss"].mean())
        if r["strategy"] != RANDOM:
            assert r["ci_low"] <= r["diff_vs_random"] <= r["ci_high"]
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "plot.html").read_text()
    assert "plotly" in page and "target_similarity" in page
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == 4  # header + base, random, target_similarity

    # adding a strategy trains only that one
    more = curate_cli(*experiment_args(data, out, "random,target_similarity,dsir"))
    info = json.loads((out / "experiment.json").read_text())
    assert [k for k, c in info["cells"].items() if not c["reused"]] == ["dsir-s0"], more.stderr
    assert set(pl.read_parquet(out / "results.parquet")["strategy"]) == {
        "base", "random", "target_similarity", "dsir"}


def test_paired_bootstrap_interval():
    """A strategy 0.1 lower on every row of every seed: the interval is tight around -0.1;
    one that only differs by noise: the interval covers zero."""
    rows = []
    losses = [1.0, 2.0, 1.5, 0.7, 1.2, 2.2, 0.9, 1.1]
    for seed in range(3):
        for i, loss in enumerate(losses):
            noise = 0.05 * ((i * 7 + seed * 3) % 5 - 2)
            rows += [("random", seed, f"r{i}", loss + noise),
                     ("better", seed, f"r{i}", loss + noise - 0.1),
                     ("same", seed, f"r{i}", loss - noise)]
    summary = {r["strategy"]: r for r in summarize(
        pl.DataFrame(rows, schema=["strategy", "seed", "eval_id", "loss"], orient="row"),
        n_boot=500).to_dicts()}
    assert summary["better"]["diff_vs_random"] == pytest.approx(-0.1)
    assert summary["better"]["ci_low"] == pytest.approx(-0.1) and summary["better"]["ci_high"] == pytest.approx(-0.1)
    assert summary["same"]["ci_low"] < 0 < summary["same"]["ci_high"]
    assert summary["better"]["p_better_than_random"] == 1.0


def test_bad_experiments(data, tmp_path, capsys):
    base = [*experiment_args(data, tmp_path / "E"), "-q"]
    cases = {
        "budget": (["--budget", "500"], "--budget 500 is larger than the pool (24 usable rows"),
        "strategy": (["--strategies", "random,best"], "unknown strategy 'best'"),
        "model": (["--model", str(tmp_path / "nope")], "unknown model"),
        "eval": (["--eval", str(tmp_path / "missing.parquet")], "missing.parquet does not exist"),
    }
    for name, (extra, message) in cases.items():
        r = cli(*base, *extra, "-o", tmp_path / name)
        assert r.returncode != 0 and r.stderr.startswith("error: ") and message in r.stderr, \
            (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / name / "results.parquet").exists()
    with pytest.raises(CurateError, match="strategy 'dsir' needs --target"):
        run_experiment(Experiment(pool=str(data / "pool.parquet"), eval=str(data / "eval.parquet"),
                                  output=str(tmp_path / "t"), strategies=["dsir"]))
    with pytest.raises(CurateError, match="strategy 'sae_target' needs --sae SAE_DIR"):
        run_experiment(Experiment(pool=str(data / "pool.parquet"), eval=str(data / "eval.parquet"),
                                  output=str(tmp_path / "t"), strategies=["sae_target"],
                                  target=str(data / "pool.parquet")))
    # an eval file with no reference answers: plain text
    r = cli(*base, "--eval", DATA / "c4_demo" / "c4_demo.parquet", "-o", tmp_path / "text")
    assert r.returncode != 0 and "reference answers" in r.stderr, r.stderr
    assert not (tmp_path / "text").exists()  # refused before any work

    # eval rows that are also in the pool: a warning with the count, and it goes on
    pool = pl.read_parquet(data / "pool.parquet")
    pool[:2].select(pl.col("instruction").alias("question"), pl.col("output").alias("answer")) \
        .write_parquet(tmp_path / "overlap.parquet")

    class Stop(Exception):
        pass

    def stop(name, seed):
        raise Stop

    with pytest.raises(Stop):
        run_experiment(Experiment(pool=str(data / "pool.parquet"), eval=str(tmp_path / "overlap.parquet"),
                                  output=str(tmp_path / "ov"), budget=4, strategies=["random"],
                                  eval_max_length=200, on_cell=stop))
    assert "warning: 2 of 2 evaluation rows have a prompt that is also in the pool" \
        in capsys.readouterr().err
    info = json.loads((tmp_path / "ov" / "experiment.json").read_text())
    assert info["status"] == "failed" and info["error"].startswith("Stop")
