"""The analysis report of a run: ``RUN/report.html``, one self-contained page.

This module lays out the page; the figures and the run data they draw come from
``curate.figures``, the filter bounds drawn on them from ``curate.bounds``.

``curate report RUN`` (or :func:`write_report`) reads the run directory and
writes a page that needs no network to view: plotly.js is inlined once, every
figure is a plotly figure, every text from the data is HTML-escaped. Sections:

- header: run path, pipeline, parameters, input, counts, steps;
- funnel: rows left after ingest and after every filter / dedup / select step;
- score histograms over all scored rows, with the thresholds that the
  pipeline's filters put on them (parsed from simple SQL predicates such as
  ``quality_ngram_repetition <= 0.3``, ``0.1 < x AND x < 5``, ``not flag``);
- selected vs rejected distribution of every score;
- a 2-D PCA map of the ``embedding`` column, coloured by outcome and by cluster
  (dedup clusters when the run has them, else k-means);
- the most common rejection reasons with example rows;
- token counts of the selected set (``text_stats_tokens``).

Large runs are sampled for plotting (histograms are binned in Python over up to
``MAX_HIST_ROWS`` rows; the map shows at most ``MAX_POINTS`` points) and the page
says so.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.bounds import Threshold, _num, parse_thresholds, pipeline_thresholds  # noqa: F401
from curate.errors import CurateError
from curate.figures import (EXAMPLES_PER_REASON, MAX_HIST_ROWS, MAX_POINTS, PLOT_CONFIG, SEED,
                            TOP_REASONS, RunData, _scorer_default, _short, _template, _texts_for,
                            _values, embedding_map, funnel, load, score_histogram,
                            selected_vs_rejected, token_histogram)
from curate.run import Run, _temp_beside, open_run


# --- page ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header .path{font-family:monospace;opacity:.85}
nav{padding:8px 28px;background:#e8edf3;position:sticky;top:0;z-index:10}
nav a{margin-right:16px;color:#1f3a5f;text-decoration:none;font-size:14px}
main{padding:8px 28px 40px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.fig{border:1px solid #eee;border-radius:4px;padding:4px}
.note{color:#666;font-size:13px;margin:4px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{font-weight:600;white-space:nowrap}
.ex{font-size:12px;max-width:720px} .ex .id{font-family:monospace;color:#555}
.ex .p{color:#555} pre{font-size:12px;background:#f6f6f6;padding:8px;overflow-x:auto}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#f0f3f7;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}
"""


class Page:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, fig, note: str = "") -> str:
        """HTML of one figure (plotly.js is loaded once in the page head)."""
        self.n_figures += 1
        import plotly.io as pio

        spec = fig.to_dict()
        spec["layout"]["template"] = _template()
        div = pio.to_html(spec, full_html=False, include_plotlyjs=False, config=PLOT_CONFIG,
                          div_id=f"fig-{name}", default_width="100%", validate=False,
                          default_height=f"{fig.layout.height or 320}px")
        extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
        return f'<div class="fig" data-figure="{html.escape(name)}">{div}{extra}</div>'


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _header(data: RunData) -> str:
    m = data.manifest
    pipe, inp, counts = m.get("pipeline", {}), m.get("input", {}), m.get("counts", {})
    n_in = counts.get("input") or 0
    cards = [("input rows", counts.get("input")), ("selected", counts.get("selected")),
             ("rejected", counts.get("rejected")), ("bad rows at ingest", counts.get("ingest_rejected"))]
    cards_html = "".join(f'<div class="card">{html.escape(k)}<b>{_num(v) if v is not None else "–"}</b>'
                         + (f'<span class="note">{100 * v / n_in:.1f}% of input</span>'
                            if v is not None and n_in and k != "input rows" else "") + "</div>"
                         for k, v in cards)
    files = inp.get("files") or []
    info = [("status", m.get("status")), ("pipeline", pipe.get("name")),
            ("input", inp.get("path")), ("kind", inp.get("kind")),
            ("input files", ", ".join(files[:10]) + (f" … ({len(files)} files)" if len(files) > 10
                                                      else "")),
            ("input fingerprint", inp.get("fingerprint")), ("started", m.get("started")),
            ("finished", m.get("finished")),
            ("total time", f"{m.get('timings', {}).get('total_s', '–')} s"),
            ("curate version", m.get("curate_version"))]
    models = {k: v for k, v in (m.get("models") or {}).items() if v}
    if models:
        info.append(("models", ", ".join(f"{k}: {v}" for k, v in models.items())))
    params = pipe.get("params") or {}
    params_html = (_kv([(k, v) for k, v in params.items()]) if params
                   else '<p class="note">The pipeline has no parameters.</p>')
    steps = m.get("plan") or ""
    return (f'<section id="summary"><h2>Summary</h2><div class="cards">{cards_html}</div>'
            f'<div class="grid2"><div>{_kv(info)}</div><div><b>Parameters</b>{params_html}</div></div>'
            f"<details><summary>Pipeline steps</summary><pre>{html.escape(steps)}</pre></details></section>")


def _stage_table(manifest: dict[str, Any]) -> str:
    rows = []
    for st in manifest.get("stages", []):
        name = st.get("stage", "")
        if name.startswith("score:"):
            extra = f"{st.get('from_cache', 0):,} from cache, {st.get('computed', 0):,} computed"
            label = name[len("score:"):]
            name = "score"
        else:
            label = st.get("label", "") if name != "ingest" else ", ".join(
                f"{k}: {v}" for k, v in (st.get("rejected") or {}).items())
            extra = ""
        dropped = (st.get("in") or 0) - (st.get("out") or 0)
        secs = st.get("seconds")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(label))}</td>"
                    f'<td class="n">{_num(st.get("in", 0))}</td><td class="n">{_num(st.get("out", 0))}</td>'
                    f'<td class="n">{_num(dropped)}</td><td class="n">{"" if secs is None else secs}</td>'
                    f"<td>{html.escape(extra)}</td></tr>")
    return ('<table id="stage-table"><tr><th>stage</th><th>step</th><th>rows in</th><th>rows out</th>'
            f'<th>dropped</th><th>seconds</th><th></th></tr>{"".join(rows)}</table>')


def _reasons(data: RunData) -> str:
    rej = data.rejected
    if not rej.height:
        return '<p class="note">No row was rejected.</p>'
    # reasons are stable (the row's own value is in detail); runs written by older
    # versions carry the value in the reason ("threshold: x = 0.12 < min 0.5"): those
    # are grouped by their pattern and each example shows its exact reason
    rej = rej.with_columns(exact=pl.col("reason"),
                           reason=pl.col("reason").str.replace_all(r"(\s)= -?[0-9][0-9.eE+-]*", "${1}= …"))
    k = EXAMPLES_PER_REASON
    top = (rej.group_by("stage", "reason").agg(rows=pl.len(), ids=pl.col("id").head(k),
                                                details=pl.col("detail").head(k),
                                                reps=pl.col("representative").head(k),
                                                exact=pl.col("exact").head(k))
           .sort(["rows", "stage", "reason"], descending=[True, False, False], nulls_last=True))
    n_reasons = top.height
    top = top.head(TOP_REASONS)
    want = [i for ids in top["ids"] for i in ids] + [r for reps in top["reps"] for r in reps if r]
    texts = _texts_for(data.run, data.kind, want)
    n_in = data.manifest.get("counts", {}).get("input") or rej.height
    # the scores a filter looked at, shown next to its examples
    filter_cols: dict[str, list[str]] = {}
    for t in pipeline_thresholds(data.manifest):
        if t.column in data.score_columns and t.column not in filter_cols.get(t.step, []):
            filter_cols.setdefault(t.step, []).append(t.column)
    shown = sorted({c for cols in filter_cols.values() for c in cols})
    values = {r["id"]: r for r in data.scores.filter(pl.col("id").is_in(want)).select(
        "id", *shown).iter_rows(named=True)} if shown else {}
    what = {"preference": "chosen", "text": "text"}.get(data.kind, "answer")
    body = []
    for row in top.iter_rows(named=True):
        examples = []
        for i, det, rep, exact in zip(row["ids"], row["details"], row["reps"], row["exact"]):
            prompt, answer = texts.get(i, ("", ""))
            bits = [f'<div><span class="id">{html.escape(i)}</span>']
            if exact != row["reason"]:
                bits.append(f' <span class="p">({html.escape(exact or "")})</span>')
            if prompt:
                bits.append(f' <span class="p">prompt: {html.escape(_short(prompt, 160))}</span>')
            bits.append("</div>")
            if answer or i in texts:
                bits.append(f"<div>{what}: {html.escape(_short(answer, 320, tail=80))}</div>")
            if det:
                bits.append(f'<div class="p">detail: {html.escape(_short(det, 200))}</div>')
            cols = filter_cols.get(row["reason"], []) if row["stage"] == "filter" else []
            if cols and i in values:
                vals = ", ".join(f"{c} = {_num(values[i][c]) if values[i][c] is not None else 'null'}"
                                 for c in cols)
                bits.append(f'<div class="p">scores: {html.escape(vals)}</div>')
            if rep:
                kept = texts.get(rep, ("", ""))[1]
                bits.append(f'<div class="p">kept twin <span class="id">{html.escape(rep)}</span>: '
                            f"{html.escape(_short(kept, 160))}</div>")
            examples.append("".join(bits))
        body.append(f"<tr><td>{html.escape(row['stage'] or '')}</td>"
                    f"<td>{html.escape(row['reason'] or '')}</td>"
                    f'<td class="n">{row["rows"]:,}</td><td class="n">{100 * row["rows"] / n_in:.1f}%</td>'
                    f'<td class="ex">{"<hr>".join(examples)}</td></tr>')
    more = (f'<p class="note">The {TOP_REASONS} most common of {n_reasons} reasons.</p>'
            if n_reasons > TOP_REASONS else "")
    return ('<table id="reasons-table"><thead><tr><th>stage</th><th>reason</th><th>rows</th>'
            f'<th>of input</th><th>examples</th></tr></thead><tbody>{"".join(body)}</tbody></table>{more}')


def _tokens(data: RunData, page: Page) -> str:
    df = data.scores.filter(pl.col("status") == "selected")
    col, note = None, ""
    for cand in ("text_stats_tokens", "text_stats_words"):
        if cand in data.score_columns and df[cand].drop_nulls().len():
            col = cand
            break
    if col is None:
        return ('<p class="note">No token counts: add the <code>text_stats</code> scorer (with a '
                "tokenizer) to the pipeline to see the token counts of the selected set.</p>")
    if col == "text_stats_words":
        note = ("text_stats ran without a tokenizer, so there are no token counts: these are word "
                "counts (whitespace-separated) of the selected rows.")
    tok_cfg = next((s.get("config", {}) for s in data.manifest.get("pipeline", {}).get("steps", [])
                    if s.get("step") == "score" and s.get("scorer") == "text_stats"), {})
    tok_cfg = tok_cfg.get("tokenizer", _scorer_default("text_stats", "tokenizer"))
    v = _values(df, col)
    missing = df.height - len(v)
    stats = [("selected rows with a count", f"{len(v):,}"), (f"total {col}", f"{int(v.sum()):,}"),
             ("mean", f"{v.mean():,.1f}"), ("median", _num(float(np.median(v)))),
             ("95th percentile", _num(float(np.quantile(v, 0.95)))), ("max", _num(float(v.max())))]
    if missing:
        stats.append(("selected rows without a count", f"{missing:,}"))
    if col == "text_stats_tokens" and tok_cfg:
        stats.append(("tokenizer", tok_cfg))
    sampled = data.scored_rows > data.scores.height
    if sampled:
        stats.append(("sampled", (f"totals are over a sample of {data.scores.height:,} of "
                                  f"{data.scored_rows:,} scored rows")))
    fig, bin_note = token_histogram(df, col)
    return (f'<div id="token-total" data-column="{col}" data-total="{int(v.sum())}"></div>'
            + (f'<p class="note">{html.escape(note)}</p>' if note else "")
            + f'<div class="grid2">{page.figure("tokens", fig, bin_note)}<div>{_kv(stats)}</div></div>')


def _selection_marks(data: RunData) -> list[Threshold]:
    """Bounds select steps put on a score: a ``threshold`` strategy's min / max, and
    the cut a ``topk`` ended at (the last selected value)."""
    out: list[Threshold] = []
    for st in data.manifest.get("pipeline", {}).get("steps", []):
        opts = st.get("options") or {}
        by = opts.get("by")
        if st.get("step") != "select" or by not in data.score_columns or opts.get("expr"):
            continue
        if data.scores.schema[by] == pl.Boolean:
            continue
        if st.get("strategy") == "threshold":
            for key, op in (("min", ">="), ("max", "<=")):
                v = opts.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.append(Threshold(by, op, float(v), f"select threshold on {by}"))
        elif st.get("strategy") == "topk":
            sel = data.scores.filter(pl.col("status") == "selected")[by].drop_nulls()
            if sel.len():
                desc = opts.get("descending", True)
                cut = float(sel.min() if desc else sel.max())
                out.append(Threshold(by, ">=" if desc else "<=", cut, f"topk by {by}"))
    return out


def render(run: Run, *, max_points: int = MAX_POINTS, max_hist_rows: int = MAX_HIST_ROWS,
           seed: int = SEED) -> str:
    """The report page of ``run`` as one HTML string."""
    from plotly.offline import get_plotlyjs

    data = load(run, max_hist_rows=max_hist_rows, seed=seed)
    m = data.manifest
    page = Page()
    marks = pipeline_thresholds(m) + _selection_marks(data)

    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    sections.append(("summary", "Summary", _header(data)))

    f = funnel(m)
    sections.append(("funnel", "Funnel", (page.figure("funnel", f) if f else "") + _stage_table(m)))

    sampling = []
    if data.scored_rows > data.scores.height:
        sampling.append(f"Score plots use a seeded random sample of {data.scores.height:,} of "
                        f"{data.scored_rows:,} scored rows.")
    else:
        sampling.append(f"Score plots use all {data.scored_rows:,} scored rows "
                        "(rows dropped as bad input at ingest have no scores).")
    hist, svr = [], []
    for col in data.score_columns:
        col_marks = [t for t in marks if t.column == col]
        fig, note = score_histogram(data.scores, col, col_marks)
        if fig is None:
            hist.append(f'<p class="note">{html.escape(note)}</p>')
            continue
        hist.append(page.figure(f"hist-{_slug(col)}", fig, note))
        fig2 = selected_vs_rejected(data.scores, col)
        if fig2 is not None:
            svr.append(page.figure(f"svr-{_slug(col)}", fig2))
    unused = sorted({t.column for t in marks} - set(data.score_columns))
    score_note = ('<p class="note">Dashed red lines mark the bounds the pipeline\'s filters put on a '
                  "score; the shaded side is dropped.</p>")
    if unused:
        score_note += (f'<p class="note">Filters on columns without a plotted score: '
                       f'{html.escape(", ".join(unused))}.</p>')
    if not data.score_columns:
        hist = ['<p class="note">The run has no numeric or boolean scores.</p>']
    sections.append(("scores", "Score distributions",
                     (f'<p class="note">{html.escape(sampling[0])}</p>{score_note}'
                      f'<div class="grid">{"".join(hist)}</div>')))
    n_sel = data.scores.filter(pl.col("status") == "selected").height
    svr_html = (f'<p class="note">Each group as a share of its own rows: {n_sel:,} selected, '
                f"{data.scores.height - n_sel:,} rejected (after ingest).</p>"
                f'<div class="grid">{"".join(svr)}</div>' if svr
                else '<p class="note">No score to compare.</p>')
    sections.append(("selected-vs-rejected", "Selected vs rejected", svr_html))

    if data.has_embedding:
        res = embedding_map(data, max_points=max_points, seed=seed)
        body = f'<p class="note">{html.escape(res.note)}</p>'
        if res.figures:
            body += '<div class="grid2">' + "".join(page.figure(n, fg) for n, fg in res.figures) + "</div>"
    else:
        body = ('<p class="note" id="no-embedding">The run has no embeddings; add the '
                "<code>embedding</code> scorer to see a map of the data.</p>")
    sections.append(("embedding-map", "Embedding map", body))
    from curate.sae_select import run_coverage_html  # SAE feature coverage, when scored

    if sae_html := run_coverage_html(run, data.rejected["id"]):
        sections.append(("sae-coverage", "SAE feature coverage", sae_html))
    sections.append(("rejections", "Rejection reasons", _reasons(data)))
    sections.append(("tokens", "Selected set: token counts", _tokens(data, page)))

    name = str(m.get("pipeline", {}).get("name", "run"))
    title = f"curate report: {name} ({run.path})"
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{h}</section>'
                   if sid != "summary" else h for sid, t, h in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body><header><h1>curate report: {html.escape(name)}</h1>"
            f'<div class="path">{html.escape(str(run.path.resolve()))}</div></header>'
            f'<nav>{nav}</nav><main data-figures="{page.n_figures}">{body}</main></body></html>\n')


def write_report(run_dir: str | Path, output: str | Path | None = None, *,
                 max_points: int = MAX_POINTS, max_hist_rows: int = MAX_HIST_ROWS,
                 seed: int = SEED) -> Path:
    """Write the report of a complete run to ``output`` (default ``RUN/report.html``)
    atomically and return its path."""
    run = open_run(run_dir)
    out = Path(output) if output else run.path / "report.html"
    if out.exists() and out.is_dir():
        raise CurateError(f"report output {out} is a directory; give a file name")
    if max_points < 3 or max_hist_rows < 1:
        raise CurateError(f"max_points must be at least 3 and max_hist_rows at least 1, "
                          f"got {max_points} and {max_hist_rows}")
    page = render(run, max_points=max_points, max_hist_rows=max_hist_rows, seed=seed)
    fd, tmp = _temp_beside(out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
