"""The Scorer protocol and the registry of scorers by short name.

A scorer is a pure batch-wise map: a canonical ``RecordBatch`` in, new columns
out, same rows in the same order. It declares its output ``columns``, a
``version``, its config (the dataclass fields of the subclass) and its
``resources``. ``setup()`` loads models once per worker, called by the engine
where the batches run. Because it is a pure map, the same scorer runs in every
engine (``curate.engine``: local processes, Ray Data actor pools),
and its results can be cached by (row id, name, version, config, model).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.hashing import hash_json


@dataclass(frozen=True)
class Resources:
    """What one replica of a scorer needs; engines size their workers from it.

    ``cpus=None`` (the default): the scorer uses the cores itself (torch or faiss
    threads), so an engine runs one replica per machine, or per GPU with ``gpus``.
    ``cpus=1``: single-threaded Python work an engine may replicate, one per core.
    """

    cpus: float | None = None
    gpus: float = 0.0


class Scorer:
    """Base class. Subclasses are dataclasses whose fields are their config.

    Subclasses set ``name``, ``columns`` and implement ``score``; model-based
    scorers also implement ``setup`` and ``model_fingerprint``.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]]
    kinds: ClassVar[tuple[str, ...]] = ("sft", "preference", "text")
    resources: ClassVar[Resources] = Resources()  # a property where it depends on the config
    # rows per batch the scorer asks for (None: the engine's); model scorers on a CPU ask
    # for few, so progress moves every few seconds
    batch_rows: ClassVar[int | None] = None
    # score columns that count the answer tokens a model scored for a row: progress and
    # the manifest then give tokens and tokens/s
    token_columns: ClassVar[tuple[str, ...]] = ()
    # score columns only decisions read (large working data, such as MinHash shingle
    # sets): cached like the others, but a run keeps them in a file, not in its frame or
    # its scores (curate.spill)
    working_columns: ClassVar[tuple[str, ...]] = ()

    def config(self) -> dict[str, Any]:
        """The parameters that change the scores (part of the cache key)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def model_fingerprint(self) -> str:
        """Identity of any model weights the scores depend on ('' for none)."""
        return ""

    def bind_input(self, path: str) -> None:
        """Told the pipeline's input path before the run (e.g. DSIR's raw pool)."""

    def fit(self) -> Any:
        """Whole-dataset state the scores need (DSIR's pool statistics, the n-gram index
        of evaluation sets, the embeddings of a target set), or None. The runner has the
        engine compute it once per run (cached by ``cache_key``) and hands it to
        ``use_fit`` before the scorer is shipped to workers, so no worker recomputes it."""
        return None

    def use_fit(self, state: Any) -> None:
        """Take the state ``fit`` returned (called before ``setup``)."""

    def setup(self) -> None:
        """Load models or other heavy state; called by the engine once per worker, where
        the batches run, before ``score``."""

    def unload(self) -> None:
        """Drop what ``setup`` loaded that no other scorer shares (called by the engine
        when the scorer's step is done, so a large model does not stay in memory through
        the steps after it); ``setup`` loads it again."""

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array | list]:
        """Return one array (or list) per declared column, one value per row."""
        raise NotImplementedError

    def inputs(self, kind: str) -> list[str]:
        """Input columns the scorer reads from rows of ``kind`` (besides ``id``); the
        engine reads only these. Default: the canonical columns of the kind (a
        narrower list must keep the columns that tell the kind apart, ``score_batch``
        reads the kind from them)."""
        from curate.schema import CANONICAL

        return list(CANONICAL[kind])

    def columns_for(self, kind: str) -> dict[str, pa.DataType]:
        """Output columns for rows of ``kind`` (override when they differ by kind)."""
        return self.columns

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded scorer for the manifest (device, template, ...)."""
        return {}

    def output_schema(self, kind: str | None = None) -> pa.Schema:
        cols = self.columns if kind is None else self.columns_for(kind)
        return pa.schema([pa.field(n, t) for n, t in cols.items()])

    def cache_key(self) -> str:
        """Hash of everything the scores depend on apart from the row itself."""
        spec = {"name": self.name, "version": self.version, "config": self.config(),
                "model": self.model_fingerprint()}
        return hash_json(spec)

    def score_batch(self, batch: pa.RecordBatch) -> pa.Table:
        """Run ``score`` and check its output against the declared columns."""
        from curate.schema import kind_of

        kind = kind_of(batch.schema)
        declared = self.columns_for(kind)
        out = self.score(batch)
        missing = set(declared) - set(out)
        extra = set(out) - set(declared)
        if missing or extra:
            raise RuntimeError(f"scorer {self.name!r} returned columns {sorted(out)}, "
                               f"declared {sorted(declared)}")
        arrays = []
        for col, typ in declared.items():
            arr = out[col]
            arr = arr.cast(typ) if isinstance(arr, pa.Array) else pa.array(arr, type=typ)
            if len(arr) != batch.num_rows:
                raise RuntimeError(f"scorer {self.name!r} column {col!r} has {len(arr)} "
                                   f"values for {batch.num_rows} rows")
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self.output_schema(kind))


SCORERS: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available under ``cls.name``."""
    if cls.name in SCORERS and SCORERS[cls.name] is not cls:
        raise ValueError(f"two scorers named {cls.name!r}")
    SCORERS[cls.name] = cls
    return cls


def scorer_names() -> list[str]:
    importlib.import_module("scorers")
    return sorted(SCORERS)


def option_defaults(cls: type[Scorer], *, mark_required: bool = True) -> dict[str, Any]:
    """Each option of a scorer class and its default (None when it has none); with
    ``mark_required``, ``REQUIRED`` for an option the scorer cannot run without (no
    default, or one the scorer refuses when left as is, like an empty ``target=``)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    out: dict[str, Any] = {}
    for f in fields:
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED if mark_required else None
    if mark_required and REQUIRED not in out.values():
        try:
            cls()
        except CurateError as err:  # "dsir needs target=FILE": that option is required
            for f in fields:
                if re.search(rf"\b{re.escape(f.name)}=", str(err)):
                    out[f.name] = REQUIRED
        except Exception:  # other problems show when the scorer is used
            pass
    return out


class _Required:
    def __repr__(self) -> str:
        return "(required)"


REQUIRED = _Required()


def description(cls: type) -> str:
    """The first paragraph of a class's docstring, as one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(doc.split("\n\n")[0].split())


def get_scorer(name: str, **config: Any) -> Scorer:
    """Build a registered scorer by short name with its config."""
    names = scorer_names()
    if name not in SCORERS:
        raise CurateError(f"unknown scorer {name!r}; known scorers: {', '.join(names)}")
    cls = SCORERS[name]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = set(config) - fields
    if unknown:
        raise CurateError(f"scorer {name!r} has no option(s) {sorted(unknown)}; "
                          f"options: {sorted(fields) or 'none'}")
    return cls(**config)
