"""Sentence-embedding throughput: curate's embedding scorer vs plain
``SentenceTransformer.encode`` (all-MiniLM-L6-v2), on the same real texts, in one run.

Texts: whole SFT rows (prompt + answer) of alpaca_en_demo and GPTeacher role-play.
Two sets, because the two do different work on long texts:
  short  texts that fit one 128-token window: the same work for both
         (curate's vector equals encode's in float32)
  all    every text: encode cuts each at 128 tokens; curate embeds up to 2,048
         tokens of each in 128-token windows (more work, reported as tokens/s)
Modes: encode (float32, batch 64, sorted by length as encode does), curate-fp32 and
curate-bf16 (bf16 autocast: the default on GPUs and on CPUs with native bf16). Each mode
gets a warm-up pass. Prints texts/s, embedded tokens/s and ratios to encode.

    .venv/bin/python bench/embeddings.py --rows 600
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.ingest import ingest
from curate.models import load_sentence_model, pick_device
from curate.text import field_texts
from scorers.embedding import MAX_TOKENS, WINDOW, embed_texts

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests" / "data" / "llamafactory" / "alpaca_en_demo.parquet",
           ROOT / "tests" / "data" / "gpteacher" / "roleplay_rest.parquet"]


def texts(n: int, seed: int) -> list[str]:
    out = []
    for src in SOURCES:
        out += field_texts(pa.concat_tables([t for t, _, _ in ingest(str(src)) if t is not None]), "all")
    random.Random(seed).shuffle(out)
    return out[:n]


def embedded_tokens(content: int, windows: bool) -> int:
    """Tokens the model reads for a text of ``content`` tokens (plus [CLS] and [SEP]):
    cut at one window (encode) or in windows up to MAX_TOKENS (curate)."""
    if not windows:
        return min(content + 2, WINDOW)
    c = min(content, MAX_TOKENS)
    return c + 2 * -(-max(c, 1) // (WINDOW - 2))


def timed(fn, batch: list[str]) -> tuple[float, np.ndarray]:
    fn(batch[:32])  # warm-up
    t = time.perf_counter()
    vecs = fn(batch)
    return time.perf_counter() - t, vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    st = load_sentence_model("minilm")
    st.max_seq_length = WINDOW
    tok = st.tokenizer
    rows = texts(a.rows, a.seed)
    content = [len(ids) for ids in tok(rows, add_special_tokens=False, verbose=False)["input_ids"]]
    short = [i for i, k in enumerate(content) if k + 2 <= WINDOW]
    sets = {"short": short, "all": list(range(len(rows)))}
    modes = {
        "encode": lambda x: st.encode(x, batch_size=64, normalize_embeddings=True, convert_to_numpy=True),
        "curate-fp32": lambda x: embed_texts(st, x, MAX_TOKENS, dtype="float32"),
        "curate-bf16": lambda x: embed_texts(st, x, MAX_TOKENS, dtype="bfloat16"),
    }
    print(f"all-MiniLM-L6-v2 on {pick_device()}; {len(rows)} real texts; "
          f"tokens: median {int(np.median(content))}, max {max(content)}")
    for name, idx in sets.items():
        batch = [rows[i] for i in idx]
        n_tok = {m: sum(embedded_tokens(content[i], m != "encode") for i in idx) for m in modes}
        print(f"\n{name}: {len(batch)} texts")
        base = ref = None
        for m, fn in modes.items():
            sec, vecs = timed(fn, batch)
            rate = len(batch) / sec
            base = base or rate
            if m == "curate-fp32":
                ref = vecs
            cos = "" if ref is None else f"  min cosine to curate-fp32 {float((ref * vecs).sum(1).min()):.5f}"
            print(f"  {m:18s} {sec:6.2f} s  {rate:7.1f} texts/s  {n_tok[m] / sec:9,.0f} tokens/s  "
                  f"{rate / base:5.2f}x encode{cos}")


if __name__ == "__main__":
    main()
