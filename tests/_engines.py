"""A second, deliberately different engine for the tests: the plan runner must give
the same run on it as on the local engine, which proves the Engine seam is real."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from curate.engine import LocalEngine, Part, read_part, register_engine
from curate.scorer import Scorer


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
                yield scorer.score_batch(batch).add_column(0, "id", batch.column("id"))

    def read_rows(self, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        for part in reversed(parts):
            yield read_part(part, columns)
