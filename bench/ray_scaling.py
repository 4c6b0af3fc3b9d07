"""The Ray engine against the local engine on the same pipelines and rows.

Corpus: real text with near-duplicate variants (tests/_dedup_truth.py, as in
bench/dedup.py). Jobs: the quality scorer (single-core Python: Ray tasks, local
forked workers) and verified MinHash dedup. Each (job, engine) runs in a fresh
process: `local` with 2 worker processes, `ray-1` and `ray-2` on a local Ray cluster
of 1 and 2 CPUs (start-up of the cluster and of its worker
processes timed apart). Prints seconds, docs/s and the
ratios, and checks that every engine kept the same ids.

    .venv/bin/python bench/ray_scaling.py --docs 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ENGINES = {"local": ("local", 2), "ray-1": ("ray", 1), "ray-2": ("ray", 2)}


def build(path: Path, docs: int) -> None:
    import polars as pl

    import _dedup_truth as T

    texts, _ = T.make_corpus(T.real_texts(), docs, 0.3, seed=0)
    pl.DataFrame({"text": texts}).write_parquet(path)


def child(a) -> None:
    """One job on one engine; prints a JSON line."""
    from curate import read

    engine, cpus = ENGINES[a.engine]
    t0 = time.perf_counter()
    eng = engine
    if engine == "ray":
        import ray

        from curate.engine import get_engine

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        eng = get_engine("ray")

        @ray.remote(num_cpus=1)
        def warm() -> None:  # start every worker process and import curate there
            import scorers  # noqa: F401

        ray.get([warm.remote() for _ in range(cpus)])
    start = time.perf_counter() - t0
    pipe = read(a.corpus, kind="text")
    pipe = pipe.score("quality") if a.job == "quality" else pipe.dedup("minhash", threshold=0.8)
    t1 = time.perf_counter()
    run = pipe.write(Path(a.work) / f"{a.job}-{a.engine}", engine=eng, overwrite=True,
                     quiet=True, cache_dir=False, workers=cpus)
    seconds = time.perf_counter() - t1
    kept = sorted(run.table("selected", columns=["id"])["id"].to_pylist())
    print(json.dumps({"seconds": seconds, "startup": start, "kept": len(kept),
                      "kept_hash": hashlib.sha1("\n".join(kept).encode()).hexdigest()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--jobs", default="quality,minhash")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--work", default="/tmp/curate_ray_bench")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--job")
    ap.add_argument("--engine")
    ap.add_argument("--corpus")
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus-{a.docs}.parquet"
    if not corpus.exists():
        build(corpus, a.docs)
    print(f"{a.docs:,} docs of real text; 2-core machine; seconds exclude interpreter and "
          "Ray start-up (shown apart)")
    for job in a.jobs.split(","):
        results = {}
        for engine in a.engines.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", "--job", job, "--engine",
                                   engine, "--corpus", str(corpus), "--work", str(work)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{job} on {engine} failed:\n{proc.stderr[-2000:]}")
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results.get("local")
        for engine, r in results.items():
            ratio = f"{base['seconds'] / r['seconds']:.2f}x local" if base else ""
            same = "" if not base else ("same kept ids" if r["kept_hash"] == base["kept_hash"]
                                        else "KEPT IDS DIFFER")
            print(f"{job:8} {engine:6} {r['seconds']:7.1f} s  {a.docs / r['seconds']:8,.0f} docs/s  "
                  f"{ratio:12} start-up {r['startup']:4.1f} s  kept {r['kept']:,}  {same}")
        if "ray-1" in results and "ray-2" in results:
            print(f"{job:8} ray-2 vs ray-1: {results['ray-1']['seconds'] / results['ray-2']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
