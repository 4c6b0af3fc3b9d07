"""MinHash near-duplicate dedup: curate against datatrove, text-dedup and datasketch, in one run.

One corpus of real text (tests/_dedup_truth.py: real rows from tests/data plus
near-duplicate variants made by realistic edits, at exact Jaccard spread on both
sides of the threshold), written as Parquet (one column ``text``). Every tool
deduplicates it with the same shingles (word 5-grams of the NFKC, lower-cased,
whitespace-collapsed text, punctuation kept: ``curate.text.shingles``), the same
threshold and number of permutations, each in its own subprocess so that its time
and peak memory are its own. Each tool's clusters are scored against the exact
ground truth (a doc is a true duplicate when another doc has Jaccard >= threshold).

  curate      its CLI, as a user runs it: `curate dedup DIR --method minhash --threshold T
              --num-perm N --output RUN --no-cache`; clusters from the run's rejected rows
              (stage dedup, representative), read after the process ends
  datasketch  the naive baseline: MinHash per doc (update_batch, xxh32 as curate), one
              in-memory MinHashLSH(threshold, num_perm), query every doc, union-find
  datatrove   its 4-stage MinHash pipeline (signature, buckets, cluster, filter) on a
              LocalPipelineExecutor; clusters from the cluster stage's .clusters files
  text-dedup  text_dedup.minhash (HF datasets map + in-memory band tables + union-find);
              clusters from its union-find

    bash bench/setup_peers.sh                 # once: .venv-bench with the peers
    .venv/bin/python bench/dedup.py --docs 50000
    .venv/bin/python bench/dedup.py --docs 5000 --tools datasketch,datatrove

Peers run under --peer-python (default .venv-bench/bin/python when it exists), curate
under --curate-python (default: this interpreter). "seconds" is the tool's own call,
from reading the Parquet to its clusters / output (imports and interpreter start are
left out; "process s" has them). Peak RSS: the largest single process of the tool
(getrusage of the reaped child, which covers its reaped workers) and the largest
sampled sum over its process tree (psutil, every 50 ms; forked workers share pages,
so the sum over-counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _dedup_truth as T  # noqa: E402

TOOLS = ("curate", "datasketch", "datatrove", "text-dedup", "rensa")
PEER_VENV_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


class Skip(Exception):
    """A tool that cannot run here: the reason goes in the table."""


# ======================================================================================
# children: one tool each, run as `python bench/dedup.py --child TOOL ...`
# ======================================================================================

def corpus_files(corpus: Path) -> list[Path]:
    return sorted(corpus.glob("*.parquet"))


def read_texts(corpus: Path) -> list[str]:
    import pyarrow.parquet as pq

    out: list[str] = []
    for f in corpus_files(corpus):
        out.extend(pq.read_table(f, columns=["text"]).column("text").to_pylist())
    return out


def offsets(corpus: Path) -> dict[str, int]:
    """First global doc index of each shard (by file name)."""
    import pyarrow.parquet as pq

    out, start = {}, 0
    for f in corpus_files(corpus):
        out[f.name] = start
        start += pq.ParquetFile(f).metadata.num_rows
    return out


def labels_from_pairs(n: int, pairs) -> np.ndarray:
    """Per-doc cluster label (-1: in no cluster) from duplicate pairs."""
    labels = T.clusters_from_pairs(n, pairs)
    counts = np.bincount(labels, minlength=n)
    labels[counts[labels] < 2] = -1
    return labels


def curate_command(a, python: str, corpus: Path, out: Path) -> list[str]:
    """The ``curate dedup`` command a user runs (the bench times that whole process)."""
    cmd = [python, "-m", "curate.cli", "dedup", str(corpus), "--method", "minhash",
           "--threshold", str(a.threshold), "--num-perm", str(a.num_perm), "--output", str(out),
           "--no-cache", "--quiet", "--workers", str(a.workers)]
    for key, value in json.loads(a.curate_options).items():  # e.g. {"hash": "datasketch"}
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def curate_result(corpus: Path, out: Path) -> dict:
    """curate's clusters, read from its finished run directory (not timed)."""
    from curate import connect, open_run

    run = open_run(out)
    # doc index = first index of its shard + source_row; the kept twin via representative
    off = offsets(corpus)
    rows = connect(run.path).sql(
        "select d.source, d.source_row, k.source, k.source_row from rejected r "
        "join data d using (id) join data k on k.id = r.representative "
        "where r.stage = 'dedup'").fetchall()
    pairs = [(off[Path(s).name] + i, off[Path(ks).name] + ki) for s, i, ks, ki in rows]
    spec = next((s for s in run.manifest().get("pipeline", {}).get("steps", [])
                 if s.get("step") == "score"), {})
    opts = spec.get("options") or spec.get("config") or {}
    lsh = f"{opts['bands']}x{opts['rows']}" if "bands" in opts else "auto"
    workers = run.manifest().get("scorers", {}).get("minhash", {}).get("workers", 1)
    return {"seconds": run.manifest()["timings"]["total_s"], "pairs": pairs, "lsh": lsh,
            "workers": workers, "version": _version("curate")}


def run_datasketch(a) -> dict:
    import xxhash
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    texts = read_texts(Path(a.corpus))
    lsh = MinHashLSH(threshold=a.threshold, num_perm=a.num_perm)
    sh = [[s.encode("utf-8") for s in T.shingles(t)] for t in texts]
    mhs = MinHash.bulk(sh, num_perm=a.num_perm, seed=1, hashfunc=xxhash.xxh32_intdigest)
    with lsh.insertion_session() as session:
        for i, (m, s) in enumerate(zip(mhs, sh)):
            if s:
                session.insert(i, m, check_duplication=False)
    pairs = [(i, j) for i, (m, s) in enumerate(zip(mhs, sh)) if s for j in lsh.query(m) if j != i]
    labels = labels_from_pairs(len(texts), pairs)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "labels": labels, "lsh": f"{lsh.b}x{lsh.r}", "workers": 1,
            "version": _version("datasketch")}


def run_rensa(a) -> dict:
    """rensa (Rust MinHash, R-MinHash variant) with its LSH index, on the same shingles;
    no verification. rensa needs bands that divide num_perm: of those, the one with the
    least weighted false-positive + false-negative area (datasketch's criterion)."""
    from datasketch.lsh import _false_negative_probability, _false_positive_probability
    from rensa import RMinHash, RMinHashLSH

    def error(b: int) -> float:
        r = a.num_perm // b
        return (0.5 * _false_positive_probability(a.threshold, b, r)
                + 0.5 * _false_negative_probability(a.threshold, b, r))

    t0 = time.perf_counter()
    texts = read_texts(Path(a.corpus))
    sh = [list(T.shingles(t)) for t in texts]
    bands = min((b for b in range(1, a.num_perm + 1) if a.num_perm % b == 0), key=error)
    rows = a.num_perm // bands
    mhs = RMinHash.from_token_sets(sh, num_perm=a.num_perm, seed=1)
    lsh = RMinHashLSH(threshold=a.threshold, num_perm=a.num_perm, num_bands=bands)
    for i, (m, s) in enumerate(zip(mhs, sh)):
        if s:
            lsh.insert(i, m)
    pairs = [(i, j) for i, (m, s) in enumerate(zip(mhs, sh)) if s for j in lsh.query(m) if j != i]
    labels = labels_from_pairs(len(texts), pairs)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "labels": labels, "lsh": f"{bands}x{rows}", "workers": 1,
            "version": _version("rensa")}


def run_datatrove(a) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    corpus, work = Path(a.corpus), Path(a.work) / "datatrove"
    shards = len(corpus_files(corpus))
    config = MinhashConfig(n_grams=5, num_buckets=a.dt_buckets, hashes_per_bucket=a.dt_hashes,
                           seed=1, hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    if a.peer_shingles == "ours":
        from datatrove.utils.word_tokenizers import WhitespaceTokenizer

        class SameShinglesSignature(MinhashDedupSignature):
            """datatrove's signature stage with the shared shingles (punctuation kept, no
            simplify_text, whitespace words) in place of its normalisation and tokenizer;
            hashing (xxhash64), signatures, buckets and clusters stay datatrove's. (dill
            ships this class to the workers by value.)"""

            def get_shingles(self, text: str) -> np.ndarray:
                h = self._hash_func
                return np.fromiter((h(s.encode("utf-8")) for s in T.shingles(text, self.config.n_grams)),
                                   dtype=np.uint64).reshape((-1, 1))

        signature = SameShinglesSignature(str(work / "signatures"), config=config,
                                          language=WhitespaceTokenizer())
    else:
        try:
            signature = MinhashDedupSignature(str(work / "signatures"), config=config)
        except Exception as err:  # English needs spacy for its word tokenizer
            raise Skip(f"datatrove native shingles: {err}") from err
        # datatrove 0.10 hashes str n-grams; xxhash >= 4 takes bytes only (xxhash 3 encoded
        # str as UTF-8 itself): encode first, the same hash values as under xxhash 3
        signature._hash_func = _encoding(signature._hash_func)
    logs = work / "logs"
    w = a.workers
    t0 = time.perf_counter()
    LocalPipelineExecutor([ParquetReader(str(corpus), text_key="text", glob_pattern="*.parquet"),
                           signature], tasks=shards, workers=w,
                          logging_dir=str(logs / "1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"),
                                               config=config)],
                          tasks=config.num_buckets, workers=w, logging_dir=str(logs / "2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"),
                                               config=config, save_cluster_id=True)],
                          tasks=1, workers=1, logging_dir=str(logs / "3")).run()
    LocalPipelineExecutor([ParquetReader(str(corpus), text_key="text", glob_pattern="*.parquet"),
                           MinhashDedupFilter(str(work / "remove"),
                                              exclusion_writer=ParquetWriter(str(work / "removed"))),
                           ParquetWriter(str(work / "deduped"))],
                          tasks=shards, workers=w, logging_dir=str(logs / "4")).run()
    seconds = time.perf_counter() - t0
    # rank r reads shard r (files sorted); .clusters holds (doc index in the shard, cluster id)
    off = list(offsets(corpus).values())
    total = off[-1] + _rows(corpus_files(corpus)[-1])
    labels = np.full(total, -1, dtype=np.int64)
    for r in range(shards):
        f = work / "remove" / f"{r:06d}.clusters"
        if f.exists():
            pairs = np.fromfile(f, dtype="<u4").reshape(-1, 2).astype(np.int64)
            labels[off[r] + pairs[:, 0]] = pairs[:, 1]
    return {"seconds": seconds, "labels": labels, "workers": w,
            "lsh": f"{config.num_buckets}x{config.hashes_per_bucket}",
            "version": _version("datatrove")}


class _encoding:
    """A str -> int hash that encodes UTF-8 first (picklable for datatrove's workers)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, data):
        return self.fn(data.encode("utf-8") if isinstance(data, str) else data)


def _rows(f: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(f).metadata.num_rows


def run_text_dedup(a) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import text_dedup.minhash as tdm
    from text_dedup.utils import IOArgs, MetaArgs, MinHashArgs, optimal_param

    corpus, work = Path(a.corpus), Path(a.work) / "text_dedup"
    if a.peer_shingles == "ours":
        tdm.embed_func = _text_dedup_embed(tdm)
    io = IOArgs(path="parquet", data_files=[str(f) for f in corpus_files(corpus)], split="train",
                cache_dir=str(work / "hf_cache"), output=str(work / "out"), num_proc=a.workers,
                clean_cache=True)
    meta = MetaArgs(column="text", batch_size=10_000)
    mh = MinHashArgs(ngram=5, min_length=0, seed=42, num_perm=a.num_perm, threshold=a.threshold,
                     hash_func="xxh3", hash_bits=64)
    t0 = time.perf_counter()
    tdm.main.callback(io_args=io, meta_args=meta, minhash_args=mh)
    seconds = time.perf_counter() - t0
    uf = tdm.uf  # the union-find of the run: index column = row order of the shards
    n = sum(_rows(f) for f in corpus_files(corpus))
    labels = np.full(n, -1, dtype=np.int64)
    for i in list(uf.parent):
        labels[i] = uf.find(i)
    b, r = optimal_param(a.threshold, a.num_perm, false_positive_weight=0.5,
                         false_negative_weight=0.5)
    return {"seconds": seconds, "labels": labels, "lsh": f"{b}x{r}", "workers": a.workers,
            "version": _version("text-dedup")}


def _text_dedup_embed(tdm):
    """text_dedup.minhash.embed_func with the shared shingles in place of its own
    (it splits on every non-word character); hashing and permutations are its own."""
    sig_col, idx_col = tdm.SIGNATURE_COLUMN, tdm.INDEX_COLUMN

    def embed_func(content, idx, *, num_perm, ngram_size, min_length, hashranges, permutations,
                   hash_func, dtype, max_hash, modulo_prime):
        a, b = permutations
        tokens = {s.encode("utf-8") for s in T.shingles(content, ngram_size)}
        hv = np.array([hash_func(t) for t in tokens], dtype=dtype).reshape(len(tokens), 1)
        hv = (hv * a + b) % modulo_prime & max_hash
        hv = np.vstack([hv, np.full(num_perm, max_hash, dtype=dtype)]).min(axis=0)
        return {sig_col: [bytes(hv[s:e].byteswap().data) for s, e in hashranges], idx_col: idx}

    return embed_func


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


RUNNERS = {"datasketch": run_datasketch, "datatrove": run_datatrove,
           "rensa": run_rensa,
           "text-dedup": run_text_dedup}


def child(a) -> None:
    result_path = Path(a.result)
    try:
        res = RUNNERS[a.child](a)
    except Skip as err:
        res = {"skipped": str(err)}
    except ImportError as err:
        res = {"skipped": f"{a.child} is not installed in {sys.executable} ({err}); "
                          f"run bash bench/setup_peers.sh"}
    if "labels" in res:
        np.save(result_path.with_suffix(".npy"), np.asarray(res.pop("labels"), dtype=np.int64))
        res["labels_file"] = str(result_path.with_suffix(".npy"))
    result_path.write_text(json.dumps(res))


# ======================================================================================
# parent: corpus, truth, one subprocess per tool, table
# ======================================================================================

def build(a, corpus: Path) -> tuple[int, set[int], dict, np.ndarray]:
    t0 = time.perf_counter()
    docs, fams = T.make_corpus(T.real_texts(), a.docs, a.dup_fraction, a.seed, a.threshold)
    t1 = time.perf_counter()
    truth, best, cross = None, None, []
    if not a.no_truth:
        # = T.true_duplicates(docs, fams, threshold, across=True), sharing the shingle sets
        sets = [T.shingles(d) for d in docs]
        pairs = T.family_pairs(docs, fams, a.threshold, sets=sets)
        cross = [] if a.skip_cross_check else T.cross_family_pairs(docs, fams, a.threshold, sets=sets)
        truth = {i for p in pairs + cross for i in p[:2]}
        best = T.best_family_jaccard(docs, fams, sets=sets)
        for i, j, s in cross:
            best[i], best[j] = max(best[i], s), max(best[j], s)
        del sets
    t2 = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus.mkdir(parents=True)
    bounds = np.linspace(0, len(docs), a.shards + 1).astype(int)
    for k in range(a.shards):
        pq.write_table(pa.table({"text": docs[bounds[k]:bounds[k + 1]]}),
                       corpus / f"part-{k:05d}.parquet")
    words = np.array([len(d.split()) for d in docs])
    stats = {"docs": len(docs), "families": len(set(fams)),
             "true_duplicates": len(truth) if truth is not None else None,
             "corpus_s": t1 - t0, "truth_s": t2 - t1, "mean_words": float(words.mean()),
             "cross_checked": not a.skip_cross_check, "cross_family_pairs": len(cross)}
    return len(docs), truth, stats, best


def _pss(pid: int) -> int:
    """Proportional set size (Linux): shared pages split among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


class TreeSampler(threading.Thread):
    """Largest sums of RSS and of PSS over a process and its descendants, sampled. The
    RSS sum counts the pages forked workers share with their parent once per process;
    the PSS sum counts every page once."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.done = pid, every, 0, threading.Event()
        self.pss_peak = 0

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.is_set():
            total = pss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                        pss += _pss(p.pid)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self.pss_peak = max(self.pss_peak, pss)
            time.sleep(self.every)


# Tools start from this small stdlib-only process, not from the parent: a child's peak RSS
# (ru_maxrss) carries over the peak of the process it was forked from, and the parent
# holds the whole corpus and its truth.
SPAWNER = r"""
import json, os, subprocess, sys, threading
for line in sys.stdin:
    req = json.loads(line)
    with open(req["log"], "wb") as log:
        p = subprocess.Popen(req["cmd"], stdout=log, stderr=subprocess.STDOUT, env=req["env"],
                             cwd=req["cwd"], start_new_session=True)
        print(json.dumps({"pid": p.pid}), flush=True)
        timer = threading.Timer(req["timeout"], os.killpg, (p.pid, 9))
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"code": p.returncode, "maxrss_kb": usage.ru_maxrss}), flush=True)
"""


class Spawner:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", SPAWNER], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def start(self, **req) -> int:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def finish(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_tool(a, spawner: Spawner, tool: str, corpus: Path, work: Path) -> dict:
    python = a.curate_python if tool == "curate" else a.peer_python
    work.mkdir(exist_ok=True)
    result = work / f"{tool}.json"
    tool_work = work / tool
    tool_work.mkdir()
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, "--corpus", str(corpus),
           "--work", str(tool_work), "--result", str(result), "--threshold", str(a.threshold),
           "--num-perm", str(a.num_perm), "--workers", str(a.workers),
           "--dt-buckets", str(a.dt_buckets), "--dt-hashes", str(a.dt_hashes),
           "--peer-shingles", a.peer_shingles, "--curate-options", a.curate_options]
    if tool == "curate":  # the user's command, as is; its clusters are read afterwards
        cmd = curate_command(a, python, corpus, tool_work / "curate_run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "bench"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "CURATE_HOME": str(work / "curate_home"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    pid = spawner.start(cmd=cmd, env=env, cwd=str(tool_work), log=str(work / f"{tool}.log"),
                        timeout=a.timeout)
    sampler = TreeSampler(pid)
    sampler.start()
    done = spawner.finish()
    wall = time.perf_counter() - t0
    sampler.done.set()
    out = {"tool": tool, "process_s": wall, "rss_mb": done["maxrss_kb"] / 1024,
           "tree_mb": sampler.peak / 2**20, "pss_mb": sampler.pss_peak / 2**20, "load": load}
    if tool == "curate" and done["code"] == 0:
        result.write_text(json.dumps(curate_result(corpus, tool_work / "curate_run")))
    if done["code"] != 0 or not result.exists():
        tail = (work / f"{tool}.log").read_text(errors="replace").strip().splitlines()[-15:]
        why = "timed out" if done["code"] == -9 else f"exit {done['code']}"
        out["skipped"] = f"{tool} failed ({why}): " + " | ".join(tail[-3:])
        out["log_tail"] = tail
        return out
    out.update(json.loads(result.read_text()))
    return out


def bands(threshold: float) -> list[tuple[float, float]]:
    lo = [0.0, 0.5, threshold - 0.1, threshold, threshold + 0.05, threshold + 0.1, 1.0]
    return [(x, y) for x, y in zip(lo, lo[1:] + [1.01]) if x < y]


def by_band(labels: np.ndarray, truth: set[int], best: np.ndarray, n: int,
            threshold: float) -> dict[str, list[int]]:
    """Per band of each doc's best exact Jaccard to another doc: [docs, predicted]."""
    pred = np.zeros(n, dtype=bool)
    pred[list(T.predicted_duplicates(labels, n))] = True
    out = {}
    for lo, hi in bands(threshold):
        m = (best >= lo) & (best < hi)
        out["1.00" if lo == 1.0 else f"{lo:.2f}-{hi:.2f}"] = [int(m.sum()), int((m & pred).sum())]
    return out


def print_bands(results: list[dict], threshold: float) -> None:
    done = [r for r in results if "by_band" in r]
    if not done:
        return
    keys = list(done[0]["by_band"])
    print(f"\nshare of docs flagged as duplicates, by the doc's best exact Jaccard to any other doc "
          f"(below {threshold}: false positives; at or above: recall)")
    print(f"{'best J':<11}" + "".join(f"{k:>11}" for k in keys))
    print(f"{'docs':<11}" + "".join(f"{done[0]['by_band'][k][0]:>11}" for k in keys))
    for r in done:
        print(f"{r['tool']:<11}" + "".join(
            f"{(r['by_band'][k][1] / r['by_band'][k][0] if r['by_band'][k][0] else 0):>11.3f}"
            for k in keys))


def fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dup-fraction", type=float, default=0.7,
                   help="share of docs that are edited variants (the rest are distinct real "
                        "originals; about 16.7k exist, so 50k docs need >= 0.665)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for the peers that parallelise (datatrove, text-dedup)")
    p.add_argument("--shards", type=int, default=None,
                   help="Parquet files the corpus is split into (default: --workers)")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--peer-python", default=str(PEER_VENV_PYTHON) if PEER_VENV_PYTHON.exists()
                   else sys.executable)
    p.add_argument("--curate-python", default=sys.executable)
    p.add_argument("--peer-shingles", choices=("ours", "native"), default="ours",
                   help="ours: every peer gets the shared shingles (default); native: datatrove "
                        "and text-dedup tokenise their own way (punctuation dropped)")
    p.add_argument("--curate-options", default="{}",
                   help='more dedup options for curate, JSON: \'{"bands": 21, "rows": 6}\'')
    p.add_argument("--dt-buckets", type=int, default=14, help="datatrove LSH bands")
    p.add_argument("--dt-hashes", type=int, default=8, help="datatrove rows per band")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per tool")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every tool this many times (in turn) and report its fastest run")
    p.add_argument("--skip-cross-check", action="store_true",
                   help="assume no duplicates across families instead of checking exactly")
    p.add_argument("--no-truth", action="store_true",
                   help="do not label the corpus (no precision / recall): for 1M docs, whose "
                        "exact labels take longer than the tools")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", help="also write the results here")
    # child mode
    p.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)

    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tool(s) {sorted(unknown)}; choose from {', '.join(TOOLS)}")
    a.shards = a.shards or a.workers
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-dedup-"))
    spawner = Spawner()
    try:
        corpus = tmp / "corpus"
        n, truth, stats, best_j = build(a, corpus)
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), platform.processor()) \
            if Path("/proc/cpuinfo").exists() else platform.processor()
        print(f"machine: {os.cpu_count()} cores ({cpu}), load average {os.getloadavg()[0]:.1f}")
        print(f"corpus: {stats['docs']} docs ({stats['families']} real originals + "
              f"{stats['docs'] - stats['families']} edited variants, {stats['mean_words']:.0f} words "
              f"on average), {a.shards} Parquet shards; built in {stats['corpus_s']:.1f}s")
        if truth is not None:
            print(f"truth: {stats['true_duplicates']} docs have another doc at exact Jaccard >= "
                  f"{a.threshold} (word 5-grams); labelled in {stats['truth_s']:.1f}s"
                  + (" incl. an exact cross-family check" if stats["cross_checked"] else ""))
        else:
            print("truth: not labelled (--no-truth): no precision / recall")
        print(f"peers: {a.peer_python}; curate: {a.curate_python}; peer shingles: {a.peer_shingles}")
        best: dict[str, dict] = {}
        for rep in range(a.repeat):  # rounds in turn, so a busy spell hits every tool alike
            for tool in tools:
                if "skipped" in best.get(tool, {}):
                    continue
                print(f"running {tool}" + (f" (round {rep + 1}/{a.repeat})" if a.repeat > 1 else "")
                      + " ...", flush=True)
                r = run_tool(a, spawner, tool, corpus, tmp / f"round{rep}")
                if "skipped" not in r:
                    labels = (np.load(r["labels_file"]) if "labels_file" in r
                              else labels_from_pairs(n, r.get("pairs", [])))
                    r["flagged"] = len(T.predicted_duplicates(labels, n))
                    if truth is not None:
                        r.update(T.score(labels, truth, n))
                        r["by_band"] = by_band(labels, truth, best_j, n, a.threshold)
                    r["docs_per_s"] = n / r["seconds"]
                    r.pop("pairs", None)
                    r["all_seconds"] = best.get(tool, {}).get("all_seconds", []) + [r["seconds"]]
                    if tool in best and best[tool]["seconds"] <= r["seconds"]:
                        best[tool]["all_seconds"] = r["all_seconds"]
                        continue
                best[tool] = r
        results = [best[t] for t in tools]
        ours = next((r for r in results if r["tool"] == "curate" and "skipped" not in r), None)
        print()
        head = (f"{'tool':<11} {'version':<8} {'workers':>7} {'LSH bxr':>7} {'seconds':>8} "
                f"{'docs/s':>8} {'t/t_ours':>8} {'process s':>9} {'p/p_ours':>8} {'RSS MB':>7} "
                f"{'tree MB':>7} {'PSS MB':>7} {'flagged':>8} {'precision':>9} {'recall':>7} "
                f"{'F1':>6}")
        print(head)
        print("-" * len(head))
        for r in results:
            if "skipped" in r:
                print(f"{r['tool']:<11} skipped: {r['skipped']}")
                continue
            ratio = r["seconds"] / ours["seconds"] if ours else None
            process = r["process_s"] / ours["process_s"] if ours else None
            print(f"{r['tool']:<11} {r.get('version', '?'):<8} {r.get('workers', '-'):>7} "
                  f"{r.get('lsh', '-'):>7} {r['seconds']:>8.1f} {r['docs_per_s']:>8.0f} "
                  f"{fmt(ratio, '>8.2f'):>8} {r['process_s']:>9.1f} {fmt(process, '>8.2f'):>8} "
                  f"{r['rss_mb']:>7.0f} {r['tree_mb']:>7.0f} {r['pss_mb']:>7.0f} "
                  f"{r['flagged']:>8} {fmt(r.get('precision'), '>9.4f'):>9} "
                  f"{fmt(r.get('recall'), '>7.4f'):>7} {fmt(r.get('f1'), '>6.4f'):>6}")
        if a.repeat > 1:
            print("all runs (s): " + "; ".join(f"{r['tool']} " + ", ".join(f"{x:.1f}" for x in r["all_seconds"])
                                              for r in results if "all_seconds" in r))
        if ours is None and "curate" in tools:
            print("curate: dedup not available yet" if any(
                "not available yet" in r.get("skipped", "") for r in results) else
                "curate: no result (see above)")
        print_bands(results, a.threshold)
        print(f"\nt/t_ours: the tool's seconds over curate's (> 1: curate is faster); p/p_ours: "
              f"the same for the whole process (interpreter start and imports included). "
              f"load average at the end {os.getloadavg()[0]:.1f}")
        if a.json:
            Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items()
                                                         if not k.startswith(("child", "corpus", "work", "result"))},
                                                "corpus": stats, "results": results}, indent=2,
                                               default=str))
    finally:
        spawner.close()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
