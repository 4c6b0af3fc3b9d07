"""Ingest: raw files -> canonical Parquet parts with stable ids, bad rows set aside.

Each input chunk becomes one part ``data/part-NNNNN.parquet`` holding ``id``, the
canonical columns, ``source`` (file), ``source_row``, ``prompt_id`` (hash of
the prompt turns, shared by rows that answer the same prompt), and the original
columns (renamed ``raw_<name>`` where a name is taken by a canonical column).
Rows that cannot be trained on (null or empty messages, empty responses,
non-string content, unknown roles) go to the rejected list with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate import adapters as ad
from curate.errors import InputError
from curate.hashing import hash_int, hash_text
from curate.readers import Chunk, list_files, read_chunks
from curate.schema import CANONICAL, KINDS, prompt_messages

RESERVED = {"id", "source", "source_row", "prompt_id"}


@dataclass
class IngestStats:
    files: list[str] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)  # file -> adapter
    rows_read: int = 0
    rows_ok: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    kind: str | None = None


class RowIds:
    """Stable content ids: xxh3-64 of the canonical row; a repeat of an earlier
    row gets its occurrence number mixed in, so ids stay unique."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def __call__(self, content: str) -> str:
        h = hash_int(content)
        n = self._seen.get(h, 0)
        self._seen[h] = n + 1
        return f"{h:016x}" if n == 0 else hash_text(f"{content}#{n}")


def _canonical_json(values: dict[str, Any]) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=str)


def _prompt_id(kind: str, row: dict[str, Any]) -> str | None:
    if kind == "text":
        return None
    prompt = row["prompt"] if kind == "preference" else prompt_messages(row["messages"])
    return hash_text(_canonical_json(prompt))


def _as_text(row: dict[str, Any]) -> dict[str, Any]:
    msgs = row.get("messages") or (row.get("prompt", []) + row.get("chosen", []))
    return {"text": "\n\n".join(m["content"] for m in msgs)}


def _stable_types(table: pa.Table, seen: dict[str, pa.DataType]) -> pa.Table:
    """Give each original column the type it had in the first chunk, so all parts
    share one schema; a column that cannot take that type is kept as JSON text."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        want = seen.setdefault(name, col.type)
        if col.type != want:
            try:
                col = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                col = pa.array([None if v is None else v if isinstance(v, str)
                                else json.dumps(v, ensure_ascii=False, default=str)
                                for v in col.to_pylist()], pa.string())
        cols[name] = col
    return pa.table(cols) if cols else table


def _originals(chunk: Chunk, keep: list[int], consumes: tuple[str, ...], kind: str) -> pa.Table:
    if chunk.arrow is not None:
        table = chunk.arrow.take(pa.array(keep, pa.int64()))
    else:
        rows = [chunk.rows[i] for i in keep]
        names = list(dict.fromkeys(k for r in rows for k in r))
        cols = {}
        for name in names:
            values = [r.get(name) for r in rows]
            try:
                cols[name] = pa.array(values)
            except (pa.ArrowException, OverflowError):  # mixed types: keep as JSON text
                cols[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False)
                                       for v in values], pa.string())
        table = pa.table(cols) if cols else pa.table({"_": pa.nulls(len(rows))}).drop(["_"])
    taken = set(CANONICAL[kind]) | RESERVED
    out = {}
    for name in table.column_names:
        if name in consumes:
            continue
        new = f"raw_{name}" if name in taken else name
        col = table.column(name)
        out[new] = col.cast(pa.string()) if pa.types.is_null(col.type) else col
    return pa.table(out) if out else pa.table({}, schema=pa.schema([]))


def ingest(path: str | Path, *, kind: str | None = None, adapter: str | None = None,
           chunk_rows: int = 10_000, on_rows: Callable[[int], None] | None = None
           ) -> Iterator[tuple[pa.Table | None, list[dict], IngestStats]]:
    """Yield (canonical part table or None, rejected records, running stats) per chunk.

    Raises InputError for problems with whole files: missing path, unreadable
    file, unknown layout, a file whose rows are all bad, mixed kinds.
    """
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    root = Path(path)
    files = list_files(root)
    forced = ad.get_adapter(adapter) if adapter else None
    stats = IngestStats(files=[str(f) for f in files], kind=kind)
    ids, bad_ids = RowIds(), RowIds()
    seen_types: dict[str, pa.DataType] = {}
    dataset_kind: str | None = kind
    for file in files:
        rel = str(file.relative_to(root)) if file != root else file.name
        file_ok = file_rows = 0
        first_reason = None
        chosen: ad.Adapter | None = forced
        for chunk in read_chunks(file, chunk_rows):
            if not chunk.rows:
                continue
            if chosen is None:
                chosen = ad.detect(set(chunk.rows[0]), chunk.rows[0], str(file))
            stats.adapters[rel] = chosen.name
            columns = set(chunk.rows[0]) if chunk.arrow is None else set(chunk.arrow.column_names)
            row_kind = chosen.kind_for(columns)
            if dataset_kind is None:
                dataset_kind = stats.kind = row_kind
            out_kind = dataset_kind
            if row_kind != out_kind and not (out_kind == "text"):
                raise InputError(f"{file}: layout {chosen.name!r} gives {row_kind} rows but the "
                                 f"dataset is {out_kind}; put different kinds in different inputs")
            canon, keep, rejected = [], [], []
            for i, raw in enumerate(chunk.rows):
                try:
                    row = chosen.convert(raw)
                    if out_kind == "text" and row_kind != "text":
                        row = _as_text(row)
                    ad.validate(out_kind, row)
                except (ad.BadRow, StopIteration, TypeError, AttributeError, KeyError) as err:
                    reason = str(err) if isinstance(err, ad.BadRow) else f"malformed row ({type(err).__name__}: {err})"
                    first_reason = first_reason or reason
                    stats.bad_reasons[reason] = stats.bad_reasons.get(reason, 0) + 1
                    rid = bad_ids(_canonical_json({"bad": raw}))
                    rejected.append({"id": f"bad-{rid}", "stage": "ingest", "reason": reason,
                                     "detail": f"{rel} row {chunk.start + i}"})
                    continue
                row["id"] = ids(_canonical_json(row))
                canon.append(row)
                keep.append(i)
            n = len(chunk.rows)
            file_rows += n
            file_ok += len(keep)
            stats.rows_read += n
            stats.rows_ok += len(keep)
            table = None
            if keep:
                cols = {"id": pa.array([r["id"] for r in canon], pa.string())}
                for name, typ in CANONICAL[out_kind].items():
                    cols[name] = pa.array([r[name] for r in canon], typ)
                cols["source"] = pa.array([rel] * len(keep), pa.string())
                cols["source_row"] = pa.array([chunk.start + i for i in keep], pa.int64())
                cols["prompt_id"] = pa.array([_prompt_id(out_kind, r) for r in canon], pa.string())
                originals = _stable_types(_originals(chunk, keep, chosen.consumes, out_kind),
                                          seen_types)
                for name in originals.column_names:
                    cols[name] = originals.column(name)
                table = pa.table(cols)
            if on_rows:
                on_rows(n)
            yield table, rejected, stats
        if file_rows and not file_ok:
            raise InputError(f"{file}: all {file_rows} rows are bad (first: {first_reason}); "
                             "check that the file has the layout you expect")
    if stats.rows_read == 0:
        raise InputError(f"{path}: the input has no rows")
    stats.kind = dataset_kind

