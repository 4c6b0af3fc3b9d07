"""A run killed with SIGKILL mid-way and started again ends with the same result
as an uninterrupted run, with no duplicate or missing rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from conftest import DATA, ROOT, curate_cli
from curate import connect
from curate.models import load_tokenizer

PIPELINE_CODE = """
from curate import Param, pipeline, read

@pipeline(budget=Param(500, "rows"))
def resumable(budget):
    return (read(kind="sft").score("text_stats").score("quality")
            .filter("not quality_refusal").dedup("exact").select("random", budget=budget))

pipeline = resumable
"""


def selected_ids(run_dir) -> list[str]:
    return [r[0] for r in connect(run_dir).sql("select id from selected order by id").fetchall()]


def test_kill_9_then_rerun_matches_uninterrupted(tmp_path):
    kill_and_resume(tmp_path)


def kill_and_resume(tmp_path, *engine_args: str, rows: int = 7673) -> None:
    """Kill a run over ``rows`` real rows mid-way through scoring, run it again, compare
    with a clean run (``engine_args``: e.g. ``--engine ray --address ADDR``;
    tests/test_ray.py)."""
    load_tokenizer("smollm2-135m")  # convert the embedded model once, outside the timed part
    PIPELINE = tmp_path / "resumable.py"
    PIPELINE.write_text(PIPELINE_CODE)
    src = tmp_path / "in"
    src.mkdir()
    table = pq.read_table(DATA / "gpteacher" / "toolformer_dedupe.parquet")
    pq.write_table(table.slice(0, rows // 2), src / "a.parquet")
    pq.write_table(table.slice(rows // 2, rows - rows // 2), src / "b.parquet")
    common = ["--input", src, "--set", "budget=500", "--batch-rows", "32", "--flush-rows", "32",
              *engine_args]

    killed, cache = tmp_path / "killed", tmp_path / "cache_killed"
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(PIPELINE),
                             *map(str, common), "--output", str(killed), "--cache-dir", str(cache),
                             "-q"], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(cache.glob("text_stats-*/*.parquet"))
        if len(parts) >= 3:  # scoring is under way and some of it is saved
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "running"  # a killed run never looks complete
    assert not (killed / "selected").exists()  # outputs are written last, after every step
    saved = sum(pq.read_metadata(p).num_rows for p in cache.glob("text_stats-*/*.parquet"))
    assert 0 < saved < rows  # killed mid-way through scoring, with part of it saved

    resumed = curate_cli("run", PIPELINE, *common, "--output", killed, "--cache-dir", cache)
    assert "resuming run" in resumed.stderr
    info = json.loads((killed / "manifest.json").read_text())
    assert info["status"] == "complete"
    assert info["scorers"]["text_stats"]["from_cache"] >= saved  # work done before the kill was kept
    assert info["scorers"]["text_stats"]["computed"] > 0  # and the rest was computed now
    assert info["counts"]["selected"] + info["counts"]["rejected"] == rows

    clean = tmp_path / "clean"
    curate_cli("run", PIPELINE, *common, "--output", clean, "--cache-dir", tmp_path / "cache_clean", "-q")
    a, b = selected_ids(killed), selected_ids(clean)
    assert len(a) == 500 and a == b
    con = connect(killed)
    assert con.sql("select count(*) - count(distinct id) from selected").fetchall()[0][0] == 0
    assert con.sql("select count(*) from rejected").fetchall()[0][0] == rows - 500
