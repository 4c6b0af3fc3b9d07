"""Working columns on disk: MinHash shingle sets written once, read back by row."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import DATA
from curate import connect, read
from curate.spill import ListSpill, Lists
from curate.text import shingle_hashes, shingle_sets

C4 = DATA / "c4_demo" / "c4_demo.parquet"


def _sets(texts: list[str]) -> pa.Array:
    values, sizes = shingle_sets(*shingle_hashes(texts))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def test_spilled_lists_read_back_equal_in_any_order(tmp_path):
    texts = pl.read_parquet(C4)["text"].to_list()[:300] + [""]  # a text with no shingles
    ids = pa.array([f"r{i}" for i in range(len(texts))])
    sets = _sets(texts)
    spill = ListSpill(tmp_path / "sets.bin")
    spill.append(ids.slice(0, 120), sets.slice(0, 120))  # two batches, as scores arrive
    spill.append(ids.slice(120), sets.slice(120))
    want = sets.to_pylist()
    same = spill.lists(pl.Series(ids))  # the frame's order
    rows = np.array([5, 0, 299, 300, 17])
    values, sizes = same.take(rows)
    assert sizes.tolist() == [len(want[i]) for i in rows] and sizes[3] == 0
    assert values.tolist() == [v for i in rows for v in want[i]]
    # another order, an id never spilled (empty), and the lists held in memory agree
    order = pl.Series([f"r{i}" for i in (299, 3, 1)] + ["unknown"])
    other = spill.lists(order)
    values, sizes = other.take(np.arange(4))
    assert sizes.tolist() == [len(want[299]), len(want[3]), len(want[1]), 0]
    assert values.tolist() == want[299] + want[3] + want[1]
    mem = Lists.from_arrow(sets)
    assert [a.tolist() for a in mem.take(rows)] == [a.tolist() for a in same.take(rows)]
    assert (tmp_path / "sets.bin").stat().st_size == 4 * sum(len(s) for s in want)


def test_a_rerun_from_the_cache_decides_the_same(tmp_path):
    """The sets of cached rows are spilled from the cache: the rerun computes nothing
    and drops the same rows for the same reasons; the run's scores leave them out."""
    src = tmp_path / "in"
    src.mkdir()
    real = pl.read_parquet(C4).head(200)
    edited = real.head(40).with_columns(pl.col("text").str.replace_all(r"\bthe\b", "a"))
    pl.concat([real, edited]).write_parquet(src / "docs.parquet")
    runs = [read(src, kind="text").dedup("minhash", threshold=0.7)
            .write(tmp_path / f"r{i}", cache_dir=tmp_path / "cache", quiet=True) for i in (1, 2)]
    first, second = (r.manifest()["scorers"]["minhash"] for r in runs)
    assert first["computed"] == 240 and second["from_cache"] == 240 and second["computed"] == 0
    q = "select id, reason, detail, representative from rejected order by id"
    a, b = (connect(r.path).sql(q).fetchall() for r in runs)
    assert a == b and len(a) >= 10  # 17 edited copies are at Jaccard >= 0.7 to their original
    assert all(d.startswith("jaccard ") for _, _, d, _ in a)
    assert "minhash_set" in pq.read_schema(next((tmp_path / "cache").rglob("*.parquet"))).names
    for r in runs:
        assert "minhash_set" not in pq.read_schema(next((r.path / "scores").glob("*.parquet"))).names


def test_partly_cached_rows_decide_as_an_uncached_run(tmp_path):
    """Rows from the cache and rows computed now reach the decision in another order
    than the frame's: their sets are matched by id."""
    real = pl.read_parquet(C4).head(200)
    edited = real.head(40).with_columns(pl.col("text").str.replace_all(r"\bthe\b", "a"))
    small, full = tmp_path / "small", tmp_path / "full"
    small.mkdir(), full.mkdir()
    edited.write_parquet(small / "docs.parquet")  # cached first: the edited copies only
    pl.concat([real, edited]).write_parquet(full / "docs.parquet")
    read(small, kind="text").dedup("minhash", threshold=0.7).write(
        tmp_path / "warm", cache_dir=tmp_path / "cache", quiet=True)
    runs = [read(full, kind="text").dedup("minhash", threshold=0.7).write(
        tmp_path / name, cache_dir=cache, quiet=True)
        for name, cache in (("mixed", tmp_path / "cache"), ("cold", False))]
    info = runs[0].manifest()["scorers"]["minhash"]
    assert info["from_cache"] == 40 and info["computed"] == 200
    q = "select id, reason, detail, representative from rejected order by id"
    a, b = (connect(r.path).sql(q).fetchall() for r in runs)
    assert a == b and len(a) >= 10
