"""``curate experiment``: does a selection beat random at the same budget?

For every strategy (a selection recipe) and seed: select ``budget`` rows from the
same pool, fine-tune the same model on them with the same hyper-parameters, and
score the same evaluation rows under the tuned model. The base model (no
fine-tuning) and ``random`` are always included. Scores of the pool are computed
once and shared through the score cache, so each strategy only pays for its
selection and its training.

Each (strategy, seed) is a *cell*, cached under ``EXP/cells/`` by its selected ids,
hyper-parameters, model and evaluation file: a killed experiment continues where it
stopped, and adding a strategy trains only that strategy.

Outputs in ``EXP/``:

- ``results.parquet``: one row per strategy x seed x evaluation row (``strategy``,
  ``seed``, ``eval_id``, ``loss``: the mean per-token loss of the row's reference
  answer, ``tokens``); the base model is the strategy ``base``;
- ``summary.parquet`` and ``summary.md``: per strategy the mean loss over evaluation
  rows (mean and spread over seeds) and its difference to ``random`` with a 95%
  interval from a paired bootstrap over evaluation rows and seeds;
- ``plot.png`` and ``plot.html``: the same with error bars;
- ``experiment.json``: the options, the cells and their timings.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.evaluate import evaluate
from curate.finetune import TrainConfig, finetune
from curate.hashing import hash_json
from curate.models import DEFAULT_LM, resolve
from curate.pipeline import Pipeline, load_pipeline_file, read
from curate.progress import Log
from curate.adapters import detect
from curate.readers import existing_path, list_files, path_fingerprint, read_chunks
from curate.run import open_run, write_json, write_table

BASE, RANDOM = "base", "random"
OUTPUTS = ("results.parquet", "summary.parquet", "summary.md", "plot.png", "plot.html")
NEEDS_TARGET = ("target_similarity", "dsir", "sae_target")
NEEDS_SAE = ("sae_target",)


def _random(p: Pipeline, budget: Any, seed: int, target: str | None, model: str) -> Pipeline:
    return p.select("random", budget=budget, seed=seed)


def _deita(p: Pipeline, budget: Any, seed: int, target: str | None, model: str) -> Pipeline:
    # the default pipeline's ranking: longest answers first, diverse by embedding
    return (p.score("text_stats", tokenizer=model).score("embedding")
            .select("deita", by="text_stats_response_words", budget=budget, seed=seed))


def _ifd(p: Pipeline, budget: Any, seed: int, target: str | None, model: str) -> Pipeline:
    return (p.score("perplexity", model=model)
            .select("topk", by="ifd", descending=False, budget=budget, seed=seed))


def _target_similarity(p: Pipeline, budget: Any, seed: int, target: str | None,
                       model: str) -> Pipeline:
    return (p.score("target_similarity", target=target)
            .select("topk", by="target_similarity", budget=budget, seed=seed))


def _dsir(p: Pipeline, budget: Any, seed: int, target: str | None, model: str) -> Pipeline:
    return (p.score("dsir", target=target)
            .select("importance", weight="dsir_weight", budget=budget, seed=seed))


def _sae_target(p: Pipeline, budget: Any, seed: int, target: str | None, model: str, *,
                sae: str) -> Pipeline:
    return (p.score("sae", sae=sae, target=target, model=model)
            .select("sae_target", budget=budget, seed=seed))


Recipe = Callable[..., Pipeline]
RECIPES: dict[str, tuple[Recipe, str]] = {
    "random": (_random, "uniform random rows (the baseline)"),
    "deita": (_deita, "longest answers first, skipping rows within cosine 0.9 of a kept one"),
    "ifd": (_ifd, "lowest IFD under the model (the prompt helps the answer most)"),
    "target_similarity": (_target_similarity,
                          "highest mean top-5 cosine similarity to the --target rows"),
    "dsir": (_dsir, "DSIR importance resampling toward the --target rows"),
    "sae_target": (_sae_target, "highest SAE-feature similarity (generalised Jaccard) to the "
                                "--target rows, with the --sae SAE"),
}


def recipe(name: str, pool: str, *, budget: Any, seed: int, target: str | None,
           model: str, kind: str | None = None, sae: str | None = None) -> Pipeline:
    """The selection pipeline of strategy ``name`` (a built-in name or a pipeline file
    whose parameters include ``budget``; ``seed`` and ``model`` are set when it has them;
    ``sae`` is the SAE folder ``sae_target`` reads)."""
    if name in RECIPES:
        if name in NEEDS_TARGET and not target:
            raise CurateError(f"strategy {name!r} needs --target (example rows of the target task)")
        extra = {}
        if name in NEEDS_SAE:
            if not sae:
                raise CurateError(f"strategy {name!r} needs --sae SAE_DIR (train one with "
                                  "`curate sae train`)")
            extra["sae"] = sae
        return RECIPES[name][0](read(pool, kind=kind), budget, seed, target, model, **extra)
    if name.endswith(".py"):
        template = load_pipeline_file(name)
        if "budget" not in template.params:
            raise CurateError(f"pipeline {name} has no `budget` parameter, so it cannot be "
                              "compared at equal budget")
        params = {"budget": budget, **({"seed": seed} if "seed" in template.params else {}),
                  **({"model": model} if "model" in template.params else {})}
        return template.bind(**params).with_input(pool, kind=kind)
    raise CurateError(f"unknown strategy {name!r}: use one of {', '.join(RECIPES)} "
                      "or a pipeline file (.py)")


def cell_name(strategy: str) -> str:
    """A strategy's folder name (a pipeline file's stem)."""
    return Path(strategy).stem if strategy.endswith(".py") else strategy


@dataclass
class Experiment:
    """Options of one experiment (see the module doc)."""

    pool: str
    eval: str
    output: str
    target: str | None = None
    sae: str | None = None  # the SAE folder of the sae_target strategy
    budget: Any = 100
    strategies: list[str] = field(default_factory=lambda: ["random", "deita"])
    seeds: int = 1
    model: str = DEFAULT_LM
    config: TrainConfig = field(default_factory=TrainConfig)
    kind: str | None = None
    eval_max_length: int | None = None
    bootstrap: int = 2000
    cache_dir: str | None = None
    quiet: bool = False
    on_cell: Callable[[str, int], None] | None = None  # called after each finished cell

    def check(self) -> None:
        self.pool = existing_path(self.pool, "pool")
        self.eval = existing_path(self.eval, "eval file")
        if self.target:
            self.target = existing_path(self.target, "target set")
        if self.seeds < 1:
            raise CurateError(f"--seeds must be at least 1, got {self.seeds}")
        strategies = [s.strip() for s in self.strategies if s.strip() and s.strip() != BASE]
        if RANDOM not in strategies:
            strategies.insert(0, RANDOM)
        seen = set()
        for s in strategies:
            if cell_name(s) in seen:
                raise CurateError(f"strategy {s!r} is given twice")
            seen.add(cell_name(s))
        self.strategies = strategies
        for s in strategies:  # names, files and targets, before any work
            recipe(s, self.pool, budget=self.budget, seed=0, target=self.target, model=self.model,
                   kind=self.kind, sae=self.sae)
        resolve(self.model)
        self.config.check()
        _check_eval_layout(self.eval, self.kind)


def _check_eval_layout(path: str, kind: str | None) -> None:
    """Refuse, before any model work, an eval file whose first rows carry no answers."""
    for file in list_files(path)[:1]:
        for chunk in read_chunks(file, 1000):
            if chunk.rows and (kind == "text" or detect(chunk.rows, str(file)).kind == "text"):
                raise CurateError(f"{file}: evaluation needs reference answers (sft or "
                                  "preference rows), not plain text")
            return


def run_experiment(exp: Experiment) -> dict[str, Any]:
    """Run (or continue) ``exp``; returns the summary rows (also in ``EXP/summary.md``)."""
    exp.check()
    log = Log(exp.quiet)
    out = Path(exp.output)
    marker = out / "experiment.json"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise CurateError(f"output {out} is not empty and holds no curate experiment; "
                          "choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    fixed = {"model": resolve(exp.model).fingerprint, "eval": path_fingerprint(exp.eval),
             "eval_max_length": exp.eval_max_length}
    info: dict[str, Any] = {
        "status": "running", "pool": exp.pool, "eval": exp.eval, "target": exp.target,
        "budget": exp.budget, "strategies": exp.strategies, "seeds": exp.seeds,
        "model": exp.model, "config": dataclasses.asdict(exp.config), "cells": {}}
    write_json(info, marker)
    t0 = time.monotonic()
    n_cells = 1 + len(exp.strategies) * exp.seeds
    done = 0

    def record(name: str, seed: int, cell: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        info["cells"][f"{name}-s{seed}"] = {k: cell[k] for k in ("key", "seconds", "reused",
                                                                 "rows", "mean_loss")}
        write_json(info, marker)
        verb = "reused" if cell["reused"] else f"done in {cell['seconds']:.0f} s"
        log.info(f"experiment: [{done}/{n_cells}] {name} seed {seed}: mean eval loss "
                 f"{cell['mean_loss']:.4f} ({verb})")
        if exp.on_cell:
            exp.on_cell(name, seed)

    def select(strategy: str, seed: int):
        sel = out / "selections" / f"{cell_name(strategy)}-s{seed}"
        log.info(f"experiment: selecting {exp.budget} rows with {strategy} (seed {seed})")
        run = recipe(strategy, exp.pool, budget=exp.budget, seed=seed, target=exp.target,
                     model=exp.model, kind=exp.kind, sae=exp.sae).write(
            sel, overwrite=True, quiet=exp.quiet, cache_dir=exp.cache_dir)
        ids = sorted(run.table("selected", columns=["id"])["id"].to_pylist())
        _check_budget(exp, strategy, run, len(ids), log)
        return run, ids

    for name in OUTPUTS:  # nothing from an earlier run may pass for this one's result
        (out / name).unlink(missing_ok=True)
    try:
        first = select(RANDOM, 0)  # the budget is checked against the pool before any model work
        base = _cell(out, BASE, 0, hash_json([BASE, fixed]), exp, log, train_from=None)
        _warn_overlap(first[0], out / "cells" / f"{BASE}-s0" / "eval", log, info)
        record(BASE, 0, base)
        for seed in range(exp.seeds):
            for strategy in exp.strategies:
                run, ids = first if (strategy, seed) == (RANDOM, 0) else select(strategy, seed)
                cfg = dataclasses.replace(exp.config, seed=seed)
                key = hash_json([ids, dataclasses.asdict(cfg), fixed])
                record(cell_name(strategy), seed,
                       _cell(out, cell_name(strategy), seed, key, exp, log,
                             train_from=(run.path, cfg)))
    except BaseException as err:
        info.update(status="failed", error=f"{type(err).__name__}: {err}")
        write_json(info, marker)
        raise
    results = _results(out, [BASE] + [cell_name(s) for s in exp.strategies], exp.seeds)
    write_table(results.to_arrow(), out / "results.parquet")
    summary = summarize(results, n_boot=exp.bootstrap)
    write_table(summary.to_arrow(), out / "summary.parquet")
    text = summary_markdown(summary, exp)
    (out / "summary.md").write_text(text, encoding="utf-8")
    plot(summary, out)
    info.update(status="complete", seconds=round(time.monotonic() - t0, 1))
    write_json(info, marker)
    log.info(text)
    return {"summary": summary.to_dicts(), "output": str(out)}


def _check_budget(exp: Experiment, strategy: str, run, n: int, log: Log) -> None:
    if not isinstance(exp.budget, int):
        return
    if n == 0:
        raise CurateError(f"strategy {strategy!r} selected no rows from {exp.pool}")
    if n < exp.budget:
        usable = open_run(run.path).manifest()["counts"]["input"]
        if strategy == RANDOM:
            raise CurateError(f"--budget {exp.budget} is larger than the pool ({n} usable rows "
                              f"of {usable}); choose a budget below {n}")
        log.info(f"experiment: warning: {strategy} selected {n} rows, fewer than the budget "
                 f"{exp.budget}; it is compared at a smaller budget")


def _warn_overlap(run, eval_run: Path, log: Log, info: dict[str, Any]) -> None:
    """Warn when evaluation prompts also appear in the pool (the result is then optimistic)."""
    pool = run.table("data", columns=["prompt_id"])["prompt_id"].to_pylist()
    evals = open_run(eval_run).table("data", columns=["prompt_id"])["prompt_id"].to_pylist()
    shared = set(pool) & set(evals) - {None}
    n = sum(1 for p in evals if p in shared)
    info["eval_rows_in_pool"] = n
    if n:
        log.info(f"experiment: warning: {n} of {len(evals)} evaluation rows have a prompt that "
                 "is also in the pool; their losses favour strategies that select those rows")


def _cell(out: Path, name: str, seed: int, key: str, exp: Experiment, log: Log, *,
          train_from: tuple[Path, TrainConfig] | None) -> dict[str, Any]:
    """Train (unless base) and evaluate one cell, or reuse it when its key matches."""
    folder = out / "cells" / f"{name}-s{seed}"
    meta_path = folder / "cell.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and (folder / "losses.parquet").exists():
            return {**meta, "reused": True}
    t = time.monotonic()
    meta_path.unlink(missing_ok=True)
    model, rows = exp.model, 0
    if train_from is not None:
        run_dir, cfg = train_from
        log.info(f"experiment: fine-tuning {exp.model} on {name} seed {seed}")
        model = str(finetune(run_dir, folder / "model", model=exp.model, config=cfg,
                             overwrite=True, quiet=exp.quiet))
        rows = open_run(run_dir).table("selected", columns=["id"]).num_rows
    summary = evaluate(model, exp.eval, folder / "eval", kind=exp.kind,
                       max_length=exp.eval_max_length, overwrite=True, quiet=exp.quiet,
                       cache_dir=False)
    scores = pl.from_arrow(open_run(folder / "eval").table("scores"))
    prefix = "chosen_" if summary["kind"] == "preference" else ""
    losses = scores.select(pl.col("id").alias("eval_id"),
                           (-pl.col(f"{prefix}logprob_conditional")).alias("loss"),
                           pl.col(f"{prefix}response_tokens").alias("tokens"))
    write_table(losses.to_arrow(), folder / "losses.parquet")
    meta = {"key": key, "strategy": name, "seed": seed, "rows": rows,
            "mean_loss": float(losses["loss"].drop_nulls().mean()),
            "seconds": round(time.monotonic() - t, 1)}
    write_json(meta, meta_path)  # last: a cell without it is redone
    return {**meta, "reused": False}


def _results(out: Path, names: list[str], seeds: int) -> pl.DataFrame:
    frames = []
    for name in names:
        for seed in range(1 if name == BASE else seeds):
            f = pl.read_parquet(out / "cells" / f"{name}-s{seed}" / "losses.parquet")
            frames.append(f.select(pl.lit(name).alias("strategy"),
                                   pl.lit(seed, pl.Int64).alias("seed"), pl.all()))
    return pl.concat(frames)


# --- statistics ---------------------------------------------------------------------

def _loss_matrix(results: pl.DataFrame, strategy: str, eval_ids: list[str]) -> np.ndarray:
    """seeds x eval rows matrix of losses of ``strategy``."""
    sub = results.filter(pl.col("strategy") == strategy)
    wide = sub.pivot(on="eval_id", index="seed", values="loss").sort("seed")
    return wide.select(eval_ids).to_numpy().astype(np.float64)


def summarize(results: pl.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per strategy: mean loss over evaluation rows (mean, std, min, max over seeds) and
    the difference to random with a 95% paired-bootstrap interval (evaluation rows and
    seeds resampled together, the same draws for every strategy)."""
    complete = (results.group_by("eval_id").agg(pl.col("loss").is_not_null().all())
                .filter(pl.col("loss"))["eval_id"].sort().to_list())
    if not complete:
        raise CurateError("no evaluation row has a loss under every model")
    strategies = list(dict.fromkeys(results["strategy"].to_list()))
    mats = {s: _loss_matrix(results, s, complete) for s in strategies}
    rng = np.random.default_rng(seed)
    n_rows = len(complete)
    n_seeds = max(m.shape[0] for m in mats.values())
    row_draws = rng.integers(0, n_rows, size=(n_boot, n_rows))
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))

    def boot(m: np.ndarray) -> np.ndarray:
        # per draw: mean over the drawn seeds (paired by seed index) of the mean loss of the drawn rows
        per_seed = np.stack([m[min(k, m.shape[0] - 1)][row_draws].mean(axis=1)
                             for k in range(n_seeds)], axis=1)  # n_boot x n_seeds
        return np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)

    rand = boot(mats[RANDOM])
    rows = []
    for s in strategies:
        m = mats[s]
        per_seed = m.mean(axis=1)
        diff = boot(m) - rand
        lo, hi = np.percentile(diff, [2.5, 97.5])
        point = float(per_seed.mean() - mats[RANDOM].mean(axis=1).mean())
        rows.append({"strategy": s, "seeds": int(m.shape[0]), "eval_rows": n_rows,
                     "mean_loss": float(per_seed.mean()),
                     "std_loss": float(per_seed.std(ddof=1)) if m.shape[0] > 1 else 0.0,
                     "min_loss": float(per_seed.min()), "max_loss": float(per_seed.max()),
                     "diff_vs_random": 0.0 if s == RANDOM else point,
                     "ci_low": 0.0 if s == RANDOM else float(lo),
                     "ci_high": 0.0 if s == RANDOM else float(hi),
                     "p_better_than_random": None if s == RANDOM else float((diff < 0).mean())})
    return pl.DataFrame(rows)


def verdict(row: dict[str, Any]) -> str:
    if row["strategy"] == RANDOM:
        return "baseline"
    if row["ci_high"] < 0:
        return "better than random"
    if row["ci_low"] > 0:
        return "worse than random"
    return "not separable from random"


def summary_markdown(summary: pl.DataFrame, exp: Experiment) -> str:
    lines = [f"# Experiment: {len(exp.strategies)} strategies x {exp.seeds} seed(s), "
             f"budget {exp.budget}, model {exp.model}", "",
             f"Pool `{exp.pool}`; evaluation `{exp.eval}`"
             + (f"; target `{exp.target}`" if exp.target else "") + ". Loss: mean per-token loss "
             "of each evaluation row's reference answer, averaged over rows (lower is better); "
             "difference to random with a 95% paired-bootstrap interval over evaluation rows and seeds.",
             "", "| strategy | mean loss | spread over seeds | vs random | 95% interval | verdict |",
             "|---|---|---|---|---|---|"]
    for r in summary.to_dicts():
        spread = f"±{r['std_loss']:.4f} (n={r['seeds']})" if r["seeds"] > 1 else "1 seed"
        interval = "" if r["strategy"] == RANDOM else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        diff = "" if r["strategy"] == RANDOM else f"{r['diff_vs_random']:+.4f}"
        lines.append(f"| {r['strategy']} | {r['mean_loss']:.4f} | {spread} | {diff} | {interval} "
                     f"| {verdict(r)} |")
    return "\n".join(lines) + "\n"


def plot(summary: pl.DataFrame, out: Path) -> None:
    """``plot.png`` (matplotlib) and ``plot.html`` (plotly, self-contained): mean loss per
    strategy with its spread over seeds, and the difference to random with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.to_dicts()
    names = [r["strategy"] for r in rows]
    x = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(x, [r["mean_loss"] for r in rows], yerr=[r["std_loss"] for r in rows], capsize=4,
          color=["#999" if n in (BASE, RANDOM) else "#3b6ea8" for n in names])
    low = min(r["min_loss"] for r in rows)
    a.set_ylim(low - 0.1 * abs(low), None)
    a.set_xticks(x, names, rotation=20)
    a.set_ylabel("mean eval loss per token (lower is better)")
    a.set_title("eval loss (error bar: std over seeds)")
    d = [r for r in rows if r["strategy"] != RANDOM]
    b.errorbar([r["diff_vs_random"] for r in d], np.arange(len(d)), fmt="o", capsize=4,
               xerr=[[r["diff_vs_random"] - r["ci_low"] for r in d],
                     [r["ci_high"] - r["diff_vs_random"] for r in d]])
    b.axvline(0, color="#999", lw=1)
    b.set_yticks(np.arange(len(d)), [r["strategy"] for r in d])
    b.set_ylim(-0.6, len(d) - 0.4)
    b.set_xlabel("loss difference to random (95% paired bootstrap)")
    b.set_title("vs random (left of 0: better)")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=110)
    plt.close(fig)

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pf = make_subplots(rows=1, cols=2, subplot_titles=("eval loss (std over seeds)",
                                                       "difference to random (95% interval)"))
    pf.add_trace(go.Bar(x=names, y=[r["mean_loss"] for r in rows], name="mean loss",
                        error_y={"type": "data", "array": [r["std_loss"] for r in rows]}), 1, 1)
    pf.add_trace(go.Scatter(
        x=[r["diff_vs_random"] for r in d], y=[r["strategy"] for r in d], mode="markers",
        name="vs random", error_x={"type": "data", "symmetric": False,
                                   "array": [r["ci_high"] - r["diff_vs_random"] for r in d],
                                   "arrayminus": [r["diff_vs_random"] - r["ci_low"] for r in d]}),
        1, 2)
    pf.update_layout(height=420, showlegend=False)
    table = "".join(f"<tr><td>{html.escape(r['strategy'])}</td><td>{r['mean_loss']:.4f}</td>"
                    f"<td>{r['std_loss']:.4f}</td><td>{r['diff_vs_random']:+.4f}</td>"
                    f"<td>[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]</td>"
                    f"<td>{html.escape(verdict(r))}</td></tr>" for r in rows)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>curate experiment</title>"
            "<style>body{font-family:sans-serif;margin:24px}td,th{border:1px solid #ddd;"
            "padding:4px 8px}table{border-collapse:collapse}</style></head><body>"
            "<h1>curate experiment</h1><table><tr><th>strategy</th><th>mean loss</th>"
            "<th>std over seeds</th><th>vs random</th><th>95% interval</th><th>verdict</th></tr>"
            f"{table}</table>"
            + pf.to_html(full_html=False, include_plotlyjs=True) + "</body></html>")
    (out / "plot.html").write_text(page, encoding="utf-8")
