"""Large working columns kept on disk during a run: one list of numbers per row.

A scorer's ``working_columns`` (MinHash shingle sets: about 600 bytes a row, as much
as the text) are read only by a decision step, a few rows at a time. Holding them in
the run's frame would make memory grow with the corpus, so the runner appends them
to a flat file as scores arrive (``ListSpill``) and keeps only where each row's list
starts and how long it is. A decision reads the rows it needs (``Lists.take``)
through a memory map that is closed again after each read, so the pages it touched
do not stay in the process's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa


@dataclass
class Lists:
    """One list per row: row i is ``values[start[i]:start[i] + sizes[i]]``, where
    ``values`` is an array in memory or a flat file of ``dtype`` on disk."""

    start: np.ndarray
    sizes: np.ndarray
    values: np.ndarray | Path
    dtype: np.dtype = np.dtype(np.uint32)

    @classmethod
    def from_arrow(cls, arr: pa.Array | pa.ChunkedArray) -> Lists:
        """The lists of a list array in memory (a null list is empty)."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
        offsets = arr.offsets.to_numpy().astype(np.int64)
        sizes = np.diff(offsets)
        sizes[~np.asarray(arr.is_valid(), dtype=bool)] = 0
        values = arr.values.to_numpy(zero_copy_only=False)
        return cls(offsets[:-1], sizes, values, values.dtype)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values of these rows, one after the other; their sizes)."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes[rows]
        total = int(sizes.sum())
        at = np.repeat(self.start[rows] - (np.cumsum(sizes) - sizes), sizes)
        at += np.arange(total, dtype=np.int64)
        if isinstance(self.values, np.ndarray):
            return self.values[at], sizes
        if total == 0:
            return np.zeros(0, dtype=self.dtype), sizes
        source = np.memmap(self.values, dtype=self.dtype, mode="r")
        try:
            return np.asarray(source[at]), sizes
        finally:
            source._mmap.close()  # unmap now: the touched pages leave this process


class ListSpill:
    """Appends list columns of scored batches to a flat file (see the module docstring)."""

    def __init__(self, path: Path, dtype: np.dtype | type = np.uint32):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.dtype = path, np.dtype(dtype)
        self._file = open(path, "wb")
        self._written = 0
        self._ids: list[pa.Array] = []
        self._sizes: list[np.ndarray] = []

    def append(self, ids: pa.Array | pa.ChunkedArray, lists: pa.Array | pa.ChunkedArray) -> None:
        """Write the lists of these rows."""
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type)
        if len(lists) == 0:
            return
        got = Lists.from_arrow(lists)
        if got.start[0] + got.sizes.sum() == got.start[-1] + got.sizes[-1]:  # one run of values
            values = got.values[got.start[0]:got.start[0] + got.sizes.sum()]
        else:  # null lists that still span values
            values = got.take(np.arange(len(got.sizes)))[0]
        values = values.astype(self.dtype, copy=False)
        self._file.write(values.tobytes())
        self._written += len(values)
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self._ids.append(ids.cast(pa.large_string()))
        self._sizes.append(got.sizes)

    def lists(self, ids: pl.Series) -> Lists:
        """The lists of these rows, in this order (a row never appended: empty)."""
        self._file.flush()
        sizes = np.concatenate([np.zeros(0, np.int64), *self._sizes])
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        have = pl.Series("id", pa.chunked_array(self._ids, pa.large_string()) if self._ids else [],
                         dtype=pl.String)
        if have.equals(ids.cast(pl.String)):  # appended in the frame's order: no join
            return Lists(start, sizes, self.path, self.dtype)
        at = (pl.DataFrame({"id": ids.cast(pl.String)})
              .join(pl.DataFrame({"id": have, "start": start, "size": sizes})
                    .unique("id", keep="first", maintain_order=True),
                    on="id", how="left", maintain_order="left"))
        return Lists(at["start"].fill_null(0).to_numpy().astype(np.int64),
                     at["size"].fill_null(0).to_numpy().astype(np.int64), self.path, self.dtype)

    def close(self) -> None:
        self._file.close()
