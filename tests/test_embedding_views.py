"""Embeddings see whole texts, and each scorer embeds the text it compares.

all-MiniLM-L6-v2 reads 128 tokens at a time. The embedding scorers split a text's
tokens (up to ``max_tokens``) into 128-token windows and mean-pool the windows, so
two texts that share their opening but differ later are not the same vector. Real
rows throughout: hh-rlhf transcripts that branch from the same conversation
(tests/data/hh_rlhf) and long Alpaca answers (sample_data/sft).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DATA, SAMPLE_SFT
from curate import read
from curate.ingest import ingest
from curate.schema import MESSAGES, full_texts, rejected_texts, response_texts
from scorers.embedding import MAX_TOKENS, Embedding
from scorers.similarity import PairSimilarity, Relevance

HH = DATA / "hh_rlhf" / "harmless_base_test.parquet"
WINDOW_TEXT = 126  # tokens of text in one 128-token window ([CLS] and [SEP] take two)


@pytest.fixture(scope="module")
def emb() -> Embedding:
    e = Embedding()
    e.setup()
    return e


@pytest.fixture(scope="module")
def hh() -> pa.Table:
    return pa.concat_tables([t for t, _, _ in ingest(str(HH)) if t is not None])


def ntokens(e: Embedding, texts: list[str]) -> list[list[int]]:
    return e._st.tokenizer(texts, add_special_tokens=False)["input_ids"]


def first_window_only(e: Embedding, texts: list[str]) -> np.ndarray:
    """What the scorers did before: the first 128 tokens of each text."""
    return e._st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def norm(s: str) -> str:
    return " ".join(s.split())


def test_branching_hh_conversations_are_not_one_vector(emb, hh):
    """The row embedding (prompt + chosen answer; what deita and semantic dedup
    compare): hh rows whose texts share their first 126 tokens but differ after got
    cosine 1.000 from the first window alone; whole, they are clearly apart."""
    texts = full_texts(hh)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(ntokens(emb, texts)):
        if len(ids) > WINDOW_TEXT:
            groups.setdefault(tuple(ids[:WINDOW_TEXT]), []).append(i)
    pairs = [(g[0], j) for g in groups.values() for j in g[1:] if norm(texts[g[0]]) != norm(texts[j])]
    assert len(pairs) == 3  # rows 50/605, 109/188, 245/613 of the file's 812 transcripts
    idx = sorted({i for p in pairs for i in p})
    sub = [texts[i] for i in idx]
    pos = {i: k for k, i in enumerate(idx)}
    old, new = first_window_only(emb, sub), emb.embed(sub)
    for a, b in pairs:
        assert old[pos[a]] @ old[pos[b]] > 0.9999  # the failure this fixes
        assert new[pos[a]] @ new[pos[b]] < 0.99, (a, b)


def test_hh_pair_cosine_compares_answers_not_the_shared_prompt(emb, hh):
    """pair_cosine compares the chosen answer with the rejected answer, not prompt +
    answer: hh pairs whose answers differ are never cosine 1.000 (checked on the 6
    pairs whose two answers both pass one window, and on the 6 longest prompts), while
    prompt + answer, first window only, makes the long-prompt pairs identical."""
    chosen, rejected = response_texts(hh), rejected_texts(hh)
    nc, nr = ntokens(emb, chosen), ntokens(emb, rejected)
    both_long = [i for i in range(hh.num_rows) if min(len(nc[i]), len(nr[i])) > WINDOW_TEXT]
    assert len(both_long) == 6
    plen = [sum(len(m["content"]) for m in p) for p in hh["prompt"].to_pylist()]
    long_prompt = sorted(range(hh.num_rows), key=lambda i: -plen[i])[:6]
    rows = both_long + long_prompt
    sub = hh.take(pa.array(rows))
    ps = PairSimilarity()
    ps._st = emb._st
    out = ps.score(sub.to_batches(max_chunksize=1 << 20)[0])
    cos = np.array(out["pair_cosine"])
    assert all(norm(chosen[i]) != norm(rejected[i]) for i in rows) and not any(out["pair_identical"])
    assert cos.max() < 0.95, cos

    def transcript(k: int, side: str) -> str:
        return "\n".join(m["content"] for m in sub["prompt"][k].as_py() + sub[side][k].as_py())

    k_long = range(len(both_long), len(rows))
    old = first_window_only(emb, [transcript(k, s) for k in k_long for s in ("chosen", "rejected")])
    assert ((old[0::2] * old[1::2]).sum(axis=1) > 0.9999).all()  # what prompt + answer did


def long_answers(emb: Embedding) -> tuple[list[str], list[str], list[int]]:
    t = pq.read_table(SAMPLE_SFT / "alpaca_en_demo.parquet")
    outs = t.column("output").to_pylist()
    prompts = [f"{i}\n{x}".strip() for i, x in zip(t.column("instruction").to_pylist(),
                                                    t.column("input").to_pylist())]
    n = [len(x) for x in ntokens(emb, outs)]
    order = sorted(range(len(outs)), key=lambda i: -n[i])
    return [outs[i] for i in order], [prompts[i] for i in order], [n[i] for i in order]


def spliced(emb: Embedding, a: str, b: str, keep: int = 200) -> str:
    """``a``'s first ``keep`` tokens followed by the last two thirds of ``b``."""
    tok = emb._st.tokenizer
    cut_a = tok(a, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][keep][0]
    off_b = tok(b, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return a[:cut_a] + b[off_b[len(off_b) // 3][0]:]


def test_shared_opening_different_tail_is_clearly_below_one(emb):
    """A long real answer against its own first 200 tokens followed by another real
    answer's tail: the first window alone says 1.000, the whole texts do not; and as a
    preference pair (chosen = the answer, rejected = the splice) pair_cosine sees it."""
    outs, prompts, n = long_answers(emb)
    a, b = outs[0], outs[1]
    assert n[0] > 500 and n[1] > 500
    mixed = spliced(emb, a, b)
    old = first_window_only(emb, [a, mixed])
    new = emb.embed([a, mixed])
    assert old[0] @ old[1] > 0.9999
    assert new[0] @ new[1] < 0.8

    pair = pa.table({"id": ["x"], "prompt": pa.array([[{"role": "user", "content": prompts[0]}]], MESSAGES),
                     "chosen": pa.array([[{"role": "assistant", "content": a}]], MESSAGES),
                     "rejected": pa.array([[{"role": "assistant", "content": mixed}]], MESSAGES)})
    ps = PairSimilarity()
    ps._st = emb._st
    out = ps.score(pair.to_batches()[0])
    assert out["pair_cosine"][0] < 0.8 and out["pair_identical"] == [False]


def test_one_window_texts_are_embedded_as_sentence_transformers_does(emb):
    """Windowing changes nothing for a text that fits one window (in float32, as
    ``encode`` runs)."""
    outs, _, n = long_answers(emb)
    short = [o for o, k in zip(outs, n) if k <= WINDOW_TEXT][:20] + [""]
    assert len(short) == 21
    fp32 = Embedding(dtype="float32")
    fp32._st = emb._st
    diff = np.abs(fp32.embed(short) - first_window_only(emb, short)).max()
    assert diff < 1e-5


def test_bf16_embeddings_agree_with_float32(emb):
    """bf16 autocast (the default on GPUs, an option on CPUs) against float32 on real
    answers, long ones in several windows: cosine >= 0.999 each, and the same nearest
    neighbours; the dtype is part of the cache key."""
    outs, _, _ = long_answers(emb)
    e32, e16 = Embedding(dtype="float32"), Embedding(dtype="bfloat16")
    e32._st = e16._st = emb._st
    a, b = e32.embed(outs), e16.embed(outs)
    assert len(outs) >= 40 and (a * b).sum(1).min() >= 0.999
    assert ((a @ a.T).argsort(1)[:, -2] == (b @ b.T).argsort(1)[:, -2]).mean() >= 0.95
    assert e32.cache_key() != e16.cache_key()


def test_a_vector_does_not_depend_on_its_batch_mates(emb, monkeypatch):
    """On a CPU only windows of one length share a pass, so a text's vector is the same
    bit for bit whichever texts are embedded with it, in the default dtype (bf16 on a
    CPU with native bf16), with one lane or with one per core."""
    import curate.lanes

    outs, _, _ = long_answers(emb)
    texts = outs[:12] + ["What is the capital of France?", ""]
    together = emb.embed(texts)
    for i in (0, 5, 12, 13):
        assert np.array_equal(emb.embed([texts[i]])[0], together[i])
    assert np.array_equal(emb.embed(texts[::-1])[::-1], together)
    monkeypatch.setattr(curate.lanes, "cpu_lanes", lambda threads: (1, threads))
    assert np.array_equal(emb.embed(texts), together)


def test_max_tokens_caps_what_is_embedded(emb):
    """Past ``max_tokens`` nothing counts: with max_tokens=200 the answer and the
    splice that keeps its first 200 tokens are one vector; the default sees the
    difference."""
    outs, _, _ = long_answers(emb)
    a, mixed = outs[0], spliced(emb, outs[0], outs[1])
    capped = Embedding(max_tokens=200)
    capped._st = emb._st
    v = capped.embed([a, mixed])
    assert v[0] @ v[1] > 0.9999
    assert MAX_TOKENS == 2048 and Embedding().max_tokens == MAX_TOKENS
    with pytest.raises(Exception, match="max_tokens"):
        Embedding(max_tokens=0)


def test_relevance_reads_the_whole_prompt(emb):
    """A long prompt whose question comes after the first window: relevance of the
    answer is higher with the whole prompt than with its first window."""
    outs, prompts, n = long_answers(emb)
    # real: the longest answer's own prompt, preceded by 300 tokens of another answer
    filler = outs[2]
    tok = emb._st.tokenizer
    cut = tok(filler, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][300][0]
    prompt = "Context:\n" + filler[:cut] + "\n\nQuestion: " + prompts[0]
    row = pa.table({"id": ["x"], "messages": pa.array([[{"role": "user", "content": prompt},
                                                        {"role": "assistant", "content": outs[0]}]],
                                                      MESSAGES)})
    rel = Relevance()
    rel._st = emb._st
    whole = rel.score(row.to_batches()[0])["relevance"][0]
    old = first_window_only(emb, [prompt, outs[0]])
    assert whole > float(old[0] @ old[1]) + 0.05


def test_limit_is_in_the_manifest_and_the_cache_key(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pq.read_table(SAMPLE_SFT / "alpaca_en_demo.parquet").slice(0, 12), src)
    run = (read(src).score("embedding", fields="prompt").score("relevance")
           .write(tmp_path / "r", cache_dir=False, quiet=True))
    m = json.loads((run.path / "manifest.json").read_text())
    for name in ("embedding", "relevance"):
        setup = m["scorers"][name]["setup"]
        assert setup["max_tokens"] == 2048 and setup["window_tokens"] == 128, setup
    assert Embedding(max_tokens=512).cache_key() != Embedding().cache_key()
    assert Relevance(max_tokens=512).cache_key() != Relevance().cache_key()
    assert Embedding().config()["max_tokens"] == 2048
