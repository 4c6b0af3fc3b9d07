"""Find input files and read them as bounded chunks of raw rows.

Parquet, JSON (an array of objects), JSONL and CSV. Every chunk is at most
``chunk_rows`` rows, so memory stays bounded whatever the input size (a JSON
array file is the one format that must be parsed whole).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xxhash

from curate.errors import InputError

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "json", ".csv": "csv"}


@dataclass
class Chunk:
    """Up to ``chunk_rows`` consecutive rows of one file; ``start`` is the first row number."""

    file: Path
    start: int
    rows: list[dict]
    arrow: pa.Table | None = None  # the same rows as Arrow, when the format has a schema


def is_run_dir(folder: Path) -> bool:
    """Whether ``folder`` is a curate run directory (its manifest.json has a run key)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "run_key" in data


def list_files(path: str | Path) -> list[Path]:
    """The readable data files at ``path`` (a file or a directory, searched recursively).

    Hidden files and folders (``.name``, ``_name``) are skipped, and so are curate
    run directories inside ``path``: a run written into its own input folder must
    not become part of the next run's input.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input path {p} does not exist; check the spelling or pass another --input")
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise InputError(f"{p}: unknown file type {p.suffix!r}; "
                             f"use one of {', '.join(sorted(SUFFIXES))}")
        return [p]
    if is_run_dir(p):
        raise InputError(f"input {p} is a curate run directory, not a dataset; "
                         f"read {p / 'selected'} to use its selected rows")
    runs: dict[Path, bool] = {}

    def in_run(f: Path) -> bool:
        for parent in f.relative_to(p).parents:
            if parent == Path("."):
                continue
            folder = p / parent
            if folder not in runs:
                runs[folder] = is_run_dir(folder)
            if runs[folder]:
                return True
        return False

    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                   and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
                   and not in_run(f))
    if not files:
        raise InputError(f"input directory {p} is empty: no {', '.join(sorted(SUFFIXES))} files in it")
    return files


def fingerprint(files: list[Path], root: Path) -> str:
    """Content hash of the input files (names relative to ``root`` and bytes)."""
    h = xxhash.xxh3_64()
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
        except OSError as err:
            raise InputError(f"{f}: cannot read the file ({err.strerror or err})") from err
    return h.hexdigest()


def existing_path(path: str | Path, what: str) -> str:
    """``path`` resolved, or a CurateError naming ``what`` when it does not exist."""
    resolved = Path(path).resolve()
    if not resolved.exists():
        raise InputError(f"{what} {resolved} does not exist")
    return str(resolved)


def path_fingerprint(path: str | Path) -> str:
    """Content hash of the data files at ``path`` (a file or a folder)."""
    return fingerprint(list_files(path), Path(path))


def read_chunks(file: Path, chunk_rows: int = 10_000) -> Iterator[Chunk]:
    """Yield the rows of one file in chunks; a file that cannot be read raises InputError."""
    fmt = SUFFIXES[file.suffix.lower()]
    reader = {"parquet": _parquet, "jsonl": _jsonl, "json": _json, "csv": _csv}[fmt]
    try:
        yield from reader(file, chunk_rows)
    except InputError:
        raise
    except OSError as err:  # missing, unreadable, a folder, a broken link ...
        raise InputError(f"{file}: cannot read the file ({err.strerror or err})") from err


def _parquet(file: Path, chunk_rows: int) -> Iterator[Chunk]:
    start = 0
    try:
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=chunk_rows):
            table = pa.Table.from_batches([batch])
            yield Chunk(file, start, table.to_pylist(), table)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{file}: not a readable Parquet file ({err}); "
                         "remove it from the input or re-export it") from err


def _jsonl(file: Path, chunk_rows: int) -> Iterator[Chunk]:
    rows: list[dict] = []
    start = 0
    # utf-8-sig: a byte-order mark (common in files saved on Windows) is not data
    with open(file, encoding="utf-8-sig", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{file} line {lineno}: not valid JSON ({err.msg} at column "
                                     f"{err.colno}); fix or delete that line") from err
                if not isinstance(row, dict):
                    raise InputError(f"{file} line {lineno}: expected a JSON object per line, "
                                     f"got {type(row).__name__}")
                rows.append(row)
                if len(rows) == chunk_rows:
                    yield Chunk(file, start, rows)
                    start += len(rows)
                    rows = []
        except UnicodeDecodeError as err:
            raise InputError(f"{file}: not UTF-8 text ({err}); re-encode it as UTF-8") from err
    if rows:
        yield Chunk(file, start, rows)


def _json(file: Path, chunk_rows: int) -> Iterator[Chunk]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{file}: not UTF-8 text ({err}); re-encode it as UTF-8") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # A .json file may hold JSON lines: then its first line is a whole object,
        # and the JSONL reader names the bad line.
        first = text.lstrip().split("\n", 1)[0]
        try:
            lines = isinstance(json.loads(first), dict)
        except json.JSONDecodeError:
            lines = False
        if lines:
            yield from _jsonl(file, chunk_rows)
            return
        raise InputError(f"{file}: not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno}); expected an array of objects or one object per line"
                         ) from err
    del text
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(f"{file}: expected a JSON array of row objects, "
                             f"got an object with keys {sorted(data)[:5]}")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(f"{file}: expected a JSON array of row objects, got {type(data).__name__}")
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise InputError(f"{file}: item {i} of the array is a {type(r).__name__}, "
                             "expected an object (one row)")
    for start in range(0, len(data), chunk_rows):
        yield Chunk(file, start, data[start:start + chunk_rows])


def _csv(file: Path, chunk_rows: int) -> Iterator[Chunk]:
    # Every column is read as text: type inference would turn an answer column of
    # numbers ("3", "0.5") into ints and floats (bad rows), and it looks only at the
    # first block, so a later block with text in that column would fail to parse.
    # Values may span lines (quoted newlines are everywhere in LLM data).
    read_opts = pacsv.ReadOptions(block_size=1 << 22)
    parse_opts = pacsv.ParseOptions(newlines_in_values=True)
    start = 0
    try:
        with pacsv.open_csv(file, read_options=read_opts, parse_options=parse_opts) as head:
            names = head.schema.names
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"{file}: the CSV header repeats column name(s) {dup}")
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                       strings_can_be_null=False)
        reader = pacsv.open_csv(file, read_options=read_opts, parse_options=parse_opts,
                                convert_options=convert)
        pending: list[pa.RecordBatch] = []
        n = 0
        for batch in reader:
            pending.append(batch)
            n += batch.num_rows
            while n >= chunk_rows:
                table = pa.Table.from_batches(pending)
                head_t, rest = table.slice(0, chunk_rows), table.slice(chunk_rows)
                yield Chunk(file, start, head_t.to_pylist(), head_t)
                start += chunk_rows
                pending, n = rest.to_batches(), rest.num_rows
        if n:
            table = pa.Table.from_batches(pending)
            yield Chunk(file, start, table.to_pylist(), table)
    except pa.ArrowException as err:
        raise InputError(f"{file}: not a readable CSV file ({err})") from err
