"""The ``curate`` command line.

Every command is a thin wrapper over a library call (parse options, call, print), and
they share option tables and the error handling in ``main``; kept in one module (over
500 lines) so a reader sees the whole command surface in one place. The ``sae``
commands live in ``curate.sae_cli``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import click

from curate.decisions import DECISIONS, dedup_methods
from curate.errors import CurateError
from curate.memory import freeze_gc

MINHASH = DECISIONS["minhash"].options  # the DSL's defaults, shown by the CLI
SEMANTIC = DECISIONS["semantic"].options
DECONTAMINATE = DECISIONS["decontaminate"].options

RUN_OPTIONS = [
    click.option("--overwrite", is_flag=True, help="Replace an output directory that holds a different run."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages (for scripts)."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Score cache folder [default: $CURATE_HOME/scores, ~/.cache/curate/scores]."),
    click.option("--no-cache", is_flag=True, help="Compute every score, reuse nothing."),
    click.option("--batch-rows", type=click.IntRange(1), default=256, show_default=True,
                 help="Rows per scorer batch."),
    click.option("--flush-rows", type=click.IntRange(1), default=4096, show_default=True,
                 help="Save computed scores to the cache every N rows (less lost work on a crash)."),
    click.option("--workers", type=click.IntRange(1), default=None,
                 help="Processes for CPU scorers (minhash, exact, quality, lexical) [default: CPU count]."),
]


def run_options(fn):
    for opt in reversed(RUN_OPTIONS):
        fn = opt(fn)
    return fn


def _exec_options(kw: dict[str, Any]) -> dict[str, Any]:
    no_cache = kw.pop("no_cache")
    cache_dir = kw.pop("cache_dir")
    return {"overwrite": kw.pop("overwrite"), "quiet": kw.pop("quiet"),
            "cache_dir": False if no_cache else cache_dir,
            "batch_rows": kw.pop("batch_rows"), "flush_rows": kw.pop("flush_rows"),
            "workers": kw.pop("workers")}


def _done(run, quiet: bool) -> None:
    # the counts were logged by the run itself ("selected N of M rows, rejected K")
    if not quiet:
        click.echo(f"results: {run.path}  (try: curate sql {run.path} \"select count(*) from selected\")",
                   err=True)
    click.echo(str(run.path))


_DEBUG = {"on": False}


def _debug() -> bool:
    return _DEBUG["on"] or os.environ.get("CURATE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="curate")
@click.option("--debug", is_flag=True,
              help="On an error, print the Python traceback too (or set CURATE_DEBUG=1).")
def cli(debug: bool) -> None:
    """curate: score, deduplicate and select LLM post-training data.

    \b
    Typical use:
      curate run pipelines/sft_select.py --input sample_data/sft --output runs/sft
      curate sql runs/sft "select count(*) from selected"
      curate explain runs/sft <id>
    """
    if debug:
        _DEBUG["on"] = True
    if not _debug():  # our warnings as one line each, like errors
        warnings.formatwarning = lambda message, category, *_a, **_k: (
            f"warning: {message}\n" if issubclass(category, UserWarning)
            else f"{category.__name__}: {message}\n")
    from curate.progress import silence_hf

    silence_hf()  # curate reports its own progress; no transformers / hub bars


KIND = click.option("--kind", type=click.Choice(["sft", "preference", "text"]), default=None,
                    help="Dataset kind [default: from the columns].")
_ADAPTER = click.option("--adapter", default=None,
                        help="Force an input layout (openai, sharegpt, alpaca, hh_rlhf, ranked, "
                             "pairwise, prompt_completion, prompt_pair, text, any_text) "
                             "[default: detected].")
_MAP = click.option("--map", "maps", multiple=True, metavar="NAME=COLUMN",
                    help="Read your column COLUMN as the layout's NAME, e.g. --map prompt=question "
                         "--map response=answer (repeatable).")


def ADAPTER(fn):  # noqa: N802 (used like the option decorators above)
    """--adapter and --map: how input columns become canonical rows."""
    return _ADAPTER(_MAP(fn))


def _columns(kw: dict[str, Any]) -> dict[str, str] | None:
    """The --map options (popped from ``kw``) as {layout name: input column}."""
    out: dict[str, str] = {}
    for item in kw.pop("maps", ()) or ():
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise click.BadParameter(f"expected NAME=COLUMN, got {item!r}", param_hint="--map")
        out[name.strip()] = column.strip()
    return out or None


@cli.command()
@click.argument("input", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@KIND
@ADAPTER
@run_options
def ingest(input: str, output: str, kind: str | None, adapter: str | None, **kw: Any) -> None:
    """Normalise INPUT (file or directory of Parquet/JSON/JSONL/CSV) into a run.

    Every good row lands in selected/ with a stable id; bad rows land in
    rejected/ with the reason.
    """
    from curate.pipeline import read

    opts = _exec_options(kw)
    run = read(input, kind=kind, adapter=adapter, columns=_columns(kw)).write(output, **opts)
    _done(run, opts["quiet"])


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise CurateError(f"--set {v!r}: expected key=value")
        k, _, val = v.partition("=")
        out[k.strip()] = val
    return out


def _user_code(path: str, what: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` that runs the code of the pipeline file ``path``; an exception that
    code raises is the user's error: one line naming the file and line (the
    traceback with --debug)."""
    try:
        return fn(*args, **kwargs)
    except CurateError:
        raise
    except Exception as err:
        target = Path(path).resolve()
        lineno = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else None
        for frame in traceback.extract_tb(err.__traceback__):
            if Path(frame.filename).resolve() == target:
                lineno = frame.lineno
        where = f"{path}:{lineno}" if lineno else path
        text = (err.msg if isinstance(err, SyntaxError) else str(err)).strip()
        raise CurateError(f"pipeline file {where}: {what} raised {type(err).__name__}"
                          + (f": {text.splitlines()[0]}" if text else "")
                          + ("" if _debug() else " (run with --debug for the traceback)")) from err


def _load_pipeline(path: str):
    from curate.pipeline import load_pipeline_file

    return _user_code(path, "loading it", load_pipeline_file, path)


def _pipeline_help(path: str) -> str:
    tpl = _load_pipeline(path)
    lines = [f"Pipeline {tpl.name} ({path})"]
    if tpl.doc:
        lines += ["", tpl.doc]
    lines += ["", "Parameters (override with --set NAME=VALUE):"]
    if not tpl.params:
        lines.append("  (none)")
    for name, p in tpl.params.items():
        lines.append(f"  {name:<24} default {p.default!r:<16} {p.help}")
    return "\n".join(lines)


@cli.command(add_help_option=False)
@click.argument("pipeline_file", required=False, type=click.Path())
@click.option("--input", "-i", "input_", type=click.Path(), help="Input file or directory.")
@click.option("--output", "-o", type=click.Path(), help="Run directory to write.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Override a pipeline parameter (repeatable).")
@KIND
@ADAPTER
@click.option("--explain", is_flag=True, help="Print the plan and stop.")
@click.option("--help", "-h", "show_help", is_flag=True, help="Show this help (and the pipeline's parameters).")
@click.option("--engine", default="local", show_default=True,
              help="Where batches run: local (this machine) or ray (a Ray cluster).")
@click.option("--address", default=None,
              help="Ray cluster to connect to (ray://HOST:10001 or HOST:6379) [default: "
                   "$RAY_ADDRESS, else a local cluster]; with --engine ray.")
@run_options
@click.pass_context
def run(ctx: click.Context, pipeline_file: str | None, input_: str | None, output: str | None,
        sets: tuple[str, ...], kind: str | None, adapter: str | None, explain: bool,
        show_help: bool, engine: str, address: str | None, **kw: Any) -> None:
    """Run PIPELINE_FILE (a pipelines/*.py file) over --input into --output.

    `curate run PIPELINE_FILE --help` lists the pipeline's parameters.
    """
    if show_help:
        click.echo(ctx.get_help())
        if pipeline_file:
            click.echo("\n" + _pipeline_help(pipeline_file))
        return
    if pipeline_file is None:
        raise CurateError("missing PIPELINE_FILE: curate run PIPELINE_FILE --input DATA --output RUN "
                          "(e.g. pipelines/sft_select.py; see curate run --help)")
    tpl = _load_pipeline(pipeline_file)
    pipe = _user_code(pipeline_file, "building the pipeline", tpl.bind, **_parse_sets(sets))
    if input_:
        pipe = pipe.with_input(input_, kind=kind, adapter=adapter, columns=_columns(kw))
    if explain:
        click.echo(pipe.explain())
        return
    if not output:
        raise CurateError("missing --output RUN_DIR")
    if pipe.source.path is None:
        raise CurateError("missing --input: the pipeline reads no fixed path")
    from curate.engine import get_engine

    opts = _exec_options(kw)
    if address and engine != "ray":
        raise CurateError(f"--address is for --engine ray (the engine is {engine})")
    # built before the run directory exists: an unknown engine, a missing package or an
    # unreachable cluster is refused first
    eng = get_engine(engine, batch_rows=opts["batch_rows"], workers=opts["workers"],
                     **({"address": address} if address else {}))
    run = pipe.write(output, engine=eng, **opts)
    _done(run, opts["quiet"])


@cli.command()
@click.argument("input", type=click.Path())
@click.option("--scorer", "-s", "scorer_names", multiple=True, required=True,
              help="Scorer short name (repeatable); see `curate scorers`.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Scorer option, applied to every given scorer that has it (repeatable).")
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@KIND
@ADAPTER
@run_options
def score(input: str, scorer_names: tuple[str, ...], options: tuple[str, ...], output: str,
          kind: str | None, adapter: str | None, **kw: Any) -> None:
    """Score every row of INPUT; scores land in RUN/scores (nothing is filtered)."""
    from curate.pipeline import read
    from curate.scorer import SCORERS, option_defaults, scorer_names as all_names

    all_names()
    opts_in = _parse_sets(options)
    used: set[str] = set()
    pipe = read(input, kind=kind, adapter=adapter, columns=_columns(kw))
    for name in scorer_names:
        cls = SCORERS.get(name)
        defaults = option_defaults(cls, mark_required=False) if cls else {}
        config = {}
        for k, v in opts_in.items():
            if k in defaults:
                config[k] = _coerce(v, defaults[k])
                used.add(k)
        pipe = pipe.score(name, **config)
    unused = set(opts_in) - used
    if unused:
        raise CurateError(f"--option {sorted(unused)}: no given scorer has such an option")
    opts = _exec_options(kw)
    run = pipe.write(output, **opts)
    _done(run, opts["quiet"])


@cli.command()
@click.argument("input", type=click.Path())
@click.option("--method", "-m", type=click.Choice(dedup_methods()),
              default="minhash", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--threshold", type=float, default=MINHASH["threshold"], show_default=True,
              help="minhash: Jaccard similarity of shingles that makes a duplicate, in (0, 1].")
@click.option("--num-perm", type=click.IntRange(1), default=MINHASH["num_perm"], show_default=True,
              help="minhash: permutations per signature.")
@click.option("--bands", type=click.IntRange(1), default=None,
              help="minhash: LSH bands (with --rows) [default: chosen from the threshold].")
@click.option("--rows", type=click.IntRange(1), default=None, help="minhash: rows per band.")
@click.option("--ngram", type=click.IntRange(1), default=MINHASH["ngram"], show_default=True,
              help="minhash: shingle size (words, or characters with --shingle char).")
@click.option("--shingle", type=click.Choice(["word", "char"]), default=MINHASH["shingle"], show_default=True,
              help="minhash: word n-grams, or character n-grams for scripts without spaces.")
@click.option("--no-verify", is_flag=True, help="minhash: skip the exact Jaccard check of candidates.")
@click.option("--hash", "hash_", type=click.Choice(["oph", "datasketch"]), default=MINHASH["hash"],
              show_default=True, help="minhash: signatures by one-permutation hashing (fast) or "
              "equal to datasketch.MinHash (xxh32, ~5x slower).")
@click.option("--eps", type=float, default=SEMANTIC["eps"], show_default=True,
              help="semantic: cosine similarity above 1 - eps is a duplicate.")
@click.option("--model", default=SEMANTIC["model"], show_default=True, help="semantic: embedding model.")
@click.option("--fields", type=click.Choice(["all", "prompt", "response"]), default=MINHASH["fields"],
              show_default=True, help="Which text to compare.")
@click.option("--keep", default=MINHASH["keep"], show_default=True,
              help="Which row of a cluster stays: first, longest, or a score column (highest).")
@KIND
@ADAPTER
@run_options
def dedup(input: str, method: str, output: str, threshold: float, num_perm: int,
          bands: int | None, rows: int | None, ngram: int, shingle: str, no_verify: bool, hash_: str,
          eps: float, model: str, fields: str, keep: str, kind: str | None, adapter: str | None,
          **kw: Any) -> None:
    """Remove duplicates from INPUT: exact, near (MinHash-LSH) or semantic.

    Every dropped row is in RUN/rejected with its cluster and the id of the kept
    row (`curate explain RUN ID` shows the kept twin).
    """
    from curate.pipeline import read

    # options are checked before anything is created, so a typo leaves no run behind
    if method == "semantic" and not 0 < eps < 1:
        raise CurateError(f"--eps {eps}: must be in (0, 1) (a cosine similarity above 1 - eps "
                          "makes a duplicate; 0.05 is the usual value)")
    if method == "minhash" and not 0 < threshold <= 1:
        raise CurateError(f"--threshold {threshold}: must be a Jaccard similarity in (0, 1]")
    if (bands is None) != (rows is None):
        raise CurateError("--bands and --rows go together: give both or neither")
    if bands is not None and rows is not None and bands * rows > num_perm:
        raise CurateError(f"--bands {bands} x --rows {rows} = {bands * rows} needs at least that "
                          f"many permutations (--num-perm {num_perm})")
    _check_keep(keep, input, method)
    if method == "exact":
        options = {"fields": fields, "keep": keep}
    elif method == "minhash":
        options = {"threshold": threshold, "num_perm": num_perm, "bands": bands, "rows": rows,
                   "ngram": ngram, "shingle": shingle, "fields": fields, "verify": not no_verify,
                   "keep": keep, "hash": hash_}
    else:
        options = {"eps": eps, "model": model, "fields": fields, "keep": keep}
    opts = _exec_options(kw)
    run = read(input, kind=kind, adapter=adapter, columns=_columns(kw)).dedup(method, **options).write(output, **opts)
    _done(run, opts["quiet"])


def _check_keep(keep: str, input: str, method: str) -> None:
    """A --keep column must exist: a column of the dedup's own scorer or of the input
    (peeked at from the first rows of its files, before any run directory exists)."""
    if keep in ("first", "longest"):
        return
    from curate.readers import list_files, read_chunks
    from curate.scorer import get_scorer

    scorer = {"exact": "exact", "minhash": "minhash", "semantic": "embedding"}[method]
    known = set(get_scorer(scorer).columns)
    try:
        for file in list_files(input)[:50]:
            chunk = next(iter(read_chunks(file, chunk_rows=100)), None)
            if chunk is not None:
                names = chunk.arrow.column_names if chunk.arrow is not None else \
                    {k for row in chunk.rows for k in row}
                known |= {c for name in names for c in (name, f"raw_{name}")}
    except Exception:  # an unreadable input is reported by the run itself, with its file
        return
    if keep not in known:
        raise CurateError(f"--keep {keep!r}: no such column; use first, longest, or a numeric "
                          f"column of the input or the {scorer} scorer: "
                          f"{', '.join(sorted(c for c in known if not c.startswith('raw_')))}")


@cli.command()
@click.argument("input", type=click.Path())
@click.option("--against", "-a", multiple=True, required=True, type=click.Path(),
              help="Evaluation set file or directory (repeatable).")
@click.option("--ngram", type=click.IntRange(1), default=DECONTAMINATE["ngram"], show_default=True,
              help="Length in words of a shared n-gram that counts as contamination.")
@click.option("--fields", type=click.Choice(["all", "prompt", "response"]),
              default=DECONTAMINATE["fields"], show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@KIND
@ADAPTER
@run_options
def decontaminate(input: str, against: tuple[str, ...], ngram: int, fields: str, output: str,
                  kind: str | None, adapter: str | None, **kw: Any) -> None:
    """Drop rows of INPUT that share a long n-gram with an evaluation set.

    Rejected rows record which eval set matched (reason) and the n-gram (detail).
    """
    from curate.pipeline import read

    opts = _exec_options(kw)
    run = (read(input, kind=kind, adapter=adapter, columns=_columns(kw))
           .decontaminate(list(against), ngram=ngram, fields=fields).write(output, **opts))
    _done(run, opts["quiet"])


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--strategy", "-s", required=True,
              help="random, topk, threshold, stratified, deita, kmeans_quality, kcenter, "
                   "facility_location, importance, weighted, grape.")
@click.option("--budget", "-b", default=None,
              help="Rows (1000) or tokens (50000tokens) to select [default: all eligible].")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Strategy option, e.g. by=quality_mtld, threshold=0.9, seed=1 (repeatable).")
@click.option("--replace/--append", default=True, show_default=True,
              help="Replace the run's own select steps, or select after them.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@run_options
def select(run_dir: str, strategy: str, budget: str | None, options: tuple[str, ...],
           replace: bool, output: str, **kw: Any) -> None:
    """Select from RUN again with another strategy or budget, into a new run.

    The run's pipeline is replayed over its input (scores come from the cache,
    so only the selection is new), with its select steps replaced (default) or
    followed by the new one. The new run accounts for every input row.
    """
    import json as _json

    from curate.pipeline import Select, from_spec
    from curate.run import open_run

    run = open_run(run_dir)
    manifest = run.manifest()
    pipe = from_spec(manifest["pipeline"], manifest["input"]["path"])
    if replace:
        pipe = pipe.__class__(pipe.source, tuple(s for s in pipe.steps if not isinstance(s, Select)),
                              pipe.name, pipe.params)
    opts_in = {}
    for k, v in _parse_sets(options).items():
        try:
            opts_in[k] = _json.loads(v)
        except ValueError:
            opts_in[k] = v
    parsed_budget: Any = budget
    if budget is not None and budget.strip().isdigit():
        parsed_budget = int(budget)
    pipe = pipe.select(strategy, budget=parsed_budget, **opts_in)
    _check_replay(pipe, run)  # before anything is created: a typo leaves no run behind
    opts = _exec_options(kw)
    new = pipe.write(output, **opts)
    _done(new, opts["quiet"])


def _check_replay(pipe, run) -> None:
    """The plan checks of a run (strategy, options, budget, every column a step reads),
    done against the columns the source run already has, so `curate select` refuses
    a bad option before it creates the output directory."""
    from curate.runner import check_plan, data_columns
    from curate.pipeline import Score
    from curate.scorer import get_scorer

    kind = (run.manifest() or {}).get("input", {}).get("kind") or pipe.source.kind
    scorers = {i: get_scorer(s.scorer, **s.config) for i, s in enumerate(pipe.steps)
               if isinstance(s, Score)}
    if kind is None:
        return
    parts = sorted(run.dir("data").glob("*.parquet"))
    check_plan(pipe, scorers, kind, data_columns(parts, kind) if parts else None)


def _coerce(text: str, default: Any) -> Any:
    """An --option value as the type of the option's default: a list option takes one
    value, a comma-separated list or JSON; an option without a default JSON or text."""
    from curate.pipeline import Param

    if isinstance(default, list) and not text.lstrip().startswith("["):
        return [t.strip() for t in text.split(",") if t.strip()]
    return Param(default).parse("option", text)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("sql")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the result to this file instead of stdout (required for parquet).")
@click.option("--max-rows", type=int, default=50, show_default=True, help="Rows shown as a table.")
@click.option("--allow-incomplete", is_flag=True,
              help="Query a run that failed or was interrupted (its views hold only what it "
                   "wrote before it stopped).")
def sql(run_dir: str, sql: str, fmt: str, output: str | None, max_rows: int,
        allow_incomplete: bool) -> None:
    """Query a run with DuckDB SQL (read-only).

    \b
    Views, joinable on id:
      data      the canonical input rows
      scores    id + every score column
      selected  the selected rows (full)
      rejected  id, stage, reason, detail, cluster, representative
    """
    from curate.sql import query, write_result

    if output and Path(run_dir).resolve() in Path(output).resolve().parents:
        raise CurateError(f"--output {output} is inside the run {run_dir}; write results elsewhere")
    if fmt == "parquet" and not output:
        raise CurateError("--format parquet needs --output FILE")
    if allow_incomplete:
        from curate.run import incomplete_message, open_run

        manifest = open_run(run_dir, require_complete=False).manifest() or {}
        if manifest.get("status") != "complete":
            click.echo(f"warning: {incomplete_message(run_dir, manifest)}; the views show only "
                       "what it wrote before it stopped", err=True)
    rel = query(run_dir, sql, require_complete=not allow_incomplete)
    if fmt == "table" and output is None:
        rel.show(max_rows=max_rows, max_width=10_000)
        return
    write_result(rel.arrow(), fmt, output)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--by", default="logprob_conditional", show_default=True,
              help="Score or rating column: highest becomes chosen, lowest rejected.")
@click.option("--only-selected", is_flag=True, help="Use only the run's selected rows.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write (ingest it as a preference dataset).")
@click.option("--quiet", "-q", is_flag=True, help="No messages on stderr; print only the file's path.")
def pairs(run_dir: str, by: str, only_selected: bool, output: str, quiet: bool) -> None:
    """Build preference pairs from an SFT run's answers to the same prompt.

    With the perplexity scorer's logprob_conditional (the default) the pair is
    the answer the target model finds most probable vs the least probable
    (GRAPE-style); pass --by with a rating column to pair by rating instead.
    """
    from curate.pairs import build_pairs

    counts = build_pairs(run_dir, output, by=by, only_selected=only_selected)
    if not quiet:
        click.echo(f"{counts['pairs']} pairs from {counts['prompts_with_several_answers']} prompts with "
               f"several answers ({counts['ties']} ties skipped): {output}", err=True)
    click.echo(output)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write [default: RUN/report.html].")
@click.option("--max-points", type=click.IntRange(3), default=5000, show_default=True,
              help="Most rows drawn on the embedding map (a seeded random sample).")
@click.option("--quiet", "-q", is_flag=True, help="No messages on stderr; print only the page's path.")
def report(run_dir: str, output: str | None, max_points: int, quiet: bool) -> None:
    """Write an analysis page of RUN: funnel, score histograms with thresholds,
    selected vs rejected, embedding map, rejection reasons, token counts.

    The page is one self-contained HTML file (plotly.js inlined; no network
    needed to view it). Prints its path.
    """
    import time

    from curate.report import write_report

    t = time.monotonic()
    path = write_report(run_dir, output, max_points=max_points)
    if not quiet:
        click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, "
                   f"{time.monotonic() - t:.1f} s); open it in a browser", err=True)
    click.echo(str(path))


@cli.command()
def models() -> None:
    """List the embedded models and where their weights are."""
    from curate.models import list_models

    for m in list_models():
        click.echo(f"{m['name']:<14} {m['task']:<10} {m['package']}\n"
                   f"{'':<14} {m['description']}\n{'':<14} weights: {m['weights']}")


@cli.command()
def scorers() -> None:
    """List the registered scorers, their options and columns."""
    import textwrap

    from curate.scorer import REQUIRED, SCORERS, description, option_defaults, scorer_names

    for name in scorer_names():
        cls = SCORERS[name]
        click.echo(f"{name}  (v{cls.version})")
        doc = description(cls)
        if doc:
            click.echo(textwrap.fill(doc, width=88, initial_indent="    ",
                                     subsequent_indent="    "))
        options = sorted(option_defaults(cls).items(), key=lambda kv: kv[1] is not REQUIRED)
        opts = ", ".join(f"{k} (required)" if v is REQUIRED else f"{k}={v!r}"
                         for k, v in options)  # required ones first
        click.echo(textwrap.fill(f"options: {opts or 'none'}", width=88, initial_indent="    ",
                                 subsequent_indent="      "))
        click.echo(textwrap.fill(f"columns: {', '.join(cls.columns)}", width=88,
                                 initial_indent="    ", subsequent_indent="      "))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("row_id")
def explain(run_dir: str, row_id: str) -> None:
    """Why row ROW_ID was kept or dropped (stage, reason, kept twin, scores)."""
    from curate.explain import explain as explain_row
    from curate.explain import render

    for line in render(explain_row(run_dir, row_id)):
        click.echo(line)


def _train_options(fn):
    """One flag per TrainConfig field (its default shown, so defaults live in one place)."""
    import dataclasses

    from curate.finetune import TrainConfig

    helps = {"method": "sft or dpo", "lora": "LoRA adapter (--no-lora: full fine-tuning)",
             "target_modules": "LoRA target modules (all-linear, or comma-separated names)",
             "max_steps": "optimisation steps (overrides --epochs when > 0)",
             "learning_rate": "default 2e-4 with LoRA, 2e-5 full",
             "batch_size": "rows per device step", "grad_accum": "steps accumulated per update",
             "max_length": "tokens per row (longer rows are cut)", "beta": "DPO beta",
             "dtype": "auto (bf16 on GPU, float32 on CPU), float32 or bfloat16",
             "save_steps": "checkpoint every N steps (what --resume continues from)",
             "device": "cpu, cuda, cuda:1 ... [default: cuda when present]"}
    for f in reversed(dataclasses.fields(TrainConfig)):
        flag = f"--{f.name.replace('_', '-')}"
        if f.name == "lora":
            fn = click.option("--lora/--no-lora", "lora", default=None,
                              help=f"{helps['lora']} [default: lora]")(fn)
            continue
        kind = {int: int, float: float}.get(type(f.default), str)
        if f.name in ("learning_rate", "device"):
            kind = float if f.name == "learning_rate" else str
        if f.name == "method":
            kind = click.Choice(["sft", "dpo"])
        shown = "" if f.default is None else f" [default: {f.default}]"
        fn = click.option(flag, f.name, type=kind, default=None,
                          help=helps.get(f.name, f.name.replace("_", " ")) + shown)(fn)
    return fn


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--model", "-m", default="smollm2-135m", show_default=True,
              help="Base model: an embedded name or a local transformers folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="MODEL_DIR to write.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of hyper-parameters (flags override it).")
@_train_options
@click.option("--merge", is_flag=True, help="Also write base + adapter as one model (MODEL_DIR/merged).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing MODEL_DIR.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def finetune(run_dir: str, model: str, output: str, config_file: str | None, merge: bool,
             resume: bool, overwrite: bool, quiet: bool, **hparams: Any) -> None:
    """Fine-tune MODEL on the selected rows of RUN_DIR (TRL SFT or DPO, LoRA by default).

    Ctrl-C finishes the current step, saves a checkpoint and stops; --resume continues.
    """
    from curate.finetune import finetune as train

    out = train(run_dir, output, model=model, config=_train_config(config_file, hparams),
                merge=merge, resume=resume, overwrite=overwrite, quiet=quiet)
    click.echo(str(out))


def _train_config(config_file: str | None, hparams: dict[str, Any]):
    """TrainConfig from a JSON file of hyper-parameters, overridden by the flags given."""
    from curate.finetune import TrainConfig

    options: dict[str, Any] = {}
    if config_file:
        try:
            options = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as err:
            raise CurateError(f"--config {config_file}: not a readable JSON object ({err})") from err
        if not isinstance(options, dict):
            raise CurateError(f"--config {config_file}: expected a JSON object of hyper-parameters")
    options.update({k: v for k, v in hparams.items() if v is not None})
    if isinstance(options.get("target_modules"), str) and "," in options["target_modules"]:
        options["target_modules"] = [m.strip() for m in options["target_modules"].split(",")]
    return TrainConfig.from_options(options)


@cli.command(name="eval")
@click.argument("model")
@click.option("--data", "-d", required=True, type=click.Path(),
              help="Evaluation rows with reference answers (any layout curate reads).")
@click.option("--output", "-o", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--max-length", type=click.IntRange(8), default=None,
              help="Tokens per row (longer rows are cut and flagged) [default: the model's context].")
@KIND
@ADAPTER
@run_options
def eval_(model: str, data: str, output: str, max_length: int | None, kind: str | None,
          adapter: str | None, **kw: Any) -> None:
    """Loss and perplexity of DATA's reference answers under MODEL (a model name, a local
    folder or a `curate finetune` output); reward accuracy for preference rows."""
    from curate.evaluate import evaluate, format_summary

    columns = _columns(kw)
    opts = _exec_options(kw)
    summary = evaluate(model, data, output, kind=kind, adapter=adapter, columns=columns,
                       max_length=max_length, **opts)
    if not opts["quiet"]:
        click.echo(f"eval {model}: {format_summary(summary)}", err=True)
    click.echo(output)


@cli.command()
@click.option("--pool", required=True, type=click.Path(), help="Rows to select from (any layout curate reads).")
@click.option("--eval", "eval_data", required=True, type=click.Path(),
              help="Evaluation rows with reference answers, never drawn from the pool.")
@click.option("--target", type=click.Path(), default=None,
              help="Example rows of the target task (for target_similarity and dsir).")
@click.option("--sae", "sae_dir", type=click.Path(), default=None,
              help="SAE folder for the sae_target strategy (see `curate sae train`).")
@click.option("--budget", default="100", show_default=True,
              help="Rows every strategy selects (or a token budget such as '50000tokens').")
@click.option("--strategies", default="random,deita", show_default=True,
              help="Comma-separated: random, deita, ifd, target_similarity, dsir, or pipeline "
                   "files (.py); random and the base model are always included.")
@click.option("--seeds", type=click.IntRange(1), default=1, show_default=True,
              help="Seeds per strategy (selection and training).")
@click.option("--model", "-m", default="smollm2-135m", show_default=True,
              help="Model to fine-tune: an embedded name or a local transformers folder.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Experiment folder (EXP).")
@click.option("--eval-max-length", type=click.IntRange(8), default=None,
              help="Tokens per evaluation row [default: the model's context].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of hyper-parameters (flags override it).")
@_train_options
@KIND
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Score cache [default: $CURATE_HOME/scores].")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def experiment(pool: str, eval_data: str, target: str | None, budget: str, strategies: str,
               seeds: int, model: str, output: str, eval_max_length: int | None,
               config_file: str | None, kind: str | None, cache_dir: str | None, quiet: bool,
               **hparams: Any) -> None:
    """Compare selection strategies at equal budget: select, fine-tune and evaluate each
    (strategy, seed); report each strategy's eval loss against random with a 95% interval.

    A killed experiment continues where it stopped when rerun; adding a strategy trains
    only that one. Writes EXP/results.parquet, summary.md, summary.parquet, plot.png and
    plot.html.
    """
    from curate.experiment import Experiment, run_experiment
    from curate.selection import parse_budget

    parse_budget(budget)  # a clear error for a bad budget before any work
    sae_dir = hparams.pop("sae_dir")
    exp = Experiment(pool=pool, eval=eval_data, output=output, target=target, sae=sae_dir,
                     budget=int(budget) if budget.strip().isdigit() else budget,
                     strategies=strategies.split(","), seeds=seeds, model=model,
                     config=_train_config(config_file, hparams), kind=kind,
                     eval_max_length=eval_max_length, cache_dir=cache_dir, quiet=quiet)
    result = run_experiment(exp)
    click.echo(result["output"])


@cli.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--to", "to", required=True,
              type=click.Choice(["trl", "llamafactory", "axolotl", "jsonl", "parquet"]),
              help="Trainer layout (trl, llamafactory, axolotl) or canonical rows (jsonl, parquet).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder to write (written under a temporary name, then renamed).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default=None,
              help="Data file format [default: parquet for trl, jsonl for llamafactory/axolotl].")
@click.option("--layout", type=click.Choice(["messages", "prompt_completion", "sharegpt", "alpaca"]),
              default=None,
              help="trl: messages or prompt_completion (SFT runs); llamafactory: sharegpt or alpaca "
                   "[default: messages (prompt_completion for KTO labels); sharegpt].")
@click.option("--name", default=None, help="Dataset name (LLaMA-Factory's dataset:, file names) "
                                           "[default: the run folder's name].")
@click.option("--overwrite", is_flag=True, help="Replace an output folder holding an earlier export.")
@click.option("--quiet", "-q", is_flag=True, help="No messages on stderr; print only the folder.")
def export_cmd(run_dir: str, to: str, output: str, fmt: str | None, layout: str | None,
               name: str | None, overwrite: bool, quiet: bool) -> None:
    """Export RUN's selected rows in the layout a trainer reads unchanged.

    \b
    trl           train.parquet: messages (or prompt/completion), prompt/chosen/rejected
    llamafactory  NAME.jsonl + dataset_info.json (dataset_dir: OUTPUT, dataset: NAME)
    axolotl       NAME.jsonl + axolotl.yaml (the datasets: entry, rl: dpo for pairs)
    jsonl/parquet the canonical rows, every column
    Rows a layout cannot hold are left out and named in OUTPUT/curate_export.json.
    """
    from curate.export import describe, export

    result = export(run_dir, to, output, format=fmt, layout=layout, name=name, overwrite=overwrite)
    if not quiet:
        for line in describe(result):
            click.echo(line, err=True)
    click.echo(result["output"])


from curate.sae_cli import sae_group  # noqa: E402  (the `curate sae` commands)

cli.add_command(sae_group)


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2."""
    try:
        cli(standalone_mode=False)
    except CurateError as err:
        if _debug():
            traceback.print_exc()
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as err:  # a missing or bad option: one line, with where to look
        command = err.ctx.command_path if err.ctx else "curate"
        click.echo(f"error: {command}: {err.format_message()} (see {command} --help)", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    _leave()


def _leave() -> None:
    """Exit 0 after the atexit handlers (Ray's shutdown, multiprocessing's clean-up) and
    a flush of stdout and stderr, without the interpreter's teardown of every module and
    object: that took 0.2 s after a 50,000-row dedup, and every file is closed by now."""
    freeze_gc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (curate ... | head): nothing more to say there
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
