"""The pipeline DSL: ``read(...).score(...).filter(...).select(...).write(run_dir)``.

A ``Pipeline`` is an immutable list of steps; each method returns a new one.
Pipelines with tunable parameters are written as a function decorated with
``@pipeline(name=Param(default, help), ...)``; the CLI lists the parameters
(``curate run FILE --help``) and overrides them (``--set name=value``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.decisions import DECISIONS, complete, dedup_methods, get_decision
from curate.errors import CurateError
from curate.steps import Dedup, Filter, Read, Score, Select, Step, step_spec

__all__ = ["Dedup", "Filter", "Param", "Pipeline", "PipelineTemplate", "Read", "Score", "Select",
           "Step", "from_spec", "load_pipeline_file", "pipeline", "read"]


@dataclass(frozen=True)
class Pipeline:
    """An immutable chain of steps over one input."""

    source: Read
    steps: tuple[Step, ...] = ()
    name: str = "pipeline"
    params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None  # .finetune(...): trains on the selection after the run

    def _add(self, step: Step) -> Pipeline:
        return dataclasses.replace(self, steps=self.steps + (step,))

    def score(self, scorer: str, **config: Any) -> Pipeline:
        """Add a scorer (registered short name, e.g. ``"quality"``) with its options."""
        return self._add(Score(scorer, config))

    def filter(self, predicate: str | pl.Expr, *, name: str | None = None) -> Pipeline:
        """Keep rows where ``predicate`` (a SQL predicate string over score columns,
        or a polars expression) is true; rows where it is false or null are rejected."""
        return self._add(Filter(predicate, name))

    def select(self, strategy: str, *, budget: int | str | None = None, **options: Any) -> Pipeline:
        """Choose rows with a selection strategy (``random``, ``topk``, ``deita``, ...)
        under ``budget``: rows (``1000``), tokens (``"50000tokens"``) or None (all).
        Strategies over embeddings add the ``embedding`` scorer if it is missing."""
        from curate.selection import STRATEGIES

        p = self
        fn = STRATEGIES.get(strategy)
        if (fn is not None and getattr(fn, "uses_embedding", False)
                and options.get("embedding", "embedding") == "embedding"
                and not any(isinstance(s, Score) and s.scorer == "embedding" for s in self.steps)):
            p = self._add(Score("embedding", {}))
        return p._add(Select(strategy, budget, options))

    def dedup(self, method: str = "minhash", **options: Any) -> Pipeline:
        """Drop duplicates, keeping one row per cluster (``keep``: ``first``, ``longest``
        or a score column, highest wins).

        - ``exact``: same text after Unicode, case and whitespace normalisation
          (``punctuation=False`` also ignores punctuation).
        - ``minhash``: Jaccard of shingles >= ``threshold`` (word ``ngram``-grams, or
          ``shingle="char"``), MinHash-LSH with ``num_perm`` permutations; ``bands`` x
          ``rows`` chosen from the threshold unless given; ``verify`` checks each
          candidate pair's exact Jaccard.
        - ``semantic``: SemDeDup over sentence embeddings (``model``): k-means into
          ``n_clusters`` (default sqrt(rows)), then cosine > 1 - ``eps`` is a duplicate.

        ``fields``: ``all`` (whole conversation), ``prompt`` or ``response``.
        """
        if method not in dedup_methods():
            raise CurateError(f"unknown dedup method {method!r}; choose one of "
                              f"{', '.join(dedup_methods())}")
        score, decision = get_decision(method).plan(complete(method, options))
        return self._with_score(score)._add(decision)

    def _with_score(self, score: Score) -> Pipeline:
        """Add ``score`` unless an equivalent score step is already there."""
        from curate.scorer import get_scorer

        for s in self.steps:
            if isinstance(s, Score) and s.scorer == score.scorer:
                if get_scorer(s.scorer, **s.config).config() != get_scorer(score.scorer, **score.config).config():
                    raise CurateError(f"this step needs scorer {score.scorer!r} with {score.config}, "
                                      f"but an earlier step scores it with {s.config}; use one config")
                return self
        return self._add(score)

    def decontaminate(self, against: str | Path | list[str | Path], *,
                      ngram: int = DECISIONS["decontaminate"].options["ngram"],
                      fields: str = DECISIONS["decontaminate"].options["fields"]) -> Pipeline:
        """Drop rows sharing a word ``ngram``-gram with any of the evaluation files."""
        paths = [against] if isinstance(against, (str, Path)) else list(against)
        score, decision = get_decision("decontaminate").plan(complete("decontaminate", {
            "against": [str(Path(p).resolve()) for p in paths], "ngram": ngram, "fields": fields}))
        return self._with_score(score)._add(decision)

    def with_input(self, path: str | Path, *, kind: str | None = None,
                   adapter: str | None = None, columns: dict[str, str] | None = None) -> Pipeline:
        """The same pipeline over another input."""
        return dataclasses.replace(self, source=Read(str(path), kind or self.source.kind,
                                                     adapter or self.source.adapter,
                                                     columns or self.source.columns))

    def spec(self) -> dict[str, Any]:
        """A JSON-able description (stored in the manifest; part of the run key)."""
        return {"name": self.name, "params": self.params,
                "source": {"kind": self.source.kind, "adapter": self.source.adapter,
                           **({"columns": self.source.columns} if self.source.columns else {})},
                "steps": [step_spec(s) for s in self.steps]}

    def explain(self) -> str:
        """The plan as text, one step per line."""
        mapped = "".join(f", {k}={v}" for k, v in (self.source.columns or {}).items())
        lines = [f"read {self.source.path or '<input>'} (kind={self.source.kind or 'auto'}, "
                 f"adapter={self.source.adapter or 'auto'}{mapped})"]
        lines += [json.dumps(step_spec(s), default=str) for s in self.steps]
        return "\n".join(lines)

    def finetune(self, output: str | Path, *, model: str = "smollm2-135m", merge: bool = False,
                 resume: bool = False, overwrite: bool = False, **hyperparameters: Any) -> Pipeline:
        """Train ``model`` on the selected rows once the run is written (the last step):
        TRL SFT, or DPO with ``method="dpo"``; LoRA by default. ``hyperparameters`` are
        ``curate.finetune.TrainConfig`` fields. The model lands in ``output``."""
        from curate.finetune import TrainConfig

        TrainConfig.from_options(hyperparameters).check()  # fail now, not after the run
        return dataclasses.replace(self, training={
            "output": str(output), "model": model, "merge": merge, "resume": resume,
            "overwrite": overwrite, "config": hyperparameters})

    def write(self, output: str | Path, *, engine: str | Any = "local", **options: Any):
        """Run the pipeline into the run directory ``output`` on ``engine`` (a registered
        name such as ``"local"``, or an ``Engine``); returns the finished ``Run`` (and,
        with ``.finetune(...)``, trains on its selection).

        Options: ``overwrite``, ``quiet``, ``cache_dir`` (None: $CURATE_HOME/scores;
        False: no cache), ``chunk_rows``, ``batch_rows``, ``flush_rows``, ``workers``.
        """
        from curate.runner import run_pipeline  # heavy (engines, selection); the runner never imports this module

        run = run_pipeline(self, output, engine=engine, **options)
        if self.training:
            from curate.finetune import TrainConfig, finetune

            t = self.training
            finetune(run.path, t["output"], model=t["model"], merge=t["merge"],
                     resume=t["resume"], overwrite=t["overwrite"],
                     config=TrainConfig.from_options(t["config"]),
                     quiet=bool(options.get("quiet")))
        return run


def from_spec(spec: dict[str, Any], path: str | Path | None = None) -> Pipeline:
    """Rebuild a pipeline from its ``spec()`` (as stored in a run's manifest)."""
    src = spec.get("source", {})
    steps: list[Step] = []
    for d in spec.get("steps", []):
        kind = d["step"]
        if kind == "score":
            steps.append(Score(d["scorer"], d.get("config", {})))
        elif kind == "filter":
            steps.append(Filter(d["predicate"], d.get("name")))
        elif kind == "select":
            steps.append(Select(d["strategy"], d.get("budget"), d.get("options", {})))
        elif kind == "dedup":
            steps.append(Dedup(d["method"], d.get("options", {})))
        else:
            raise CurateError(f"unknown step {kind!r} in the pipeline spec")
    return Pipeline(Read(str(path) if path is not None else None, src.get("kind"), src.get("adapter"),
                         src.get("columns")),
                    tuple(steps), spec.get("name", "pipeline"), spec.get("params", {}))


def read(path: str | Path | None = None, *, kind: str | None = None,
         adapter: str | None = None, columns: dict[str, str] | None = None) -> Pipeline:
    """Start a pipeline over a file or directory (Parquet, JSON, JSONL or CSV, the last
    three also compressed as .gz or .zst).

    ``kind`` is ``sft``, ``preference`` or ``text`` (default: from the layout);
    ``adapter`` forces a layout (default: detected from the columns); ``columns`` maps
    the names a layout expects to your columns, e.g. ``{"prompt": "question",
    "response": "answer"}``.
    """
    if columns is not None:
        if not isinstance(columns, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in columns.items()):
            raise CurateError("columns must map layout names to your column names, "
                              "e.g. {'prompt': 'question', 'response': 'answer'}")
        columns = dict(columns)
    return Pipeline(Read(str(path) if path is not None else None, kind, adapter, columns or None))


# --- parameters --------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """A named pipeline parameter with its default and a line of help."""

    default: Any
    help: str = ""

    def parse(self, name: str, text: str) -> Any:
        """Turn a ``--set`` string into a value of the default's type."""
        d = self.default
        try:
            if isinstance(d, bool):
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if isinstance(d, int):
                if name == "budget" and not text.strip().lstrip("-").isdigit():
                    from curate.selection import parse_budget

                    parse_budget(text)  # rows or tokens, e.g. "200000tokens"
                    return text
                return int(text)
            if isinstance(d, float):
                return float(text)
            if isinstance(d, str):
                return text
            if text.lower() in ("none", "null"):
                return None
            return json.loads(text)
        except ValueError:
            if d is None:
                return text
            raise CurateError(f"--set {name}={text}: expected a {type(d).__name__} "
                              f"(default {d!r})") from None


@dataclass(frozen=True)
class PipelineTemplate:
    """A pipeline built from named parameters (see ``@pipeline``)."""

    build: Callable[..., Pipeline]
    params: dict[str, Param]
    name: str
    doc: str = ""

    def bind(self, **overrides: Any) -> Pipeline:
        """Build the pipeline with parameter overrides (values or ``--set`` strings)."""
        unknown = set(overrides) - set(self.params)
        if unknown:
            raise CurateError(f"pipeline {self.name!r} has no parameter(s) {sorted(unknown)}; "
                              f"its parameters: {', '.join(self.params)}")
        values = {k: p.default for k, p in self.params.items()}
        for k, v in overrides.items():
            values[k] = self.params[k].parse(k, v) if isinstance(v, str) else v
        built = self.build(**values)
        if not isinstance(built, Pipeline):
            raise CurateError(f"pipeline {self.name!r} must return a Pipeline, got {type(built).__name__}")
        return dataclasses.replace(built, name=self.name, params=values)


def pipeline(**params: Param | Any) -> Callable[[Callable[..., Pipeline]], PipelineTemplate]:
    """Decorator: ``@pipeline(budget=Param(1000, "rows to keep"))`` over ``def build(budget): ...``."""
    ps = {k: v if isinstance(v, Param) else Param(v) for k, v in params.items()}

    def deco(fn: Callable[..., Pipeline]) -> PipelineTemplate:
        return PipelineTemplate(fn, ps, fn.__name__, (fn.__doc__ or "").strip())
    return deco


def load_pipeline_file(path: str | Path) -> PipelineTemplate:
    """Load the ``pipeline`` object of a pipeline file (a Pipeline or a template)."""
    p = Path(path)
    if not p.is_file():
        raise CurateError(f"pipeline file {p} does not exist")
    spec = importlib.util.spec_from_file_location(f"curate_pipeline_{p.stem}", p)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    obj = getattr(module, "pipeline", None)
    if isinstance(obj, Pipeline):
        return PipelineTemplate(lambda: obj, {}, p.stem, (module.__doc__ or "").strip())
    if isinstance(obj, PipelineTemplate):
        return dataclasses.replace(obj, name=p.stem if obj.name == "build" else obj.name,
                                   doc=obj.doc or (module.__doc__ or "").strip())
    raise CurateError(f"{p} defines no `pipeline` (a curate Pipeline or an @pipeline function)")
