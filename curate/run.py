"""The run directory: the single source of truth of a run.

```
RUN/manifest.json      pipeline spec, versions, input fingerprint, model
                       fingerprints, row counts per stage, timings, status
RUN/data/*.parquet     the canonical input rows (what the ``data`` view shows)
RUN/scores/*.parquet   id + every score column
RUN/selected/*.parquet selected rows, full, trainer-ready
RUN/rejected/*.parquet id, stage, reason, detail, cluster, representative
RUN/report.html        what a person looks at
```
Every input row is in exactly one of selected or rejected. All files are
written to a temporary name and renamed, so a killed run never leaves a half
file; ``manifest.json`` says ``"status": "complete"`` only after the counts
have been checked. A run's Parquet is uncompressed unless
``$CURATE_PARQUET_COMPRESSION`` names a codec (``lz4``, ``zstd``, ``snappy``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, RunError

if TYPE_CHECKING:
    import pyarrow.dataset as pads

REJECTED_SCHEMA = pa.schema([
    ("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("cluster", pa.string()), ("representative", pa.string()),
])
OUTPUT_DIRS = ("data", "scores", "selected", "rejected")


_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` with the permissions a normal file would get."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)
    return fd, tmp


CODECS = ("none", "lz4", "zstd", "snappy")


def run_codec() -> str:
    """The codec of a run's Parquet: ``$CURATE_PARQUET_COMPRESSION``, or none. A run
    writes its rows twice (data/, selected/) and reads them at every pass: exact dedup
    of 1M texts (926 MB) took 8.8 s uncompressed, 10.6-11.0 s with LZ4 (files 1.7x
    smaller) and 11.9-12.6 s with zstd (2.4x smaller). ``curate export`` writes the
    compressed files to train on."""
    codec = os.environ.get("CURATE_PARQUET_COMPRESSION", "").strip().lower() or "none"
    if codec not in CODECS:
        raise CurateError(f"CURATE_PARQUET_COMPRESSION={codec!r}: choose one of {', '.join(CODECS)}")
    return codec


def write_table(table: pa.Table, path: Path, compression: str | None = None) -> None:
    """Write Parquet atomically (temporary name in the same folder, then rename), with
    ``compression`` (default: ``run_codec()``) and no dictionary pages (long unique
    texts made reading 3x as slow with them)."""
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression=compression or run_codec(), use_dictionary=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (files here are replaced, never changed in
    place, so the two stay equal), or a copy where the filesystem has no links."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_bytes(data: bytes, path: Path) -> None:
    """Write bytes atomically."""
    fd, tmp = _temp_beside(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically."""
    fd, tmp = _temp_beside(path)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
    os.replace(tmp, path)


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, read without pyarrow's dataset layer (which ``pq.read_table``
    goes through, and which a run then need not import at all)."""
    return pq.ParquetFile(path).read(columns=columns)


def read_dataset(folder: Path) -> pads.Dataset:
    """All Parquet parts of a folder as one dataset (schemas unified across parts)."""
    import pyarrow.dataset as pads

    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if not files:
        return pads.dataset(pa.table({}), schema=pa.schema([]))
    schemas = [pq.read_schema(f) for f in files]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # an original column (from JSON/CSV) changed type between parts: read it as text
        types: dict[str, set] = {}
        for sch in schemas:
            for f in sch:
                types.setdefault(f.name, set()).add(f.type)
        fields = {}
        for sch in schemas:
            for f in sch:
                fields.setdefault(f.name, pa.field(f.name, pa.string()) if len(types[f.name]) > 1 else f)
        schema = pa.schema(list(fields.values()))
    return pads.dataset(files, schema=schema, format="parquet")


class Run:
    """A run directory on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replaced: str | None = None  # what prepare_output deleted to make room

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def dir(self, name: str) -> Path:
        return self.path / name

    @property
    def work(self) -> Path:
        """Scratch space for resumable intermediate state."""
        return self.path / ".work"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{self.manifest_path} is not valid JSON ({err})") from err

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(manifest, self.manifest_path)

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read one of data / scores / selected / rejected as a table."""
        return read_dataset(self.dir(name)).to_table(columns=columns)

    def dataset(self, name: str) -> pads.Dataset:
        return read_dataset(self.dir(name))

    def replace_dir(self, name: str, staged: Path) -> None:
        """Swap a fully written staging folder in for ``name``."""
        target = self.dir(name)
        old = self.path / f".old-{name}"
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(staged, target)
        if old.exists():
            shutil.rmtree(old)


def open_run(path: str | Path, *, require_complete: bool = True) -> Run:
    """Open an existing run for reading (sql, explain, report)."""
    run = Run(path)
    if not run.path.is_dir():
        raise RunError(f"run directory {run.path} does not exist")
    manifest = run.manifest()
    if manifest is None:
        raise RunError(f"{run.path} is not a curate run (no manifest.json)")
    if require_complete and manifest.get("status") != "complete":
        raise RunError(incomplete_message(run.path, manifest))
    return run


def incomplete_message(path: str | Path, manifest: dict[str, Any]) -> str:
    """Why a run cannot be read as finished, and how to finish it."""
    status = manifest.get("status")
    if status == "failed":
        error = str(manifest.get("error") or "no error recorded").strip().splitlines()
        return (f"run {path} failed ({error[0] if error else 'no error recorded'}) and is "
                "incomplete; fix the cause and run the same command again to finish it")
    return (f"run {path} is not complete (status: {status}: still running, or killed); "
            "run the same command again to finish it")


def prepare_output(path: str | Path, run_key: str, *, overwrite: bool,
                   input_root: str | Path | None = None) -> tuple[Run, bool]:
    """Make ``path`` ready for the run ``run_key``; return (run, resuming).

    An existing directory holding the same run is resumed; one holding a
    different run is refused unless ``overwrite``, except a run that failed
    (its manifest says ``failed``): that one is replaced, so the command that
    fixes a typo needs no ``--overwrite``. A directory that is not a curate run,
    or that holds the input, is never deleted.
    """
    run = Run(path)
    if run.path.exists() and not run.path.is_dir():
        raise RunError(f"output {run.path} is a file, not a directory")
    if input_root is not None:
        out, src = run.path.resolve(), Path(input_root).resolve()
        if out == src or out in src.parents:
            raise RunError(f"output directory {run.path} contains the input {input_root}; "
                           "choose an output outside the input")
    if run.path.exists() and any(run.path.iterdir()):
        try:
            manifest = run.manifest()
        except RunError:
            manifest = None
        same = manifest is not None and manifest.get("run_key") == run_key
        is_run = manifest is not None and "run_key" in manifest
        if overwrite and not is_run:
            raise RunError(f"output directory {run.path} is not empty and is not a curate run; "
                           "refusing to delete it even with --overwrite")
        failed = is_run and manifest.get("status") == "failed"
        if overwrite or (failed and not same):
            shutil.rmtree(run.path)
            run.replaced = "a failed run" if failed and not overwrite else "a run (--overwrite)"
        elif not same:
            state = {"running": "running or killed"}.get(manifest.get("status"), manifest.get("status")) \
                if manifest else None
            what = (f"a different run ({state}: pipeline {manifest.get('pipeline', {}).get('name')!r}, "
                    f"input {manifest.get('input', {}).get('path')!r})" if manifest
                    else "files that are not a curate run")
            raise RunError(f"output directory {run.path} already holds {what}; "
                           "choose another --output or pass --overwrite")
        else:
            return run, True
    run.path.mkdir(parents=True, exist_ok=True)
    return run, False
