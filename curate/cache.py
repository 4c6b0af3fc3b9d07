"""Score cache keyed by (row id, scorer name, version, config, model fingerprint).

One folder per scorer cache key under ``$CURATE_HOME/scores`` (or the folder
given to the run), holding Parquet parts of ``id`` + score columns. Parts are
written atomically as work progresses, so a killed run keeps what it finished
and a re-run computes only rows it has not seen. Lookups scan the parts with a
semi-join on the wanted ids; the cache is never loaded whole. A scorer's working
columns (large, read only by decisions) are kept out of memory: given a
``spill_dir``, lookups leave them out and they go to files there (``curate.spill``).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.run import write_json, write_table
from curate.scorer import Scorer
from curate.spill import ListSpill


class ScorerCache:
    """Cached scores of one scorer configuration."""

    def __init__(self, root: Path | None, scorer: Scorer, kind: str, flush_rows: int = 4096,
                 flush_seconds: float = 20.0, spill_dir: Path | None = None):
        self.scorer = scorer
        self.dir = root / f"{scorer.name}-{kind}-{scorer.cache_key()}" if root else None
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        schema = {"id": pl.String, **pl.from_arrow(scorer.output_schema(kind).empty_table()).schema}
        # working columns go to files in spill_dir (curate.spill), not to memory
        working = [c for c in scorer.working_columns if c in schema] if spill_dir else []
        self.spills = {c: ListSpill(spill_dir / f"{scorer.name}-{c}.bin") for c in working}
        self.schema = {c: t for c, t in schema.items() if c not in self.spills}
        # parts on disk when the run started; rows computed since are kept in ``fresh``
        self.parts = sorted(self.dir.glob("*.parquet")) if self.dir and self.dir.exists() else []
        self._fresh = [pl.DataFrame(schema=self.schema)]

    @property
    def fresh(self) -> pl.DataFrame:
        """The rows computed by this run so far (joined into one frame once asked for:
        appending to one frame at every flush copied it each time)."""
        if len(self._fresh) > 1:
            self._fresh = [pl.concat(self._fresh, how="vertical_relaxed")]
        return self._fresh[0]

    def lookup(self, ids: pl.Series) -> pl.DataFrame:
        """Cached rows among ``ids`` (id + score columns), one per id."""
        if not self.parts and self.fresh.height == len(ids) and self.fresh["id"].equals(ids):
            return self.fresh  # everything was computed by this run, in this order: no copy
        wanted = pl.DataFrame({"id": ids.cast(pl.String)}).lazy()
        cols = list(self.schema)
        sources = [pl.scan_parquet(p).select(cols) for p in self.parts] + [self.fresh.lazy()]
        return (pl.concat(sources, how="vertical_relaxed").join(wanted, on="id", how="semi")
                .unique(subset="id", keep="first", maintain_order=True).collect())

    def spill_cached(self, ids: pl.Series) -> None:
        """Append the working columns of these cached rows to the spills, part by part."""
        if not self.spills or not len(ids):
            return
        wanted = pl.DataFrame({"id": ids.cast(pl.String)}).lazy()
        for p in self.parts:
            got = (pl.scan_parquet(p).select("id", *self.spills).join(wanted, on="id", how="semi")
                   .collect())
            for c, spill in self.spills.items():
                spill.append(got["id"].to_arrow(), got[c].to_arrow())

    def add(self, scores: pa.Table) -> None:
        """Remember freshly computed scores (``id`` + columns); flushes to disk as it goes."""
        for c, spill in self.spills.items():
            spill.append(scores["id"], scores[c])
        self._pending.append(scores)
        self._pending_rows += scores.num_rows
        if (self._pending_rows >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        self._last_flush = time.monotonic()
        self._fresh.append(pl.from_arrow(table.drop_columns(list(self.spills))))
        if self.dir is None:
            return
        if not (self.dir / "scorer.json").exists():
            write_json({"name": self.scorer.name, "version": self.scorer.version,
                        "config": self.scorer.config(), "model": self.scorer.model_fingerprint()},
                       self.dir / "scorer.json")
        write_table(table, self.dir / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet",
                    "lz4")  # kept across runs


def describe(root: Path) -> list[dict]:
    """What is in a cache folder (for humans)."""
    out = []
    for d in sorted(p for p in root.glob("*") if p.is_dir()):
        spec = json.loads((d / "scorer.json").read_text()) if (d / "scorer.json").exists() else {}
        rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in d.glob("*.parquet"))
        out.append({"folder": d.name, "rows": rows, **spec})
    return out
