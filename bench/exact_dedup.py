"""Exact dedup at corpus scale: `curate dedup --method exact` against polars, in one run.

The corpus is bench/dedup.py's (real text plus edited variants; word-edited copies of
the same originals, so most docs are distinct and some are exact repeats), written as
Parquet shards. Each tool runs as its own process, timed from its start to its output
written, with the peak memory of its process tree sampled (bench/dedup.py's spawner):

  curate  its CLI, as a user runs it: `curate dedup DIR --method exact --output RUN
          --no-cache` (NFKC, lower-cased, whitespace-collapsed text; run directory with
          data, scores, selected and rejected rows, manifest)
  polars  the naive baseline: one lazy query over the shards (the same normalisation
          with polars string kernels, `is_first_distinct`), the kept rows written as
          Parquet, on all cores

    .venv/bin/python bench/exact_dedup.py --docs 1000000 --shards 20
    .venv/bin/python bench/exact_dedup.py --corpus DIR    # an existing corpus folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dedup import Spawner, TreeSampler, build

#: seconds between memory samples (reading every process's PSS takes the kernel a while:
#: every 50 ms, as bench/dedup.py samples, slowed this 2-core machine's runs)
SAMPLE_EVERY = 0.25

POLARS = r"""
import sys, polars as pl
corpus, out = sys.argv[1], sys.argv[2]
text = pl.col("text")
key = (text.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ")
       .str.strip_chars(" "))
kept = (pl.scan_parquet(f"{corpus}/*.parquet")
        .filter(key.is_first_distinct() | (key == "") | text.is_null()))
kept.sink_parquet(out, compression="uncompressed")
"""


def run(spawner: Spawner, name: str, cmd: list[str], work: Path, timeout: float) -> dict:
    env = {**os.environ, "CURATE_HOME": str(work / "curate_home"), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    pid = spawner.start(cmd=cmd, env=env, cwd=str(work), log=str(work / f"{name}.log"),
                        timeout=timeout)
    sampler = TreeSampler(pid, every=SAMPLE_EVERY)
    sampler.start()
    done = spawner.finish()
    seconds = time.perf_counter() - t0
    sampler.done.set()
    if done["code"] != 0:
        tail = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{name} failed (exit {done['code']}): " + " | ".join(tail))
    return {"tool": name, "seconds": seconds, "tree_mb": sampler.peak / 2**20,
            "pss_mb": sampler.pss_peak / 2**20}


def kept_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return sum(pq.read_metadata(f).num_rows for f in files)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--dup-fraction", type=float, default=0.985)
    p.add_argument("--shards", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", help="an existing folder of Parquet shards (column text)")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool, in turn; fastest kept")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per tool")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-exact-"))
    spawner = Spawner()
    try:
        corpus = Path(a.corpus) if a.corpus else tmp / "corpus"
        if not a.corpus:
            a.threshold, a.no_truth, a.skip_cross_check = 0.8, True, True  # what build() reads
            n, _, stats, _ = build(a, corpus)
            print(f"corpus: {n} docs, {a.shards} shards, built in {stats['corpus_s']:.1f} s")
        n = kept_rows(corpus)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"{n} docs in {corpus}")
        best: dict[str, dict] = {}
        for rep in range(a.repeat):
            for name in ("curate", "polars"):
                work = tmp / f"{name}{rep}"
                work.mkdir()
                out = work / ("run" if name == "curate" else "kept.parquet")
                cmd = ([sys.executable, "-m", "curate.cli", "dedup", str(corpus), "--method",
                        "exact", "--output", str(out), "--no-cache", "--quiet"]
                       if name == "curate" else [sys.executable, "-c", POLARS, str(corpus), str(out)])
                r = run(spawner, name, cmd, work, a.timeout)
                r["kept"] = kept_rows(out / "selected" if name == "curate" else out)
                r["all"] = best.get(name, {}).get("all", []) + [r["seconds"]]
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
                else:
                    best[name]["all"] = r["all"]
                shutil.rmtree(work)
        ours = best["curate"]["seconds"]
        print(f"\n{'tool':<8} {'seconds':>8} {'docs/s':>9} {'vs curate':>10} {'tree MB':>8} "
              f"{'PSS MB':>7} {'kept':>9}   runs (s)")
        for r in best.values():
            print(f"{r['tool']:<8} {r['seconds']:>8.2f} {n / r['seconds']:>9,.0f} "
                  f"{r['seconds'] / ours:>9.2f}x {r['tree_mb']:>8.0f} {r['pss_mb']:>7.0f} "
                  f"{r['kept']:>9,}   {', '.join(f'{s:.2f}' for s in r['all'])}")
        print(f"\nvs curate: the tool's seconds over curate's (> 1: curate is faster); load "
              f"average at the end {os.getloadavg()[0]:.1f}")
        print(json.dumps({k: {x: v for x, v in r.items()} for k, r in best.items()}))
    finally:
        spawner.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
