"""Perplexity throughput: curate's scorer vs a plain transformers loop, in one run.

Modes, all over the same real rows (alpaca_en_demo, mixed lengths), each row
rendered with the chat template and scored on its answer tokens:
  plain       the loop anyone writes first: one sequence per forward pass, full
              logits, log-softmax, sum of the answer tokens' log-probs (fp32)
  padded-8    fixed batches of 8 in input order, padded to the longest (fp32)
  curate-fp32 the perplexity scorer in float32
  curate      the perplexity scorer with its default dtype (bf16 autocast on CPUs with
              native bf16 and on GPUs, else float32)
Prints tokens/s per mode, the ratios to the plain loop, and the peak RSS; on a GPU
also the achieved model FLOP/s against the bf16 peak (--peak-tflops, H100 SXM 989).
Every mode gets a warm-up pass first.

    python bench/perplexity.py --rows 200
"""

from __future__ import annotations

import argparse
import math
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
    """Full-logit forward passes over fixed-size batches in input order (batch 1: the
    plain loop, no mask); returns seconds."""
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
            ids = ids.to(lm.device)
            logits = lm(input_ids=ids, attention_mask=mask.to(lm.device) if batch > 1 else None).logits
            lp = torch.log_softmax(logits.float(), -1)
            for r, s in enumerate(group):
                t = torch.tensor(s.targets, device=lm.device)
                lp[r, t - 1].gather(1, ids[r, t][:, None]).sum().item()
    _sync()
    return time.perf_counter() - start


LAST: dict[str, list] = {}  # the scores of each curate mode, for the agreement line


def ours(scorer, seqs, mode: str = "") -> float:
    start = time.perf_counter()
    LAST[mode] = scorer.logprobs(seqs)
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
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gpu = torch.cuda.is_available()
    budget = args.max_batch_tokens or (65536 if gpu else None)  # None: the CPU default

    def scorer_for(dtype):
        sc = get_scorer("perplexity", model=args.model, dtype=dtype, max_length=args.max_length,
                        max_batch_tokens=budget)
        sc.setup()
        return sc

    fp32 = scorer_for("float32")
    default = scorer_for(args.dtype)
    seqs = [fp32._truncate(fp32.conversation(c)) for c in rows(args.rows, args.seed)]
    seqs = [s for s in seqs if s is not None and s.targets]
    tokens = sum(len(s.ids) for s in seqs)
    lengths = sorted(len(s.ids) for s in seqs)
    print(f"device {fp32._lm.device}, default dtype {default.effective_dtype()}, {len(seqs)} rows, "
          f"{tokens} tokens (length min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}), token budget per pass {budget or 'one sequence (CPU)'}")
    warm = seqs[:4]
    modes = {"plain": lambda s: naive(fp32, s, 1), "padded-8": lambda s: naive(fp32, s, 8),
             "curate-fp32": lambda s: ours(fp32, s, "fp32"),
             "curate": lambda s: ours(default, s, "default")}
    results = {}
    for mode, fn in modes.items():
        fn(warm)
        results[mode] = fn(seqs)
    base = results["plain"]
    print(f"{'mode':<12} {'seconds':>9} {'tokens/s':>10} {'vs plain':>9}")
    for mode, sec in results.items():
        print(f"{mode:<12} {sec:>9.2f} {tokens / sec:>10.0f} {base / sec:>8.2f}x")
    ppl = {m: [math.exp(-a / n) for a, n in LAST[m]] for m in ("fp32", "default")}
    rel = sorted(abs(d / f - 1) for f, d in zip(ppl["fp32"], ppl["default"]))
    print(f"perplexity, default dtype vs float32: median relative difference "
          f"{rel[len(rel) // 2]:.2%}, max {rel[-1]:.2%}")
    import resource

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          "(both scorers' models loaded)")
    if gpu:
        n_params = sum(p.numel() for p in default._lm.parameters())
        flops = 2 * n_params * tokens / results["curate"]
        print(f"achieved model FLOP/s (2 x params x tokens): {flops / 1e12:.1f} TFLOP/s = "
              f"{100 * flops / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:.0f} TFLOP/s bf16 peak")


if __name__ == "__main__":
    main()
