"""Build the data of the README's fine-tuning experiment: task-specific selection
toward GSM8K from a mixed pool of real rows.

    python bench/experiment_gsm8k.py --out /tmp/gsm8k_exp
    curate experiment --pool /tmp/gsm8k_exp/pool --target /tmp/gsm8k_exp/target.parquet \\
        --eval /tmp/gsm8k_exp/eval.parquet --budget 100 --seeds 2 \\
        --strategies random,deita,target_similarity,dsir -o /tmp/gsm8k_exp/EXP

Everything comes from ``../shared/data`` (licences in its README.md):

- pool/ (3,000 rows, one file per source, each in its own layout): 999 LLaMA-Factory
  Alpaca demo rows (general instructions), 600 GPTeacher role-play rows, 500 GPTeacher
  Toolformer rows (tool-use instructions), 300 Glaive function-calling conversations,
  401 AlpacaEval answers of 35 strong and weak models, and 200 GSM8K train rows
  (math word problems: 6.7% of the pool);
- target.parquet: 40 other GSM8K train rows, never in the pool;
- eval.parquet: the first 100 rows of the GSM8K test set (question and reference
  solution), never in the pool.

GSM8K's ``question``/``answer`` columns are renamed to the Alpaca layout's
``instruction``/``output`` (an empty ``input``); nothing else is changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gsm8k(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.col("question").alias("instruction"), pl.lit("").alias("input"),
                        pl.col("answer").alias("output"))


def build(out: Path, data: Path = DATA, seed: int = 0) -> None:
    pool = out / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    take = {
        "alpaca_en_demo.parquet": (data / "llamafactory/alpaca_en_demo.parquet", 999),
        "roleplay.parquet": (data / "gpteacher/roleplay_rest.parquet", 600),
        "toolformer.parquet": (data / "gpteacher/toolformer_dedupe.parquet", 500),
        "glaive_toolcall.parquet": (data / "llamafactory/glaive_toolcall_en_demo.parquet", 300),
        "alpaca_eval_outputs.parquet": (data / "alpaca_eval/model_outputs.parquet", 401),
    }
    for name, (path, n) in take.items():
        frame = pl.read_parquet(path)
        frame.sample(n=min(n, frame.height), seed=seed, shuffle=True).write_parquet(pool / name)
    train = gsm8k(pl.read_parquet(data / "gsm8k/train.parquet"))
    gsm8k_rows = train.sample(fraction=1.0, seed=seed, shuffle=True)
    gsm8k_rows[:200].write_parquet(pool / "gsm8k_train.parquet")
    gsm8k_rows[200:240].write_parquet(out / "target.parquet")
    gsm8k(pl.read_parquet(data / "gsm8k/test.parquet"))[:100].write_parquet(out / "eval.parquet")
    print(f"pool: {sum(pl.read_parquet(p).height for p in pool.glob('*.parquet'))} rows in {pool}; "
          f"target: 40 rows; eval: 100 rows (in {out})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    build(args.out, args.data)
