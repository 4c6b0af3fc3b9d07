"""The plan runner: runs a Pipeline into a run directory on an Engine.

It owns everything that does not depend on where batches run: the plan checks,
the manifest, the step loop over the rows still alive, the score cache, the
rejected records, the outputs and the row accounting. The engine
(``curate.engine``) ingests the input into data parts, maps scorers over them
and reads rows back by id.

Stages: ingest (input files -> ``data/`` parts), then the pipeline's steps in
order: score steps compute (or fetch from the cache) columns for the alive rows;
filter, select and decision steps (``curate.decisions``) are global decisions over
the compact frame. Finally ``selected/``, ``rejected/`` and ``scores/`` are
written and the row accounting is checked before the manifest says complete.
A run that is killed is resumed by running the same command again.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import selection
from curate.bounds import plan_bounds
from curate.cache import ScorerCache
from curate.decisions import Access, get_decision
from curate.engine import ERROR, Engine, Part, get_engine
from curate.errors import CurateError, RunError
from curate.explain import filter_detail
from curate.hashing import hash_json
from curate.ingest import IngestStats
from curate.memory import peak_rss_mb, release_freed
from curate.models import cache_home
from curate.progress import Log
from curate.readers import fingerprint, list_files
from curate.run import (REJECTED_SCHEMA, Run, link_or_copy, prepare_output, read_parquet, run_codec,
                        write_bytes, write_json, write_table)
from curate.schema import CANONICAL
from curate.scorer import Scorer, get_scorer
from curate.spill import Lists
from curate.steps import Dedup, Filter, Score, Select

if TYPE_CHECKING:
    from curate.pipeline import Pipeline

FRAME_BASE = ("id", "source", "prompt_id")
FRAME_PRIVATE = ("_part", "_alive", "_order")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_plan(pipe: Pipeline, scorers: dict[int, Scorer], kind: str,
               data_columns: list[str] | None) -> None:
    """Column contracts, checked before any scorer runs. With ``data_columns`` None
    (before ingest, when the input's own columns are not known yet) only the
    checks that do not depend on them run."""
    columns_known = data_columns is not None
    available = set(FRAME_BASE) | set(data_columns or ())
    for i, step in enumerate(pipe.steps):
        if isinstance(step, Score):
            scorer = scorers[i]
            if kind not in scorer.kinds:
                raise CurateError(f"step {i + 1}: scorer {scorer.name!r} does not accept {kind} "
                                  f"rows (it accepts {', '.join(scorer.kinds)})")
            cols = set(scorer.columns_for(kind))
            clash = cols & available
            if clash:
                raise CurateError(f"step {i + 1} (score {step.scorer}) writes column(s) "
                                  f"{sorted(clash)} that already exist")
            available |= cols
        elif isinstance(step, Filter):
            missing = set(step.expr().meta.root_names()) - available
            if missing and columns_known:
                raise CurateError(f"step {i + 1} (filter {step.label!r}) uses unknown column(s) "
                                  f"{sorted(missing)}; available: {', '.join(sorted(available))}")
        elif isinstance(step, Dedup):
            problem = get_decision(step.method).check(step.options, available)
            if problem and columns_known:
                raise CurateError(f"step {i + 1} (dedup {step.method}) {problem}")
        elif isinstance(step, Select):
            try:
                needs = selection.requirements(step.strategy, step.budget, step.options)
            except CurateError as err:
                raise CurateError(f"step {i + 1} (select {step.strategy}): {err}") from err
            for col, hint in needs:
                if col not in available and columns_known:
                    raise CurateError(f"step {i + 1} (select {step.strategy}) uses unknown column "
                                      f"{col!r}: {hint}; available: {', '.join(sorted(available))}")


def data_columns(parts: list[Path], kind: str) -> list[str]:
    """Original columns small enough for the decision frame: numbers, booleans and
    short strings (labels such as a rating, a category or a generator name) present
    in every part, so filters and strategies can use them next to the scores."""
    if not parts:
        return []
    common = set.intersection(*(set(pq.read_schema(p).names) for p in parts))
    table = read_parquet(parts[0], columns=[c for c in pq.read_schema(parts[0]).names if c in common])
    skip = {*FRAME_BASE, *CANONICAL[kind], "source_row"} - {"label"}
    out = []
    for field in table.schema:
        if field.name in skip or field.name.startswith("raw_"):
            continue
        t = field.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out.append(field.name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            lengths = pc.utf8_length(table.column(field.name))
            if (pc.mean(lengths).as_py() or 0) <= 40:
                out.append(field.name)
    return out


def _rejected(ids: pl.Series, stage: str, decision: selection.Decision | None = None,
              reason: str = "", keep: pl.Series | None = None) -> pl.DataFrame:
    """Rejected records for ``ids`` (the dropped rows, in the order of ``~keep``)."""
    n = len(ids)

    def col(name: str, default: str | None) -> pl.Series | list:
        s = getattr(decision, name, None) if decision is not None else None
        return s.filter(~keep) if s is not None else [default] * n

    return pl.DataFrame({"id": ids, "stage": [stage] * n, "reason": col("reason", reason),
                         "detail": col("detail", None), "cluster": col("cluster", None),
                         "representative": col("representative", None)},
                        schema={f.name: pl.String for f in REJECTED_SCHEMA})


def parts_of(rows: pl.DataFrame, folder: Path) -> list[Part]:
    """The data parts holding ``rows`` (id, _part), each with the ids wanted from it."""
    return [Part(folder / name, group["id"].to_arrow())
            for (name,), group in rows.group_by("_part", maintain_order=True)]


class PlanRunner:
    """Runs one pipeline into one run directory on one engine."""

    def __init__(self, pipe: Pipeline, output: str | Path, *, engine: str | Engine = "local",
                 overwrite: bool = False, quiet: bool = False,
                 cache_dir: str | Path | None | bool = None, chunk_rows: int = 10_000,
                 batch_rows: int = 256, flush_rows: int = 4096, workers: int | None = None):
        if pipe.source.path is None:
            raise CurateError("the pipeline has no input: pass --input (CLI) or read(path)")
        run_codec()  # a bad $CURATE_PARQUET_COMPRESSION fails here, before any work
        self.pipe = pipe
        self.output = Path(output)
        self.overwrite = overwrite
        self.log = Log(quiet)
        self.engine = get_engine(engine, batch_rows=batch_rows, workers=workers,
                                 chunk_rows=chunk_rows)
        self.cache_root = (None if cache_dir is False else
                           Path(cache_dir) if cache_dir else cache_home() / "scores")
        self.flush_rows = flush_rows
        self.scorers = {i: get_scorer(s.scorer, **s.config)
                        for i, s in enumerate(pipe.steps) if isinstance(s, Score)}

    # --- the whole run --------------------------------------------------------

    def run(self) -> Run:
        t0 = time.monotonic()
        root = Path(self.pipe.source.path)
        files = list_files(root)
        if self.pipe.source.kind:  # early check; the input's own columns come with ingest
            check_plan(self.pipe, self.scorers, self.pipe.source.kind, None)
        for scorer in self.scorers.values():
            scorer.bind_input(str(root))
        models = {s.name: s.model_fingerprint() for s in self.scorers.values()}  # resolves models
        input_fp = fingerprint(files, root)
        spec = self.pipe.spec()
        run_key = hash_json([spec, input_fp])
        run, resuming = prepare_output(self.output, run_key, overwrite=self.overwrite,
                                       input_root=root if root.is_dir() else root.parent)
        self.log.info(f"{'resuming' if resuming else 'starting'} run {run.path} "
                      f"({self.pipe.name}, {len(files)} input file(s))"
                      + (f", replacing {run.replaced}" if run.replaced else ""))
        manifest: dict[str, Any] = {
            "status": "running", "run_key": run_key, "started": _now(),
            "curate_version": pkg_version("curate"), "engine": self.engine.name,
            "pipeline": spec, "plan": self.pipe.explain(), "bounds": plan_bounds(self.pipe.steps),
            "input": {"path": str(root.resolve()), "files": [str(f.relative_to(root)) if f != root
                                                             else f.name for f in files],
                      "fingerprint": input_fp},
            "models": models,
            "stages": [], "scorers": {}, "timings": {},
        }
        run.write_manifest(manifest)
        try:
            self._run(run, manifest, resuming)
        except BaseException as err:
            manifest.update(status="failed", error=f"{type(err).__name__}: {err}", finished=_now())
            run.write_manifest(manifest)
            raise
        manifest["timings"]["total_s"] = round(time.monotonic() - t0, 3)
        manifest["peak_rss_mb"] = peak_rss_mb()
        manifest.update(status="complete", finished=_now())
        run.write_manifest(manifest)
        shutil.rmtree(run.work, ignore_errors=True)
        return run

    def _run(self, run: Run, manifest: dict[str, Any], resuming: bool) -> None:
        self.work, self.spills = run.work, {}
        t = time.monotonic()
        stats, ingest_rejected = self._ingest(run, manifest["input"]["fingerprint"], resuming)
        manifest["timings"]["ingest_s"] = round(time.monotonic() - t, 3)
        manifest["input"].update(kind=stats.kind, adapters=stats.adapters,
                                 skipped=[{"file": f, "why": why} for f, why in stats.skipped])
        for f, why in stats.skipped:
            self.log.info(f"ingest: skipped {f}: {why}")
        if stats.labeled_rows:
            self.log.info(f"ingest: {stats.labeled_rows} rows carry a KTO label (column `label`: "
                          "true desirable, false undesirable)")
        manifest["counts"] = {"input": stats.rows_read, "ingest_rejected": ingest_rejected.height}
        manifest["stages"].append({"stage": "ingest", "in": stats.rows_read, "out": stats.rows_ok,
                                   "rejected": dict(sorted(stats.bad_reasons.items()))})
        if ingest_rejected.height:
            self.log.info(f"ingest: {ingest_rejected.height} of {stats.rows_read} rows rejected "
                          f"as bad rows ({', '.join(f'{k}: {v}' for k, v in stats.bad_reasons.items())})")
        self.kind = stats.kind
        self.data = run.dir("data")
        parts = sorted(self.data.glob("*.parquet"))
        self.data_columns = data_columns(parts, stats.kind)
        frame = (pl.concat([pl.read_parquet(p, columns=[*FRAME_BASE, *self.data_columns]).with_columns(
            _part=pl.lit(p.name)) for p in parts], how="vertical_relaxed")
            .with_row_index("_order").with_columns(_alive=pl.lit(True)))
        check_plan(self.pipe, self.scorers, stats.kind, self.data_columns)
        rejected = [ingest_rejected]
        for i, step in enumerate(self.pipe.steps):
            t = time.monotonic()
            alive = frame if frame["_alive"].all() else frame.filter("_alive")  # no copy
            if isinstance(step, Score):
                scorer = self.scorers[i]
                scores, failed, info = self._score(scorer, alive)
                new_columns = not set(scores.columns[1:]) & set(frame.columns)
                if new_columns and scores["id"].equals(frame["id"]):  # in frame order: no copy
                    frame = frame.hstack(scores.drop("id"))
                else:
                    frame = frame.join(scores, on="id", how="left")
                del scores
                manifest["scorers"][scorer.name] = info
                manifest["stages"].append({"stage": f"score:{scorer.name}", "in": alive.height,
                                           "out": alive.height - failed.height, **info})
                if failed.height:  # rows the scorer raised on: rejected with the error
                    rejected.append(_rejected(failed["id"], "score", reason="")
                                    .with_columns(reason=failed[ERROR]))
                    frame = frame.with_columns(
                        _alive=pl.col("_alive") & ~pl.col("id").is_in(failed["id"].implode()))
                continue
            if isinstance(step, Filter):
                keep = alive.select(step.expr().fill_null(False)).to_series()
                # reason: the filter's label, the same for every row; detail: the row's values
                decision = selection.Decision(keep, detail=filter_detail(alive, step.expr()))
                stage, reason = "filter", step.label
            elif isinstance(step, Select):
                decision = selection.select(alive.drop(*FRAME_PRIVATE), step.strategy,
                                            step.budget, step.options)
                keep, stage = decision.keep, "select"
                reason = f"not selected by {step.strategy} (budget {step.budget})"
            else:
                decision = self._decide(step, alive)
                keep, stage, reason = decision.keep, "dedup", step.method
            dropped = alive.filter(~keep)["id"]
            rejected.append(_rejected(dropped, stage, decision, reason, keep))
            frame = frame.with_columns(_alive=pl.col("_alive") & ~pl.col("id").is_in(dropped.implode()))
            facts = getattr(decision, "facts", None) or {}
            if stage == "dedup":
                facts = {**facts, "peak_rss_mb": peak_rss_mb()}
                if "candidate_pairs" in facts:
                    self.log.info(f"dedup {reason}: {facts['candidate_pairs']:,} candidate pairs"
                                  + (f", {facts['removed_by_verification']:,} removed by verification"
                                     if "removed_by_verification" in facts else ""))
            manifest["stages"].append({"stage": stage, "label": reason if stage != "filter" else step.label,
                                       "in": alive.height, "out": alive.height - len(dropped),
                                       "seconds": round(time.monotonic() - t, 3), **facts})
            self.log.info(f"{stage} {reason if stage != 'filter' else step.label}: "
                          f"kept {alive.height - len(dropped)} of {alive.height}")
        t = time.monotonic()
        for spill in self.spills.values():
            spill.close()
        self._write_outputs(run, frame, pl.concat(rejected), parts)
        manifest["timings"]["write_s"] = round(time.monotonic() - t, 3)
        manifest["counts"].update(self._check_counts(run, stats.rows_read))
        self.log.info(f"selected {manifest['counts']['selected']} of {stats.rows_read} rows, "
                      f"rejected {manifest['counts']['rejected']}")

    # --- stages ----------------------------------------------------------------

    def _ingest(self, run: Run, input_fp: str, resuming: bool) -> tuple[IngestStats, pl.DataFrame]:
        state_path, rej_path = run.work / "ingest.json", run.work / "ingest_rejected.parquet"
        if resuming and state_path.exists() and run.dir("data").exists():
            state = json.loads(state_path.read_text())
            if state.get("fingerprint") == input_fp:
                self.log.info("ingest: reusing the finished ingest of the interrupted run")
                stats = IngestStats(**state["stats"])
                return stats, pl.read_parquet(rej_path)
        staging = run.work / "data"
        with self.log.bar("ingest") as bar:
            stats, records = self.engine.ingest(self.pipe.source, staging, on_rows=bar.update)
        rejected = pl.DataFrame(records or None, schema={f.name: pl.String for f in REJECTED_SCHEMA})
        staging.mkdir(parents=True, exist_ok=True)
        run.replace_dir("data", staging)
        write_table(rejected.to_arrow(), rej_path)
        write_json({"fingerprint": input_fp, "stats": stats.__dict__}, state_path)
        self.log.info(f"ingest: {stats.rows_read} rows from {len(stats.files)} file(s), "
                      f"kind {stats.kind}, layout {', '.join(sorted(set(stats.adapters.values())))}")
        return stats, rejected

    def _score(self, scorer: Scorer, alive: pl.DataFrame
               ) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
        """(scores of the alive rows, rows the scorer raised on (id, _error), facts)."""
        t = time.monotonic()
        failed: list[pa.Table] = []
        cache = ScorerCache(self.cache_root, scorer, self.kind, flush_rows=self.flush_rows,
                            spill_dir=self.work / "spill" / str(len(self.spills)))
        self.spills.update(cache.spills)
        hits = cache.lookup(alive["id"])
        cache.spill_cached(hits["id"])
        todo = alive.join(hits.select("id"), on="id", how="anti") if hits.height else alive
        info = {"cache_key": scorer.cache_key(), "rows": alive.height,
                "from_cache": hits.height, "computed": todo.height}
        if todo.height:
            self._fit(scorer)
            self.log.info(f"score {scorer.name}: loading")
            tokens, begun = 0, time.monotonic()
            with self.log.bar(f"score {scorer.name}", total=todo.height) as bar:
                for scores in self.engine.map_batches(scorer, parts_of(todo, self.data),
                                                      ["id", *scorer.inputs(self.kind)]):
                    if scorer.token_columns:
                        tokens += sum(pc.sum(scores[c]).as_py() or 0 for c in scorer.token_columns
                                      if c in scores.column_names)
                        rate = tokens / max(time.monotonic() - begun, 1e-9)
                        bar.set_postfix_str(f"{tokens:,} answer tokens, {rate:,.0f} tokens/s")
                    bar.update(scores.num_rows)
                    if ERROR in scores.column_names:
                        bad = pc.is_valid(scores[ERROR])
                        if pc.any(bad).as_py():
                            failed.append(scores.filter(bad).select(["id", ERROR]))
                            scores = scores.filter(pc.invert(bad))
                        scores = scores.drop_columns([ERROR])
                    cache.add(scores)
            cache.flush()
            facts = self.engine.info.get(scorer.name, {})
            info["setup"] = facts.get("setup", {})
            info["workers"] = facts.get("workers", 1)
            if info["workers"] > 1:
                self.log.info(f"score {scorer.name}: {info['workers']} worker processes")
        errors = (pl.from_arrow(pa.concat_tables(failed)).unique("id", keep="first")
                  if failed else pl.DataFrame(schema={"id": pl.String, ERROR: pl.String}))
        if errors.height and errors.height == todo.height:
            raise RunError(f"scorer {scorer.name!r} failed on every row it scored "
                           f"({errors.height}); first: {errors[ERROR][0]}")
        info["failed"] = errors.height
        info["seconds"] = round(time.monotonic() - t, 3)
        info["peak_rss_mb"] = peak_rss_mb()
        speed = ""
        if todo.height and scorer.token_columns:
            info["answer_tokens"] = tokens
            info["tokens_per_s"] = round(tokens / max(time.monotonic() - begun, 1e-9), 1)
            speed = f"; {tokens:,} answer tokens, {info['tokens_per_s']:,.0f} tokens/s"
        self.log.info(f"score {scorer.name}: {alive.height} rows, {info['from_cache']} from cache, "
                      f"{info['computed']} computed ({info['seconds']} s{speed})")
        if errors.height:
            self.log.info(f"score {scorer.name}: {errors.height} row(s) rejected because the scorer "
                          f"raised on them (first: {errors[ERROR][0]})")
        return cache.lookup(alive["id"]), errors, info

    def _fit(self, scorer: Scorer) -> None:
        """Hand the scorer its whole-dataset state: from the cache, or fitted by the
        engine once and cached (``$CURATE_HOME/scores/fits``) by the scorer's cache key."""
        path = (self.cache_root / "fits" / f"{scorer.name}-{scorer.cache_key()}.pkl"
                if self.cache_root else None)
        if path is not None and path.exists():
            state = pickle.loads(path.read_bytes())
        else:
            state = self.engine.fit(scorer)
            if state is None:
                return
            if path is not None:
                write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), path)
        scorer.use_fit(state)

    def _decide(self, step: Dedup, alive: pl.DataFrame) -> selection.Decision:
        """A registered decision step over the columns it declares, with a row reader."""
        decision = get_decision(step.method)
        release_freed(0)  # what scoring freed, before the decision's own peak
        wanted = ["id", "_order", *decision.columns(step.options)]
        frame = alive.select(c for c in dict.fromkeys(wanted) if c in alive.columns)
        where = alive.select("id", "_part")

        def rows(ids: list[str], columns: list[str] | None) -> Iterator[pa.Table]:
            cols = columns or ["id", *CANONICAL[self.kind]]
            return self.engine.read_rows(parts_of(where.filter(pl.col("id").is_in(ids)), self.data),
                                         cols)

        def lists(column: str) -> Lists:
            if column not in self.spills:
                raise CurateError(f"dedup {step.method}: no working column {column!r} was scored")
            return self.spills[column].lists(frame["id"])

        groups = self.engine.map_groups if self.engine.distributed else None
        return decision.decide(frame, step.options, Access(rows, groups, self.log.info, lists))

    def _write_outputs(self, run: Run, frame: pl.DataFrame, rejected: pl.DataFrame,
                       parts: list[Path]) -> None:
        staging = run.work / "out"
        shutil.rmtree(staging, ignore_errors=True)
        score_cols = [c for c in frame.columns
                      if c not in (*FRAME_BASE, *self.data_columns, *FRAME_PRIVATE)]
        # each part's rows of the frame: a slice (no copy), the frame being in the order
        # it was read in, part after part
        if not frame["_order"].is_sorted():
            frame = frame.sort("_order")
        columns = frame.select("_alive", "id", *score_cols)
        runs = frame["_part"].rle().struct.unnest()
        starts = np.concatenate([[0], np.cumsum(runs["len"].to_numpy())])
        spans = {name: (int(a), int(b - a))
                 for name, a, b in zip(runs["value"].to_list(), starts, starts[1:])}
        (staging / "selected").mkdir(parents=True)

        def write_part(part: Path, rows: pl.DataFrame) -> None:
            if rows["_alive"].all() and rows.height == pq.read_metadata(part).num_rows:
                link_or_copy(part, staging / "selected" / part.name)  # every row kept
            else:
                table = read_parquet(part)
                if rows.height == table.num_rows and rows["id"].equals(pl.Series(table["id"])):
                    keep = rows["_alive"].to_arrow()  # rows in the part's order
                else:  # the part's own kept ids: a small set to look up
                    keep = pc.is_in(table["id"], value_set=rows.filter("_alive")["id"].to_arrow())
                write_table(table.filter(keep), staging / "selected" / part.name)
            write_table(rows.select("id", *score_cols).to_arrow(), staging / "scores" / part.name)

        # threads: Arrow reads, filters, compresses and writes without the GIL
        threads = min(self.engine.workers, os.cpu_count() or 1)  # a Ray cluster's are not here
        with ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()
            for part in parts:
                rows = columns.slice(*spans.get(part.name, (0, 0)))
                pending.append(pool.submit(write_part, part, rows))
                if len(pending) >= 2 * threads:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        write_table(rejected.to_arrow().cast(REJECTED_SCHEMA), staging / "rejected" / "part-00000.parquet")
        for name in ("selected", "scores", "rejected"):
            (staging / name).mkdir(parents=True, exist_ok=True)
            run.replace_dir(name, staging / name)

    def _check_counts(self, run: Run, rows_in: int) -> dict[str, int]:
        sel, rej = (pa.chunked_array([c for f in sorted(run.dir(name).glob("*.parquet"))
                                      for c in read_parquet(f, ["id"])["id"].chunks], pa.string())
                    for name in ("selected", "rejected"))
        n_sel, n_rej = len(sel), len(rej)
        all_ids = pa.chunked_array(sel.chunks + rej.chunks, pa.string())
        distinct = pl.Series(all_ids).n_unique()  # on every core: 1.7x Arrow's unique
        if n_sel + n_rej != rows_in or distinct != rows_in:
            raise RunError(f"row accounting failed for {run.path}: {rows_in} input rows but "
                           f"{n_sel} selected + {n_rej} rejected ({distinct} distinct ids); "
                           "this is a bug, please report it")
        return {"selected": n_sel, "rejected": n_rej}


def run_pipeline(pipe: Pipeline, output: str | Path, **options: Any) -> Run:
    """Run ``pipe`` into ``output`` (see PlanRunner for the options, ``engine`` among them)."""
    return PlanRunner(pipe, output, **options).run()
