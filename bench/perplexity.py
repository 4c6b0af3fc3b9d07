"""Perplexity throughput: curate's scorer vs two naive baselines, in one run.

Modes, all over the same real rows (alpaca_en_demo, mixed lengths), each row
rendered with the chat template and scored on its answer tokens:
  one-row   one sequence per forward pass, full logits (plain transformers)
  padded-8  fixed batches of 8 in input order, padded to the longest, full logits
  curate    the perplexity scorer: sorted by length, token-budget batches,
            LM head only where a loss is needed
Prints tokens/s per mode and the ratios; on a GPU also the achieved model
FLOP/s as a fraction of the bf16 peak (--peak-tflops, default H100 SXM 989).

    python bench/perplexity.py --rows 200
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from curate.scorer import get_scorer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "llamafactory" / "alpaca_en_demo.parquet"


def rows(n: int, seed: int) -> list[list[dict]]:
    table = pq.read_table(DATA).to_pylist()
    random.Random(seed).shuffle(table)
    return [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in table[:n]]


def naive(scorer, seqs, batch: int) -> float:
    """Full-logit forward passes over fixed-size batches in input order; returns seconds."""
    lm, pad = scorer._lm, scorer._tok.pad_token_id or 0
    start = time.perf_counter()
    for i in range(0, len(seqs), batch):
        group = seqs[i:i + batch]
        width = max(len(s.ids) for s in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(group):
            ids[r, :len(s.ids)] = torch.tensor(s.ids)
            mask[r, :len(s.ids)] = 1
        with torch.inference_mode():
            logits = lm(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
            lp = torch.log_softmax(logits.float(), -1)
            for r, s in enumerate(group):
                t = torch.tensor(s.targets, device=lm.device)
                lp[r, t - 1].gather(1, ids[r, t].to(lm.device)[:, None]).sum().item()
    _sync()
    return time.perf_counter() - start


def ours(scorer, seqs) -> float:
    start = time.perf_counter()
    scorer.logprobs(seqs)
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 CPU, bf16 GPU)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--skip-one-row", action="store_true", help="skip the slowest baseline")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gpu = torch.cuda.is_available()
    budget = args.max_batch_tokens or (65536 if gpu else 4096)
    scorer = get_scorer("perplexity", model=args.model, dtype=args.dtype,
                        max_length=args.max_length, max_batch_tokens=budget)
    scorer.setup()
    seqs = [scorer._truncate(scorer.conversation(c)) for c in rows(args.rows, args.seed)]
    seqs = [s for s in seqs if s is not None and s.targets]
    tokens = sum(len(s.ids) for s in seqs)
    lengths = sorted(len(s.ids) for s in seqs)
    print(f"device {scorer._lm.device}, dtype {scorer.effective_dtype()}, {len(seqs)} rows, "
          f"{tokens} tokens (length min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}), token budget {budget}")
    ours(scorer, seqs[:4])  # warm-up
    results = {}
    if not args.skip_one_row:
        results["one-row"] = naive(scorer, seqs, 1)
    results["padded-8"] = naive(scorer, seqs, 8)
    results["curate"] = ours(scorer, seqs)
    base = results["curate"]
    n_params = sum(p.numel() for p in scorer._lm.parameters())
    print(f"{'mode':<10} {'seconds':>9} {'tokens/s':>10} {'curate is':>10}")
    for mode, sec in results.items():
        print(f"{mode:<10} {sec:>9.2f} {tokens / sec:>10.0f} {sec / base:>9.2f}x")
    if gpu:
        flops = 2 * n_params * tokens / base
        print(f"achieved model FLOP/s (2 x params x tokens): {flops / 1e12:.1f} TFLOP/s = "
              f"{100 * flops / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:.0f} TFLOP/s bf16 peak")


if __name__ == "__main__":
    main()
