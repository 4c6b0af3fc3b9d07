"""Find input files and read them as bounded chunks of raw rows.

Parquet, JSON (an array of objects), JSONL and CSV; JSON, JSONL and CSV may be
compressed (``.gz``, ``.zst``, ``.bz2``). Every chunk is at most ``chunk_rows``
rows, so memory stays bounded whatever the input size (a JSON array file is the
one format that must be parsed whole). A line or record that does not parse (bad
JSON, a ragged CSV row, bytes that are not UTF-8) is reported in the chunk's
``errors`` and the file reads on; a file that cannot be read at all is an InputError.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xxhash

from curate.errors import InputError

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "json", ".csv": "csv"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}


def file_format(file: Path) -> tuple[str, str | None] | None:
    """(format, compression) of a data file by its name, or None when curate cannot read it."""
    suffixes = [x.lower() for x in file.suffixes[-2:]]
    if suffixes and suffixes[-1] in SUFFIXES:
        return SUFFIXES[suffixes[-1]], None
    if len(suffixes) == 2 and suffixes[1] in COMPRESSIONS and SUFFIXES.get(suffixes[0]) not in (
            None, "parquet"):
        return SUFFIXES[suffixes[0]], COMPRESSIONS[suffixes[1]]
    return None


def _why_skipped(file: Path) -> str:
    suffixes = "".join(file.suffixes[-2:]).lower()
    if file.suffix.lower() in COMPRESSIONS:
        return f"compressed {suffixes!r} files are read only for JSON, JSONL and CSV"
    return f"unknown file type {suffixes or file.name!r}"


KNOWN = ", ".join(sorted(SUFFIXES)) + " (JSON, JSONL and CSV also as .gz, .zst, .bz2)"


@dataclass
class Chunk:
    """Up to ``chunk_rows`` consecutive rows of one file; ``start`` is the first row number.
    ``errors`` lists what did not parse, as (where, parser message)."""

    file: Path
    start: int
    parsed: list[dict] | None  # the rows as dicts (None: made from ``arrow`` when asked)
    arrow: pa.Table | None = None  # the same rows as Arrow, when the format has a schema
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        """The rows as dicts (from Arrow on first use: columnar paths never pay for it)."""
        if self.parsed is None:
            self.parsed = self.arrow.to_pylist() if self.arrow is not None else []
        return self.parsed

    @property
    def num_rows(self) -> int:
        return self.arrow.num_rows if self.parsed is None and self.arrow is not None else len(self.rows)

    def head(self, n: int) -> list[dict]:
        """The first ``n`` rows as dicts."""
        if self.parsed is None and self.arrow is not None:
            return self.arrow.slice(0, n).to_pylist()
        return self.rows[:n]


@dataclass
class InputFiles:
    """The data files found at a path, and the files beside them that were skipped (and why)."""

    files: list[Path]
    skipped: list[tuple[str, str]]


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
    """The readable data files at ``path`` (see ``scan``)."""
    return scan(path).files


def scan(path: str | Path) -> InputFiles:
    """The readable data files at ``path`` (a file or a directory, searched recursively),
    and the other files there that curate skips, with the reason.

    Hidden files and folders (``.name``, ``_name``) are skipped silently, and so are
    curate run directories inside ``path``: a run written into its own input folder
    must not become part of the next run's input.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input path {p} does not exist; check the spelling or pass another --input")
    if p.is_file():
        if file_format(p) is None:
            raise InputError(f"{p}: {_why_skipped(p)}; use one of {KNOWN}")
        return InputFiles([p], [])
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

    candidates = sorted(f for f in p.rglob("*") if f.is_file()
                        and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
                        and not in_run(f))
    files = [f for f in candidates if file_format(f) is not None]
    skipped = [(str(f.relative_to(p)), _why_skipped(f)) for f in candidates
               if file_format(f) is None]
    if not files:
        found = f"; skipped: {', '.join(f for f, _ in skipped[:5])}" if skipped else ""
        raise InputError(f"input directory {p} has no data files ({KNOWN}){found}")
    return InputFiles(files, skipped)


def fingerprint(files: list[Path], root: Path) -> str:
    """Content hash of the input files (names relative to ``root`` and bytes)."""
    h = xxhash.xxh3_64()
    buffer = bytearray(1 << 22)  # one buffer for every block: no fresh pages per read
    view = memoryview(buffer)
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
        try:
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(buffer):
                    h.update(view[:n])
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


class _Raw(io.RawIOBase):
    """A pyarrow input stream as a Python binary file (for line iteration)."""

    def __init__(self, stream: pa.NativeFile):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _open(file: Path, compression: str | None) -> io.BufferedReader:
    return io.BufferedReader(_Raw(pa.input_stream(str(file), compression=compression)), 1 << 20)


def read_chunks(file: Path, chunk_rows: int = 10_000) -> Iterator[Chunk]:
    """Yield the rows of one file in chunks; a file that cannot be read raises InputError."""
    fmt, compression = file_format(file) or (None, None)
    if fmt is None:
        raise InputError(f"{file}: {_why_skipped(file)}; use one of {KNOWN}")
    reader = {"parquet": _parquet, "jsonl": _jsonl, "json": _json, "csv": _csv}[fmt]
    try:
        yield from reader(file, chunk_rows, compression)
    except InputError:
        raise
    except (OSError, EOFError, pa.ArrowException) as err:  # missing, unreadable, bad archive ...
        raise InputError(f"{file}: cannot read the file ({getattr(err, 'strerror', None) or err})"
                         ) from err


def _parquet(file: Path, chunk_rows: int, compression: str | None) -> Iterator[Chunk]:
    start = 0
    try:
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=chunk_rows):
            table = pa.Table.from_batches([batch])
            yield Chunk(file, start, None, table)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{file}: not a readable Parquet file ({err}); "
                         "remove it from the input or re-export it") from err


def _parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """(row, None) or (None, why the line is not a row)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 ({err.reason} at byte {err.start})"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object per line, got {type(row).__name__}"
    return row, None


def _jsonl(file: Path, chunk_rows: int, compression: str | None) -> Iterator[Chunk]:
    rows: list[dict] = []
    errors: list[tuple[str, str]] = []
    start = 0
    with _open(file, compression) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark is not data
                raw = raw[3:]
            if not raw.strip():
                continue
            row, why = _parse_line(raw)
            if row is None:
                errors.append((f"line {lineno}", why or ""))
            else:
                rows.append(row)
            if len(rows) + len(errors) >= chunk_rows:
                yield Chunk(file, start, rows, errors=errors)
                start += len(rows)
                rows, errors = [], []
    if rows or errors:
        yield Chunk(file, start, rows, errors=errors)


def _json(file: Path, chunk_rows: int, compression: str | None) -> Iterator[Chunk]:
    with _open(file, compression) as fh:
        data_bytes = fh.read()
    try:
        text = data_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    try:
        if text is None:
            raise ValueError("not UTF-8")
        data = json.loads(text)
    except ValueError as err:
        # A .json file may hold JSON lines: then its first line is a whole object,
        # and the JSONL reader names the bad lines.
        first = data_bytes.lstrip().split(b"\n", 1)[0]
        if _parse_line(first.lstrip(b"\xef\xbb\xbf"))[0] is not None:
            yield from _jsonl(file, chunk_rows, compression)
            return
        if text is None:
            raise InputError(f"{file}: not UTF-8 text; re-encode it as UTF-8 (a JSON array "
                             "is read whole, so one bad byte stops the file)") from err
        assert isinstance(err, json.JSONDecodeError)
        raise InputError(f"{file}: not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno}); expected an array of objects or one object per line"
                         ) from err
    del text, data_bytes
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(f"{file}: expected a JSON array of row objects, "
                             f"got an object with keys {sorted(data)[:5]}")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(f"{file}: expected a JSON array of row objects, got {type(data).__name__}")
    for start in range(0, len(data), chunk_rows):
        part = data[start:start + chunk_rows]
        rows = [r for r in part if isinstance(r, dict)]
        errors = [(f"item {start + i}", f"expected an object (one row), got {type(r).__name__}")
                  for i, r in enumerate(part) if not isinstance(r, dict)]
        yield Chunk(file, start, rows, errors=errors)


def _csv(file: Path, chunk_rows: int, compression: str | None) -> Iterator[Chunk]:
    # Every column is read as text: type inference would turn an answer column of
    # numbers ("3", "0.5") into ints and floats (bad rows), and it looks only at the
    # first block, so a later block with text in that column would fail to parse.
    # Values may span lines (quoted newlines are everywhere in LLM data). Columns are
    # read as bytes and decoded here, so one value that is not UTF-8 rejects its row,
    # not the file; a row with the wrong number of fields is rejected by the parser.
    ragged: list[tuple[str, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        where = f"line {row.number}" if row.number is not None else f"row {row.text[:40]!r}"
        ragged.append((where, f"ragged CSV row: {row.actual_columns} fields, the header has "
                              f"{row.expected_columns}"))
        return "skip"

    read_opts = pacsv.ReadOptions(block_size=1 << 22)
    parse_opts = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)
    start = 0
    try:
        with pacsv.open_csv(pa.input_stream(str(file), compression=compression),
                            read_options=read_opts, parse_options=parse_opts,
                            convert_options=pacsv.ConvertOptions(
                                column_types={}, strings_can_be_null=False)) as head:
            names = head.schema.names
        ragged.clear()
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"{file}: the CSV header repeats column name(s) {dup}")
        convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                       strings_can_be_null=False)
        reader = pacsv.open_csv(pa.input_stream(str(file), compression=compression),
                                read_options=read_opts, parse_options=parse_opts,
                                convert_options=convert)
        pending: list[pa.RecordBatch] = []
        n = 0

        def emit(table: pa.Table) -> Chunk:
            nonlocal start
            table, bad = _decode_utf8(table, start)
            chunk = Chunk(file, start, None, table, errors=ragged[:] + bad)
            ragged.clear()
            start += table.num_rows
            return chunk

        for batch in reader:
            pending.append(batch)
            n += batch.num_rows
            while n >= chunk_rows:
                table = pa.Table.from_batches(pending)
                head_t, rest = table.slice(0, chunk_rows), table.slice(chunk_rows)
                yield emit(head_t)
                pending, n = rest.to_batches(), rest.num_rows
        if n or ragged:
            yield emit(pa.Table.from_batches(pending, schema=reader.schema))
    except pa.ArrowException as err:
        raise InputError(f"{file}: not a readable CSV file ({err})") from err


def _decode_utf8(table: pa.Table, start: int) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Binary CSV columns as strings; rows holding bytes that are not UTF-8 are removed
    and reported as (record N, message)."""
    bad: dict[int, str] = {}
    for name in table.column_names:
        try:
            table.column(name).cast(pa.string())
        except pa.ArrowInvalid:
            for i, v in enumerate(table.column(name).to_pylist()):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError as err:
                    bad.setdefault(i, f"not UTF-8 in column {name!r} ({err.reason} at byte "
                                      f"{err.start})")
    if bad:
        keep = [i for i in range(table.num_rows) if i not in bad]
        table = table.take(pa.array(keep, pa.int64()))
    table = table.cast(pa.schema([(n, pa.string()) for n in table.column_names]))
    return table, [(f"record {start + i + 1}", why) for i, why in sorted(bad.items())]
