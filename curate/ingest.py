"""Ingest: raw files -> canonical Parquet parts with stable ids, bad rows set aside.

Each input chunk becomes one part ``data/part-NNNNN.parquet`` holding ``id``, the
canonical columns, ``source`` (file), ``source_row``, ``prompt_id`` (hash of
the prompt turns, shared by rows that answer the same prompt), and every original
column unchanged (renamed ``raw_<name>`` where a canonical column has that name and
different values; a column equal to its canonical twin, such as a boolean ``label``,
is not stored twice). Nothing of a row is dropped.

The layout (adapter) is decided per file from the columns of its first chunk; a row
that does not fit it, or cannot be trained on (null or empty messages, empty
responses, unknown roles), or does not parse at all (a bad JSONL line, a ragged CSV
row, bytes that are not UTF-8) goes to the rejected list with a reason and the file
and line it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curate import adapters as ad
from curate.errors import InputError
from curate.hashing import hash_int, hash_ints, hash_text, hex_digests
from curate.readers import Chunk, read_chunks, scan
from curate.schema import CANONICAL, KINDS, message_text, prompt_messages

RESERVED = {"id", "source", "source_row", "prompt_id"}
REPEAT_SEED = 1  # xxh3 seed of repeated rows' ids (contents are hashed with seed 0)
LABEL_COLUMNS = ("label", "kto_tag")  # KTO-style desirable/undesirable flags


@dataclass
class IngestStats:
    files: list[str] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)  # file -> adapter
    rows_read: int = 0
    rows_ok: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    kind: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why not read)
    labeled_rows: int = 0  # sft rows with a KTO label (true or false)

    def add(self, other: IngestStats) -> None:
        """Count ``other``'s rows (of files ingested apart) into these stats."""
        self.adapters.update(other.adapters)
        self.rows_read += other.rows_read
        self.rows_ok += other.rows_ok
        self.labeled_rows += other.labeled_rows
        for reason, k in other.bad_reasons.items():
            self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + k


def row_id(h: int, n: int) -> str:
    """The id of occurrence ``n`` (from 0) of a row whose content hashes to ``h``: the
    hash itself, or for a repeat the hash with the occurrence number mixed in, hashed
    with another seed (a text row whose text is that string gets another id)."""
    if n == 0:
        return f"{h:016x}"
    return xxhash.xxh3_64_hexdigest(f"{h:016x}#{n}".encode(), seed=REPEAT_SEED)


class RowIds:
    """Stable content ids: xxh3-64 of the canonical row (of a text row: of its text);
    a repeat of an earlier row gets its occurrence number mixed in (``row_id``), so ids
    stay unique. With ``log`` a list, the hash of every id handed out is appended to it."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.log: list[int] | None = None

    def __call__(self, content: str) -> str:
        h = hash_int(content)
        n = self.seen.get(h, 0)
        self.seen[h] = n + 1
        if self.log is not None:
            self.log.append(h)
        return row_id(h, n)

    def many(self, hashes: np.ndarray) -> pa.Array:
        """The ids of rows whose contents hash to ``hashes`` (``hash_int`` of each), in order."""
        keys = hashes.tolist()
        if self.log is not None:
            self.log.extend(keys)
        fresh = dict.fromkeys(keys, 1)
        if len(fresh) == len(keys) and self.seen.keys().isdisjoint(fresh):  # no repeat
            self.seen.update(fresh)
            return hex_digests(hashes)
        out = []
        for h in keys:
            n = self.seen.get(h, 0)
            self.seen[h] = n + 1
            out.append(row_id(h, n))
        return pa.array(out, pa.string())


def _compact(value: Any) -> Any:
    """``value`` without null fields (so adding optional fields keeps old ids)."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _canonical_json(values: Any) -> str:
    return json.dumps(_compact(values), ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=str)


def _prompt_id(kind: str, row: dict[str, Any]) -> str | None:
    if kind == "text":
        return None
    prompt = row["prompt"] if kind == "preference" else prompt_messages(row["messages"])
    return hash_text(_canonical_json(prompt))


def _as_text(row: dict[str, Any]) -> dict[str, Any]:
    msgs = row.get("messages") or (row.get("prompt", []) + row.get("chosen", []))
    return {"text": "\n\n".join(message_text(m) for m in msgs)}


def _label(raw: dict[str, Any]) -> bool | None:
    """A KTO-style label (``label`` or ``kto_tag``: true/false, or that text), else None."""
    for name in LABEL_COLUMNS:
        value = raw.get(name)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    return None


def _tools(raw: dict[str, Any]) -> str | None:
    """The tool schemas a row declares, as JSON text (text is kept as given)."""
    value = raw.get("tools")
    if value is None or isinstance(value, str):
        return value or None
    return json.dumps(value, ensure_ascii=False, default=str)


def _mapper(columns: dict[str, str] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The row as adapters see it under a column mapping (target name -> input column)."""
    if not columns:
        return lambda row: row
    sources = set(columns.values())

    def mapped(row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k not in sources}
        out.update({target: row.get(source) for target, source in columns.items()})
        return out
    return mapped


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


def _originals(chunk: Chunk, keep: list[int], kind: str, canonical: dict[str, pa.Array]
               ) -> pa.Table:
    """The input columns of the kept rows, every one of them. A column whose name is
    reserved, or taken by a canonical column with other values, is renamed ``raw_<name>``;
    one equal to its canonical twin is not stored twice."""
    if chunk.arrow is not None:
        table = (chunk.arrow if len(keep) == chunk.arrow.num_rows  # every row (keep ascends)
                 else chunk.arrow.take(pa.array(keep, pa.int64())))
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
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if name in canonical and _same(col, canonical[name]):
            continue
        new = f"raw_{name}" if name in canonical or name in RESERVED else name
        out[new] = col.cast(pa.string()) if pa.types.is_null(col.type) else col
    return pa.table(out) if out else pa.table({}, schema=pa.schema([]))


def _same(original: pa.ChunkedArray, canonical: pa.Array) -> bool:
    """Whether each holds exactly the other (both ways: a cast may drop or add fields)."""
    orig = original.combine_chunks()
    if orig.type == canonical.type:
        return orig.equals(canonical)
    try:
        return (orig.cast(canonical.type).equals(canonical)
                and canonical.cast(orig.type).equals(orig))
    except (pa.ArrowException, NotImplementedError):
        return False


#: What Python's ``str.isspace`` is true of, as a regex class (Arrow's RE2).
_BLANK = (r"^[\t\n\x0b\x0c\r\x1c-\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
          r"\x{202f}\x{205f}\x{3000}]*$")


def _plain_text(chunk: Chunk, chosen: ad.Adapter | None, state: IngestState, ids: RowIds,
                rel: str) -> pa.Table | None:
    """The part of a chunk of plain text rows (adapter ``text``, a string column
    ``text``, no row null, blank or unparsed) built column by column: the same table,
    ids and all as the row-by-row path, at a fraction of its cost. None when the
    chunk is not such a chunk (the row-by-row path then takes it)."""
    table = chunk.arrow
    if (table is None or chunk.errors or chosen is None or chosen.name != "text"
            or state.kind not in (None, "text") or "text" not in table.column_names):
        return None
    col = table.column("text")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    if col.null_count or pc.any(pc.match_substring_regex(col, _BLANK)).as_py():
        return None
    col = col.cast(pa.string()).combine_chunks()
    n = len(col)
    cols = {"id": ids.many(hash_ints(col)), "text": col,
            "source": pa.array([rel] * n, pa.string()),
            "source_row": pa.array(range(chunk.start, chunk.start + n), pa.int64()),
            "prompt_id": pa.nulls(n, pa.string())}
    originals = _stable_types(_originals(chunk, list(range(n)), "text", {"text": col}), state.types)
    for name in originals.column_names:
        cols[name] = originals.column(name)
    return pa.table(cols)


@dataclass
class IngestState:
    """What ingesting a file takes from the files before it, in input order: the
    dataset's kind (from the first file), the row ids handed out (a repeat of an
    earlier row gets a different id) and each original column's type."""

    kind: str | None = None
    ids: RowIds = field(default_factory=RowIds)
    bad_ids: RowIds = field(default_factory=RowIds)
    types: dict[str, pa.DataType] = field(default_factory=dict)

    def clash(self, later: IngestState) -> bool:
        """Whether ``later`` (a file ingested on its own) could come out otherwise after
        the files of ``self`` in more than its repeated rows' ids (``occurrences``): its
        kind, a column type or a bad row's id."""
        return ((later.kind is not None and self.kind not in (None, later.kind))
                or not self.bad_ids.seen.keys().isdisjoint(later.bad_ids.seen)
                or any(self.types.get(k, t) != t for k, t in later.types.items()))

    def absorb(self, later: IngestState) -> None:
        """Become the state after ``later``'s file, ingested after the files of ``self``
        (row ids aside: see ``occurrences``)."""
        self.kind = self.kind or later.kind
        self.types = {**later.types, **self.types}
        mine, theirs = self.bad_ids, later.bad_ids
        before = {h: mine.seen[h] for h in theirs.seen if h in mine.seen}
        mine.seen.update(theirs.seen)
        for h, n in before.items():
            mine.seen[h] += n


def seen_ids(hashes: list[np.ndarray]) -> RowIds:
    """The row ids handed out to rows with these content hashes (occurrence counts)."""
    ids = RowIds()
    if hashes:
        keys, counts = np.unique(np.concatenate(hashes), return_counts=True)
        ids.seen = dict(zip(keys.tolist(), counts.tolist()))
    return ids


def occurrences(files: list[np.ndarray]) -> list[np.ndarray]:
    """For the content hashes of each file's rows, in input order: each row's occurrence
    number in all the files (from 0: its id is ``row_id(hash, number)``), and how many
    of those occurrences are in earlier files (0: the id it got in its file alone)."""
    sizes = [len(h) for h in files]
    hashes = np.concatenate(files) if files else np.zeros(0, np.uint64)
    file = np.repeat(np.arange(len(files)), sizes)
    order = np.argsort(hashes, kind="stable")  # equal contents together, in input order
    h, f = hashes[order], file[order]
    pos = np.arange(len(h))
    group = np.ones(len(h), dtype=bool)  # first of its content
    group[1:] = h[1:] != h[:-1]
    run = group.copy()  # first of its content in its file
    run[1:] |= f[1:] != f[:-1]
    first = np.maximum.accumulate(np.where(group, pos, 0))
    number, earlier = np.empty(len(h), np.int64), np.empty(len(h), np.int64)
    number[order] = pos - first
    earlier[order] = np.maximum.accumulate(np.where(run, pos, 0)) - first
    cuts = np.cumsum(sizes)[:-1]
    return list(zip(np.split(number, cuts), np.split(earlier, cuts)))


def renumber(table: pa.Table, hashes: np.ndarray, rows: np.ndarray, numbers: np.ndarray
             ) -> pa.Table:
    """``table`` (a data part whose rows' content hashes are ``hashes``) with the ids of
    ``rows`` those of occurrence ``numbers`` of their contents."""
    if not len(rows):
        return table
    new = [row_id(h, n) for h, n in zip(hashes[rows].tolist(), numbers.tolist())]
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    ids = pc.replace_with_mask(table["id"].combine_chunks(), pa.array(mask), pa.array(new, pa.string()))
    return table.set_column(table.schema.get_field_index("id"), "id", ids)


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


def ingest(path: str | Path, *, kind: str | None = None, adapter: str | None = None,
           columns: dict[str, str] | None = None, chunk_rows: int = 10_000,
           on_rows: Callable[[int], None] | None = None
           ) -> Iterator[tuple[pa.Table | None, list[dict], IngestStats]]:
    """Yield (canonical part table or None, rejected records, running stats) per chunk.

    ``columns`` maps the names adapters know (prompt, response, instruction, output,
    messages, text, label, ...) to the input's own column names.
    Raises InputError for problems with whole files: missing path, unreadable
    file, unknown layout, a file whose rows are all bad, mixed kinds.
    """
    check_kind(kind)
    root = Path(path)
    found = scan(root)
    stats = IngestStats(files=[str(f) for f in found.files], kind=kind, skipped=found.skipped)
    state = IngestState(kind=kind)
    for file in found.files:
        yield from ingest_file(root, file, state, stats, kind=kind, adapter=adapter,
                               columns=columns, chunk_rows=chunk_rows, on_rows=on_rows)
    if stats.rows_read == 0:
        raise InputError(f"{path}: the input has no rows")
    stats.kind = state.kind


def ingest_file(root: Path, file: Path, state: IngestState, stats: IngestStats, *,
                kind: str | None = None, adapter: str | None = None,
                columns: dict[str, str] | None = None, chunk_rows: int = 10_000,
                on_rows: Callable[[int], None] | None = None
                ) -> Iterator[tuple[pa.Table | None, list[dict], IngestStats]]:
    """``ingest`` for one ``file`` of the input at ``root``, after the files that gave
    ``state`` (updated in place, as ``stats`` is)."""
    forced = ad.get_adapter(adapter) if adapter else None
    ids, bad_ids, seen_types = state.ids, state.bad_ids, state.types
    view = _mapper(columns)
    rel = str(file.relative_to(root)) if file != root else file.name
    file_ok = file_rows = 0
    first_reason = None
    chosen: ad.Adapter | None = forced
    for chunk in read_chunks(file, chunk_rows):
        if not chunk.num_rows and not chunk.errors:
            continue
        if columns and chunk.num_rows and file_rows == 0:
            names = set().union(*(r.keys() for r in chunk.rows))  # the row path needs them
            missing = sorted(src for src in columns.values() if src not in names)
            if missing:
                raise InputError(f"{file}: no column(s) {missing} to map; its columns are "
                                 f"{sorted(names)}")
        if chosen is None and chunk.num_rows:
            chosen = ad.detect([view(r) for r in chunk.head(1000)], str(file), kind=kind)
        table = None if columns else _plain_text(chunk, chosen, state, ids, rel)
        if table is not None:  # every row a non-blank string of a plain text column
            stats.adapters[rel] = chosen.name
            state.kind = stats.kind = state.kind or "text"
            file_rows += table.num_rows
            file_ok += table.num_rows
            stats.rows_read += table.num_rows
            stats.rows_ok += table.num_rows
            if on_rows:
                on_rows(table.num_rows)
            yield table, [], stats
            continue
        raws = [view(r) for r in chunk.rows]
        canon, keep, rejected = [], [], []

        def reject(reason: str, detail: str, content: Any) -> None:
            nonlocal first_reason
            first_reason = first_reason or reason
            stats.bad_reasons[reason] = stats.bad_reasons.get(reason, 0) + 1
            rid = bad_ids(_canonical_json({"bad": content}))
            rejected.append({"id": f"bad-{rid}", "stage": "ingest", "reason": reason,
                             "detail": detail})

        for where, message in chunk.errors:
            reject("row does not parse", f"{rel} {where}: {message}", [rel, where])
        if chosen is not None and raws:
            stats.adapters[rel] = chosen.name
            names = set().union(*(r.keys() for r in raws))
            row_kind = chosen.kind_for(names)
            if state.kind is None:
                state.kind = stats.kind = row_kind
            out_kind = state.kind
            if row_kind != out_kind and out_kind != "text":
                raise InputError(f"{file}: layout {chosen.name!r} gives {row_kind} rows but "
                                 f"the dataset is {out_kind}; put different kinds in "
                                 "different inputs")
            for i, raw in enumerate(raws):
                try:
                    chosen.check(raw)
                    row = chosen.convert(raw)
                    if out_kind == "text" and row_kind != "text":
                        row = _as_text(row)
                    ad.validate(out_kind, row)
                except (ad.BadRow, StopIteration, TypeError, AttributeError, KeyError) as err:
                    reason = (str(err) if isinstance(err, ad.BadRow)
                              else f"malformed row ({type(err).__name__}: {err})")
                    reject(reason, f"{rel} row {chunk.start + i}", chunk.rows[i])
                    continue
                if out_kind != "text":
                    row["tools"] = _tools(raw)
                if out_kind == "sft":
                    row["label"] = _label(raw)
                    stats.labeled_rows += row["label"] is not None
                row["id"] = ids(row["text"] if out_kind == "text" else _canonical_json(row))
                canon.append(row)
                keep.append(i)
        n = chunk.num_rows + len(chunk.errors)
        file_rows += n
        file_ok += len(keep)
        stats.rows_read += n
        stats.rows_ok += len(keep)
        table = None
        if keep:
            assert state.kind is not None
            canonical = {name: pa.array([r[name] for r in canon], typ)
                         for name, typ in CANONICAL[state.kind].items()}
            cols = {"id": pa.array([r["id"] for r in canon], pa.string()), **canonical}
            cols["source"] = pa.array([rel] * len(keep), pa.string())
            cols["source_row"] = pa.array([chunk.start + i for i in keep], pa.int64())
            cols["prompt_id"] = pa.array([_prompt_id(state.kind, r) for r in canon],
                                         pa.string())
            originals = _stable_types(_originals(chunk, keep, state.kind, canonical),
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
