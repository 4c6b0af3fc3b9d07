"""A second, deliberately different engine for the tests: the plan runner must give
the same run on it as on the local engine, which proves the Engine seam is real."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl
import pyarrow as pa

from conftest import DATA
from curate.engine import LocalEngine, Part, read_part, register_engine, score_rows
from curate.run import open_run
from curate.scorer import Resources, Scorer, register
from curate.text import field_texts


@register_engine
class ReverseEngine(LocalEngine):
    """Small ingest parts, scored last part first with one whole part per batch, and
    rows read back last part first; never forks."""

    name = "reverse"

    def __init__(self, **options):
        super().__init__(**{**options, "chunk_rows": 64})

    def map_batches(self, scorer: Scorer, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        scorer.setup()
        self.info[scorer.name] = {"workers": 1, "setup": scorer.describe()}
        for part in reversed(parts):
            table = read_part(part, columns).combine_chunks()
            for batch in table.to_batches():  # one chunk: the whole part
                yield score_rows(scorer, batch)

    def read_rows(self, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        for part in reversed(parts):
            yield read_part(part, columns)


def _tables(path) -> dict[str, pl.DataFrame]:
    run = open_run(path)
    return {name: pl.from_arrow(run.table(name)).sort("id") for name in ("selected", "rejected", "scores")}


NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def _same_text(x: str | None, y: str | None) -> None:
    if x is None or y is None:
        assert x == y
        return
    assert NUMBER.split(x) == NUMBER.split(y), (x, y)
    assert all(abs(float(u) - float(v)) < 1e-5 for u, v in zip(NUMBER.findall(x), NUMBER.findall(y))), (x, y)


def same_run(a, b) -> None:
    """Runs ``a`` (local engine) and ``b`` (another engine) agree: selected ids, rejected
    records, scores (floats within 1e-5), counts and stage sizes."""
    ta, tb = _tables(a), _tables(b)
    assert ta["selected"]["id"].to_list() == tb["selected"]["id"].to_list()
    ra, rb = ta["rejected"], tb["rejected"]
    assert ra.drop("detail").equals(rb.drop("detail"))
    for x, y in zip(ra["detail"].to_list(), rb["detail"].to_list()):
        _same_text(x, y)  # details quote scores: equal up to float noise of batching
    sa, sb = ta["scores"], tb["scores"]
    assert sa.columns == sb.columns and sa["id"].equals(sb["id"])
    for col in sa.columns:
        if sa[col].dtype.is_float():
            assert ((sa[col] - sb[col]).abs() < 1e-5).all(), col
        elif sa[col].dtype == pl.List(pl.Float32):
            diff = (sa[col].explode() - sb[col].explode()).abs().max()
            assert diff is None or diff < 1e-5, col
        else:
            assert sa[col].equals(sb[col]), col
    ma, mb = open_run(a).manifest(), open_run(b).manifest()
    assert ma["engine"] == "local" and mb["engine"] != "local"
    assert ma["counts"] == mb["counts"]
    assert [s["out"] for s in ma["stages"]] == [s["out"] for s in mb["stages"]]


def dependent_files(src: Path) -> None:
    """Write input files whose ingest depends on the files before them: rows repeated
    from an earlier file, a column whose type changes, a line that does not parse."""
    rows = pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet")
    (src / "b").mkdir(parents=True)
    rows[:120].with_columns(rating=pl.int_range(120)).write_parquet(src / "a.parquet")
    rows[100:220].write_ndjson(src / "b" / "c.jsonl")  # 20 rows repeat a.parquet's
    rows[220:260].with_columns(rating=pl.lit("good")).write_ndjson(src / "d.jsonl")
    with open(src / "d.jsonl", "a") as f:
        f.write('{"instruction": "cut off\n')  # a line that does not parse


def same_parts(a: Path, b: Path) -> list[pl.DataFrame]:
    """Runs ``a`` and ``b`` have the same data parts (names and rows); returns b's."""
    names = [sorted(p.name for p in (r / "data").glob("*.parquet")) for r in (a, b)]
    assert names[0] == names[1]
    data = []
    for name in names[1]:
        x, y = (pl.read_parquet(r / "data" / name) for r in (a, b))
        assert x.equals(y), name
        data.append(y)
    return data


@register
@dataclass
class Faulty(Scorer):
    """A test scorer: the length of each row's text. It raises ValueError on rows whose
    text contains ``needle``, and while the file ``die_marker`` does not exist the first
    batch it sees creates the file and kills its own process (a worker dying
    mid-batch)."""

    name: ClassVar[str] = "test_faulty"
    columns: ClassVar[dict[str, pa.DataType]] = {"faulty_chars": pa.int64()}
    resources: ClassVar[Resources] = Resources(cpus=1)

    needle: str = ""
    die_marker: str = ""

    def score(self, batch: pa.RecordBatch) -> dict[str, list]:
        if self.die_marker and not os.path.exists(self.die_marker):
            open(self.die_marker, "w").close()
            os._exit(1)
        texts = field_texts(batch, "all")
        for t in texts:
            if self.needle and self.needle in t:
                raise ValueError(f"cannot score a row with {self.needle!r}")
        return {"faulty_chars": [len(t) for t in texts]}
