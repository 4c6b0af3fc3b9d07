"""The columnar MinHash path: shingle hashes, one-permutation signatures, verification
counts and the plain-text ingest, each against its plain Python counterpart on real rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DATA
from curate.dedup import shared_shingles
from curate.hashing import hash_text
from curate.ingest import ingest
from curate.text import normalize, normalize_array, shingle_hashes, shingle_sets, shingles
from scorers.minhash import oph_signatures, signatures

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
ZH = DATA / "llamafactory" / "oaast_sft_zh.parquet"
C4 = DATA / "c4_demo" / "c4_demo.parquet"
#: whitespace of every kind, punctuation, quotes and escapes, compatibility forms, empty
#: and null: what the columnar normaliser must treat as ``normalize`` does
ODD = ["", "   ", None, "a", "Hello  World\tfoo\nbar\r\n", "\x1cx\x1fy z\x0b\x0cw",
       "x\u00a0y\u2003z\u3000w\u2028v\u0085u", "ﬁne Ⅳ ① ＡＢＣ", "a b c d e f g",
       'say "hi" \\ back\\slash', "  lead and trail  ", "ÉCOLE Straße ǅ"]


def real_texts() -> list[str]:
    alpaca = pl.read_parquet(ALPACA)
    return (alpaca["output"].to_list()[:300] + alpaca["instruction"].to_list()[:100]
            + pl.read_parquet(ZH)["output"].to_list()[:100]
            + pl.read_parquet(C4)["text"].to_list()[:100])


@pytest.mark.parametrize("kind", ["word", "char"])
def test_shingle_hashes_match_the_python_shingles(kind):
    texts = ODD + real_texts()
    hashes, counts = shingle_hashes(texts, 5, kind, chunk=97)  # several chunks
    assert len(hashes) == counts.sum()
    starts = np.concatenate([[0], np.cumsum(counts)])
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        expected = shingles(text or "", 5, kind)
        mine = hashes[starts[i]:starts[i + 1]].tolist()
        assert len(mine) == len(expected), (i, text)
        for s, h in zip(expected, mine):  # equal shingles, in any text, get equal hashes
            assert seen.setdefault(s, h) == h, (s, i)
    assert len(set(seen.values())) == len(seen)  # and different ones different hashes
    assert len(seen) > (20_000 if kind == "word" else 50_000)


def test_batches_of_blank_texts_normalise_to_empty():
    """A batch (or a chunk of one) whose every text is whitespace or, without
    punctuation, only punctuation: empty texts, no shingles, null exact hashes."""
    from scorers.exact import ExactHash

    assert normalize_array(["   ", " \n\t ", ""]).to_pylist() == ["", "", ""]
    assert normalize_array(["...", "?!"], punctuation=False).to_pylist() == ["", ""]
    hashes, counts = shingle_hashes(real_texts()[:5] + [" \n "], chunk=5)  # last chunk blank
    assert counts.tolist()[-1] == 0 and counts.min() == 0 and len(hashes) == counts.sum() > 0
    batch = pa.record_batch({"text": ["   ", "?!"]})
    assert ExactHash().score(batch)["exact_hash"].to_pylist() == [None, hash_text("?!")]
    assert ExactHash(punctuation=False).score(batch)["exact_hash"].to_pylist() == [None, None]


def test_normalize_array_equals_normalize_on_real_rows():
    texts = ODD + real_texts()
    for punctuation in (True, False):
        got = normalize_array(texts, punctuation=punctuation).to_pylist()
        assert got == [normalize(t or "", punctuation=punctuation) for t in texts]


def test_one_permutation_signatures_estimate_jaccard_like_minhash():
    """On real near-duplicate pairs (an alpaca answer and an edited copy), the share of
    equal bins estimates the exact Jaccard without bias and with MinHash's spread."""
    rng = np.random.default_rng(0)
    base = pl.read_parquet(ALPACA)["output"].to_list()
    base = [t for t in base if len(t.split()) >= 60][:150]
    edited = []
    for t in base:  # drop a share of the words: Jaccard spread over 0.3..0.95
        words = t.split()
        keep = rng.random(len(words)) > rng.uniform(0.01, 0.12)
        edited.append(" ".join(w for w, k in zip(words, keep) if k))
    texts = base + edited
    hashes, counts = shingle_hashes(texts)
    oph = oph_signatures(hashes, counts, 128, 1)
    classic = signatures([shingles(t) for t in texts], 128, 1)
    n = len(base)
    exact = np.array([len(set(shingles(a)) & set(shingles(b))) / len(set(shingles(a)) | set(shingles(b)))
                      for a, b in zip(base, edited)])
    err_oph = (oph[:n] == oph[n:]).mean(axis=1) - exact
    err_classic = (classic[:n] == classic[n:]).mean(axis=1) - exact
    assert exact.min() < 0.5 and exact.max() > 0.9
    assert abs(err_oph.mean()) < 0.01 and abs(err_classic.mean()) < 0.01
    assert err_oph.std() < 1.3 * err_classic.std()
    # a text with one shingle fills every bin with it; identical texts are identical
    one = oph_signatures(*shingle_hashes(["two words", "two words", "other words"]), 128, 1)
    assert (one[0] == one[0][0]).all() and (one[0] == one[1]).all() and not (one[0] == one[2]).any()


def test_verification_counts_equal_python_sets():
    texts = real_texts()
    rng = np.random.default_rng(1)
    a = rng.integers(0, len(texts), 400)
    b = (a + rng.integers(1, 30, 400)) % len(texts)
    edges = np.unique(np.sort(np.column_stack([a, b]), axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    texts[int(edges[0, 1])] = texts[int(edges[0, 0])]  # one pair of equal texts
    nodes = np.unique(edges)
    values, sizes = shingle_sets(*shingle_hashes([texts[i] for i in nodes]))
    assert sizes.tolist() == [len(set(shingles(texts[i]))) for i in nodes.tolist()]
    assert all((np.diff(v.astype(np.int64)) > 0).all() for v in np.split(values, np.cumsum(sizes)[:-1]))
    inter, union = shared_shingles(edges, nodes, values, sizes)
    sets = {i: set(shingles(texts[i])) for i in nodes.tolist()}
    assert inter.tolist() == [len(sets[x] & sets[y]) for x, y in edges.tolist()]
    assert union.tolist() == [len(sets[x] | sets[y]) for x, y in edges.tolist()]
    assert inter[0] == union[0] > 0


def _ingested(path, **kw):
    parts, rejected = [], []
    for table, bad, stats in ingest(path, kind="text", **kw):
        parts += [table] if table is not None else []
        rejected += bad
    return parts, rejected, stats.__dict__


def test_plain_text_ingest_equals_the_row_by_row_path(tmp_path):
    """The columnar ingest of clean plain-text chunks gives the row path's tables and
    ids (a column mapping onto itself forces the row path); chunks with a bad row go
    the row path and lose nothing."""
    texts = pl.read_parquet(C4)["text"].to_list()
    clean = texts + ODD[4:] + [texts[0], texts[0]]  # repeats get distinct ids
    pq.write_table(pa.table({"text": clean, "n": list(range(len(clean)))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ODD + texts[:5]}), tmp_path / "b.parquet")  # blank, null
    fast = _ingested(tmp_path, chunk_rows=50)
    slow = _ingested(tmp_path, chunk_rows=50, columns={"text": "text"})
    assert len(fast[0]) == len(slow[0]) > 2
    for x, y in zip(fast[0], slow[0]):
        assert x.equals(y)
    assert fast[1] == slow[1] and len(fast[1]) == 3  # "", "   " and None
    assert fast[2] == slow[2]
    ids = pa.chunked_array([t["id"].combine_chunks() for t in fast[0]])
    assert len(ids) == len(pa.compute.unique(ids)) == len(clean) + len(ODD) + 5 - 3


def test_a_text_that_spells_a_repeat_id_gets_its_own_id(tmp_path):
    """The id of a repeated row is not the id of a row whose text is the string the
    repeat's id is made from."""
    from curate.hashing import hash_int

    text = pl.read_parquet(C4)["text"][0]
    rows = [text, text, f"{hash_int(text):016x}#1"]
    pq.write_table(pa.table({"text": rows}), tmp_path / "a.parquet")
    for columns in (None, {"text": "text"}):  # the columnar path and the row path
        parts, _, _ = _ingested(tmp_path, columns=columns)
        ids = pa.concat_arrays([t["id"].combine_chunks() for t in parts])
        assert len(ids) == len(pa.compute.unique(ids)) == 3
