"""Which layer of the target model separates tasks best through an SAE, and how
``sae_target`` compares with the embedding ``target_similarity`` on the same pool.

Real data (``../shared/data`` or ``tests/data``): a pool of GPTeacher role-play rows
and general Alpaca-style instructions (LLaMA-Factory's alpaca_en_demo), half each; a
target set of role-play rows from outside the pool; SAEs trained per layer on other
rows (role-play, Alpaca-style, GSM8K). For each layer: held-out FVU, dead share, and
the share of role-play rows in the top 20% of the pool by SAE target similarity.

    python bench/sae_layers.py --layers 3,9,15,21,27 --out bench/results/sae_layers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data_dir() -> Path:
    shared = ROOT.parent / "shared" / "data"
    return shared if (shared / "gpteacher").exists() else ROOT / "tests" / "data"


def build(out: Path, pool_each: int, target_n: int, train_each: int) -> dict[str, Path]:
    """Write pool.parquet (with the task label), target.parquet and train.parquet."""
    d = _data_dir()
    rp = pl.read_parquet(d / "gpteacher" / "roleplay_rest.parquet")
    al = pl.read_parquet(d / "llamafactory" / "alpaca_en_demo.parquet")
    gs = pl.read_parquet(d / "gsm8k" / "train.parquet").select(
        instruction="question", input=pl.lit(""), output="answer")
    cols = ["instruction", "input", "output"]
    pool = pl.concat([rp[:pool_each].select(cols).with_columns(task=pl.lit("roleplay")),
                      al[:pool_each].select(cols).with_columns(task=pl.lit("general"))])
    pool = pool.sample(fraction=1.0, shuffle=True, seed=0)
    target = rp[len(rp) - target_n:].select(cols)
    train = pl.concat([rp[pool_each:pool_each + train_each].select(cols),
                       al[pool_each:pool_each + train_each].select(cols),
                       gs[:train_each // 2]]).sample(fraction=1.0, shuffle=True, seed=1)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pool": out / "pool.parquet", "target": out / "target.parquet",
             "train": out / "train.parquet"}
    pool.write_parquet(paths["pool"])
    target.write_parquet(paths["target"])
    train.write_parquet(paths["train"])
    return paths


def canonical(path: Path):
    import pyarrow as pa

    from curate.ingest import ingest

    return pa.concat_tables([t for t, _, _ in ingest(str(path)) if t is not None])


def top_share(scores: list[float | None], is_target: list[bool], frac: float = 0.2) -> float:
    order = sorted(range(len(scores)), key=lambda i: -(scores[i] if scores[i] is not None else -1e9))
    top = order[:int(round(frac * len(scores)))]
    return sum(is_target[i] for i in top) / len(top)


def main() -> None:
    import torch

    from curate.activations import Residual
    from curate.sae_train import TrainConfig, fire_counts, fvu, train_topk
    from curate.scorer import get_scorer
    from scorers.sae import jaccard, pool_codes

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="3,9,15,21,27")
    ap.add_argument("--pool-each", type=int, default=200)
    ap.add_argument("--target", type=int, default=20)
    ap.add_argument("--train-each", type=int, default=200)
    ap.add_argument("--width", type=int, default=2304)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--work", default="/tmp/curate_sae_bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sae_layers.json"))
    a = ap.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    paths = build(Path(a.work), a.pool_each, a.target, a.train_each)
    t0 = time.time()
    res = Residual("smollm2-135m", layers, max_length=a.max_length)
    res.setup()

    def acts_of(table):
        toks = res.tokens(table)
        per = {la: [None] * len(toks) for la in layers}
        for rows, counts, acts in res.activations(toks):
            for la in layers:
                at = 0
                for i, c in zip(rows, counts):
                    per[la][i] = acts[la][at:at + c].half()
                    at += c
        return per

    train_acts = acts_of(canonical(paths["train"]))
    pool_t, target_t = canonical(paths["pool"]), canonical(paths["target"])
    pool_acts, target_acts = acts_of(pool_t), acts_of(target_t)
    is_rp = [t == "roleplay" for t in pool_t.column("task").to_pylist()]
    t_acts = time.time() - t0
    out = {"config": vars(a), "pool_rows": pool_t.num_rows, "target_rows": target_t.num_rows,
           "activation_seconds": round(t_acts, 1), "layers": {}}
    for la in layers:
        rows = [x for x in train_acts[la] if x is not None]
        held = torch.cat(rows[9::10])
        x = torch.cat([r for j, r in enumerate(rows) if j % 10 != 9])
        t1 = time.time()
        cfg = TrainConfig(layer=la, width=a.width, k=a.k, steps=a.steps, batch_size=a.batch_size)
        sae, _ = train_topk(x, cfg)
        sae.to("cpu")

        def pooled(per):
            vecs = []
            for r in per:
                vecs.append(None if r is None else pool_codes(sae, r.float(), [len(r)])[0][0])
            return vecs

        proto = torch.stack([v for v in pooled(target_acts[la]) if v is not None]).mean(0)
        sims = [None if v is None else jaccard(v, proto) for v in pooled(pool_acts[la])]
        out["layers"][la] = {"fvu_heldout": round(fvu(sae, held), 4),
                             "dead_share": round(float((fire_counts(sae, x) == 0).float().mean()), 4),
                             "train_tokens": len(x), "heldout_tokens": len(held),
                             "sae_target_top20_roleplay_share": round(top_share(sims, is_rp), 4),
                             "train_seconds": round(time.time() - t1, 1)}
        print(la, out["layers"][la], flush=True)
    emb = get_scorer("target_similarity", target=str(paths["target"]))
    sims = emb.score_batch(pool_t.to_batches(max_chunksize=pool_t.num_rows)[0]).column(
        "target_similarity").to_pylist()
    out["target_similarity_top20_roleplay_share"] = round(top_share(sims, is_rp), 4)
    out["roleplay_share_in_pool"] = sum(is_rp) / len(is_rp)
    print(json.dumps(out, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
