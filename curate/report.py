"""The analysis report of a run: ``RUN/report.html``, one self-contained page.

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
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.run import Run, _temp_beside, open_run

MAX_POINTS = 5000          # points on the embedding map
MAX_HIST_ROWS = 1_000_000  # rows binned for the histograms
HIST_BINS = 40
TOP_REASONS = 15
EXAMPLES_PER_REASON = 2
SEED = 0

COLORS = {"selected": "#1f77b4", "rejected": "#d62728", "filter": "#d62728", "dedup": "#ff7f0e",
          "select": "#7f7f7f", "decontaminate": "#9467bd", "threshold": "#d62728"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "modeBarButtonsToRemove": ["sendDataToCloud"]}


# --- thresholds from filter predicates ---------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """One bound a step puts on a score column: ``column op value``.

    ``value`` is a float for numeric bounds, a bool for boolean ones (``op`` is
    then ``=``: the filter keeps rows whose column equals ``value``).
    """

    column: str
    op: str
    value: float | bool
    step: str  # the step's label ("repeated n-grams", "topk by x", ...)

    @property
    def text(self) -> str:
        if isinstance(self.value, bool):
            return f"keeps {self.column} = {str(self.value).lower()}"
        return f"keeps {self.op} {_num(self.value)}"


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}
_OPS = {"==": "=", "<>": "!=", "=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COL = r"[A-Za-z_][A-Za-z0-9_]*|\"[^\"]+\"|`[^`]+`"
_OP = r"<=|>=|<>|!=|==|=|<|>"


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "\"`" else name


def _strip_parens(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


def _split_top(text: str, word: str) -> list[str]:
    """Split on ``word`` (AND / OR, any case) outside parentheses and quotes."""
    parts, depth, start, quote = [], 0, 0, None
    pattern = re.compile(rf"\s{word}\s", re.IGNORECASE)
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            m = pattern.match(text, i)
            if m:
                parts.append(text[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _polars_to_sql(text: str) -> str:
    """The repr of a simple polars expression, rewritten to the SQL this parser reads."""
    text = re.sub(r"^\[(.*)\]$", r"\1", text.strip())
    text = re.sub(r"\(dyn \w+: (" + _NUM + r")\)", r"\1", text)
    text = re.sub(r"dyn \w+: (" + _NUM + r")", r"\1", text)
    text = re.sub(r'col\("([^"]+)"\)\.not\(\)', r'not "\1"', text)
    text = re.sub(r'col\("([^"]+)"\)', r'"\1"', text)
    text = re.sub(r"\[|\]", "", text)
    prev = None
    while prev != text:  # drop the parentheses polars puts around single names and numbers
        prev = text
        text = re.sub(r'\(\s*("[^"]+"|' + _NUM + r')\s*\)', r"\1", text)
    return text.replace(" & ", " and ").replace(" | ", " or ")


def parse_thresholds(predicate: str, step: str = "") -> list[Threshold]:
    """The simple bounds of a filter predicate; parts it cannot read are skipped.

    Reads ``col <op> number``, ``number <op> col``, ``col BETWEEN a AND b``,
    ``not col`` / ``col`` / ``col = true`` for booleans, joined by AND. A
    predicate with a top-level OR gives no bounds (no single cut to draw).
    """
    if not isinstance(predicate, str) or not predicate.strip():
        return []
    text = predicate.strip()
    if text.startswith("[") or 'col("' in text:
        text = _polars_to_sql(text)
    text = re.sub(rf"({_COL})\s+between\s+({_NUM})\s+and\s+({_NUM})",
                  r"\1 >= \2 and \1 <= \3", _strip_parens(text), flags=re.IGNORECASE)
    if len(_split_top(text, "or")) > 1:
        return []
    out: list[Threshold] = []
    for part in _split_top(text, "and"):
        part = _strip_parens(part)
        if len(_split_top(part, "and")) > 1:
            out += parse_thresholds(part, step)
            continue
        if m := re.fullmatch(rf"({_COL})\s*({_OP})\s*({_NUM})", part):
            out.append(Threshold(_unquote(m[1]), _OPS[m[2]], float(m[3]), step))
        elif m := re.fullmatch(rf"({_NUM})\s*({_OP})\s*({_COL})", part):
            out.append(Threshold(_unquote(m[3]), _FLIP[_OPS[m[2]]], float(m[1]), step))
        elif m := re.fullmatch(rf"not\s+({_COL})", part, flags=re.IGNORECASE):
            out.append(Threshold(_unquote(m[1]), "=", False, step))
        elif m := re.fullmatch(rf"({_COL})\s*(?:=|==|\s+is\s+)\s*(true|false)", part, flags=re.IGNORECASE):
            out.append(Threshold(_unquote(m[1]), "=", m[2].lower() == "true", step))
        elif m := re.fullmatch(rf"({_COL})\s*(?:!=|<>|\s+is\s+not\s+)\s*(true|false)", part,
                               flags=re.IGNORECASE):
            out.append(Threshold(_unquote(m[1]), "=", m[2].lower() != "true", step))
        elif (m := re.fullmatch(rf"({_COL})", part)) and m[1].lower() not in ("true", "false", "null"):
            out.append(Threshold(_unquote(m[1]), "=", True, step))
    return out


def pipeline_thresholds(manifest: dict[str, Any]) -> list[Threshold]:
    """Bounds of every filter step of the run's pipeline."""
    out: list[Threshold] = []
    for step in manifest.get("pipeline", {}).get("steps", []):
        if step.get("step") == "filter":
            pred = step.get("predicate")
            out += parse_thresholds(pred, step.get("name") or str(pred))
    return out


# --- data --------------------------------------------------------------------------------

@dataclass
class RunData:
    run: Run
    manifest: dict[str, Any]
    kind: str
    scores: pl.DataFrame       # id, status, stage, numeric/bool score columns (maybe sampled)
    scored_rows: int           # rows in scores/ before sampling
    score_columns: list[str]
    rejected: pl.DataFrame     # id, stage, reason, detail, cluster, representative
    has_embedding: bool


def _is_plottable(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_decimal(t))


def load(run: Run, *, max_hist_rows: int = MAX_HIST_ROWS, seed: int = SEED) -> RunData:
    manifest = run.manifest() or {}
    kind = manifest.get("input", {}).get("kind") or manifest.get("pipeline", {}).get(
        "source", {}).get("kind") or "sft"
    schema = run.dataset("scores").schema
    cols = [f.name for f in schema if f.name != "id" and _is_plottable(f.type)]
    if "id" in schema.names:
        scores = pl.from_arrow(run.table("scores", columns=["id", *cols]))
    else:
        scores = pl.DataFrame(schema={"id": pl.String})
    assert isinstance(scores, pl.DataFrame)
    scores = scores.with_columns(pl.col("id").cast(pl.String),
                                 *[pl.col(c).cast(pl.Float64) for c in cols
                                   if scores.schema[c].is_decimal()])
    scored_rows = scores.height
    if scores.height > max_hist_rows:
        scores = scores.sample(max_hist_rows, seed=seed)
    rej_schema = run.dataset("rejected").schema
    if "id" in rej_schema.names:
        rejected = pl.from_arrow(run.table("rejected"))
    else:
        rejected = pl.DataFrame(schema={c: pl.String for c in
                                        ("id", "stage", "reason", "detail", "cluster", "representative")})
    assert isinstance(rejected, pl.DataFrame)
    rejected = rejected.with_columns(pl.col(c).cast(pl.String) for c in rejected.columns)
    # every row is in exactly one of selected and rejected: not rejected means selected
    scores = (scores.join(rejected.select("id", "stage"), on="id", how="left", maintain_order="left")
              .with_columns(status=pl.when(pl.col("stage").is_null()).then(pl.lit("selected"))
                            .otherwise(pl.lit("rejected"))))
    emb = schema.field("embedding").type if "embedding" in schema.names else None
    has_embedding = emb is not None and (pa.types.is_list(emb) or pa.types.is_large_list(emb)
                                         or pa.types.is_fixed_size_list(emb))
    return RunData(run, manifest, kind, scores, scored_rows, cols, rejected, has_embedding)


def _texts_for(run: Run, kind: str, ids: list[str]) -> dict[str, tuple[str, str]]:
    """(prompt, answer) of the given ids, read from RUN/data."""
    from curate.schema import CANONICAL, prompt_texts, response_texts

    if not ids:
        return {}
    ds = run.dataset("data")
    if "id" not in ds.schema.names or not set(CANONICAL.get(kind, {})) <= set(ds.schema.names):
        return {}
    all_ids = ds.to_table(columns=["id"])["id"]
    mask = pc.is_in(all_ids, value_set=pa.array(list(set(ids)), pa.string()))
    positions = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    if not len(positions):
        return {}
    table = ds.take(pa.array(positions), columns=["id", *CANONICAL[kind]])
    return dict(zip(table["id"].to_pylist(), zip(prompt_texts(table), response_texts(table))))


# --- figures -----------------------------------------------------------------------------

def _num(x: float) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def _short(text: str | None, limit: int, tail: int = 0) -> str:
    """Whitespace collapsed, cut to ``limit`` characters (keeping the last ``tail`` ones)."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    if tail:
        return text[:limit - tail - 3] + " … " + text[-tail:]
    return text[:limit - 1] + "…"


def _figure(*traces: Any):
    """A figure without plotly's default template (the page adds one template to every
    figure as plain JSON: validating a template per figure costs more than the plots)."""
    import plotly.graph_objects as go

    return go.Figure(list(traces), layout={"template": {}})


_TEMPLATE: dict[str, Any] = {}


def _template() -> dict[str, Any]:
    if not _TEMPLATE:
        import plotly.io as pio

        _TEMPLATE.update(pio.templates["plotly_white"].to_plotly_json())
    return _TEMPLATE


def _layout(fig, title: str, height: int = 320, **kw: Any):
    kw.setdefault("margin", {"l": 50, "r": 20, "t": 45, "b": 45})
    kw.setdefault("legend", {"orientation": "h", "yanchor": "top", "y": -0.18})
    fig.update_layout(title={"text": html.escape(title), "font": {"size": 14}}, height=height, **kw)
    return fig


@dataclass
class Bins:
    edges: np.ndarray
    overflow: int = 0    # values above the last edge, counted in the last bin
    underflow: int = 0
    integer: bool = False

    def counts(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(values, self.edges[0], self.edges[-1])
        return np.histogram(clipped, bins=self.edges)[0]

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)


def _bins(values: np.ndarray, integer: bool, marks: list[float]) -> Bins:
    lo, hi = float(values.min()), float(values.max())
    top, bottom = hi, lo
    if len(values) >= 200 and hi > lo:
        q_lo, q_hi = np.quantile(values, [0.005, 0.995])
        if hi - q_hi > 0.5 * (q_hi - lo):  # a long tail: it goes into the last bin
            top = float(q_hi)
        if q_lo - lo > 0.5 * (hi - q_lo):
            bottom = float(q_lo)
    for m in marks:
        top, bottom = max(top, m), min(bottom, m)
    if integer and top - bottom <= 60:
        edges = np.arange(math.floor(bottom) - 0.5, math.ceil(top) + 1.0, 1.0)
    elif top == bottom:
        edges = np.array([bottom - 0.5, bottom + 0.5])
    else:
        edges = np.linspace(bottom, top, HIST_BINS + 1)
        if integer:
            edges = np.unique(np.round(edges))
            if len(edges) < 2:
                edges = np.array([bottom, top])
    return Bins(edges, int((values > edges[-1]).sum()), int((values < edges[0]).sum()), integer)


def _is_bool(df: pl.DataFrame, col: str) -> bool:
    return df.schema[col] == pl.Boolean


def _is_int(df: pl.DataFrame, col: str) -> bool:
    return df.schema[col].is_integer()


def _values(df: pl.DataFrame, col: str) -> np.ndarray:
    s = df[col].drop_nulls()
    if s.dtype.is_float():
        s = s.filter(s.is_finite())
    return s.cast(pl.Float64).to_numpy()


def _bin_note(b: Bins) -> str:
    notes = []
    if b.overflow:
        notes.append(f"{b.overflow:,} values above {_num(b.edges[-1])} are in the last bin")
    if b.underflow:
        notes.append(f"{b.underflow:,} values below {_num(b.edges[0])} are in the first bin")
    return "; ".join(notes)


def _add_threshold(fig, t: Threshold, lo: float, hi: float) -> None:
    """A dashed line at the bound and a light band over the side the filter drops."""
    label = html.escape(f"{t.step}: {t.text}" if t.step else t.text)
    v = float(t.value)
    fig.add_vline(x=v, line_dash="dash", line_color=COLORS["threshold"], line_width=2,
                  annotation_text=label, annotation_position="top",
                  annotation_font={"size": 10, "color": COLORS["threshold"]})
    if t.op in ("<", "<="):
        fig.add_vrect(x0=v, x1=max(hi, v), fillcolor=COLORS["threshold"], opacity=0.07, line_width=0)
    elif t.op in (">", ">="):
        fig.add_vrect(x0=min(lo, v), x1=v, fillcolor=COLORS["threshold"], opacity=0.07, line_width=0)


def _bool_threshold(fig, t: Threshold) -> None:
    """Shade the boolean value the filter drops (x positions 0 = false, 1 = true)."""
    dropped = 0 if t.value else 1
    fig.add_vrect(x0=dropped - 0.5, x1=dropped + 0.5, fillcolor=COLORS["threshold"], opacity=0.10,
                  line_color=COLORS["threshold"], line_dash="dash", line_width=2,
                  annotation_text=html.escape(f"{t.step}: drops {str(not t.value).lower()}"),
                  annotation_position="top", annotation_font={"size": 10, "color": COLORS["threshold"]})


def _int_axis(fig, b: Bins) -> None:
    """Few integer bins: whole-number ticks and room around a lone bar."""
    if b.integer and len(b.edges) <= 22 and np.allclose(b.widths, 1):
        fig.update_xaxes(dtick=1, range=[b.edges[0] - 1, b.edges[-1] + 1])


def _bool_axis(fig) -> None:
    fig.update_xaxes(tickvals=[0, 1], ticktext=["false", "true"], range=[-0.6, 1.6])


def score_histogram(df: pl.DataFrame, col: str, marks: list[Threshold]):
    """Distribution of one score over all (binned) rows, with its thresholds."""
    fig = _figure()
    nulls = df[col].null_count()
    if _is_bool(df, col):
        s = df[col].drop_nulls()
        counts = [int((~s).sum()), int(s.sum())]
        fig.add_bar(x=[0, 1], y=counts, marker_color=COLORS["selected"], name=col,
                    text=[f"{c:,}" for c in counts], textposition="outside", cliponaxis=False,
                    hovertemplate="%{y:,} rows<extra></extra>", showlegend=False)
        _bool_axis(fig)
        for t in marks:
            if isinstance(t.value, bool):
                _bool_threshold(fig, t)
        return _layout(fig, col, yaxis_title="rows"), ""
    values = _values(df, col)
    if not len(values):
        return None, f"{col}: no values (all null)"
    nums = [t for t in marks if not isinstance(t.value, bool)]
    b = _bins(values, _is_int(df, col), [float(t.value) for t in nums])
    fig.add_bar(x=b.centers, y=b.counts(values), width=b.widths, marker_color=COLORS["selected"],
                marker_line_width=0, showlegend=False, name=col,
                customdata=np.stack([b.edges[:-1], b.edges[1:]], axis=1),
                hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g}): %{y:,} rows<extra></extra>")
    for t in nums:
        _add_threshold(fig, t, float(b.edges[0]), float(b.edges[-1]))
    _int_axis(fig, b)
    same = f"all {len(values):,} values are {_num(values[0])}" if values.min() == values.max() else ""
    note = "; ".join(x for x in (same, _bin_note(b), f"{nulls:,} null" if nulls else "") if x)
    return _layout(fig, col, xaxis_title=col, yaxis_title="rows", bargap=0.02), note


def selected_vs_rejected(df: pl.DataFrame, col: str):
    """The score among selected rows vs rejected rows, as a share of each group."""
    fig = _figure()
    groups = [("selected", df.filter(pl.col("status") == "selected")),
              ("rejected", df.filter(pl.col("status") == "rejected"))]
    if _is_bool(df, col):
        for name, g in groups:
            s = g[col].drop_nulls()
            n = max(len(s), 1)
            counts = np.array([int((~s).sum()), int(s.sum())])
            fig.add_bar(x=[0, 1], y=100 * counts / n, name=f"{name} ({len(s):,})",
                        marker_color=COLORS[name], customdata=counts,
                        hovertemplate="%{y:.1f}% (%{customdata:,} rows)<extra>" + name + "</extra>")
        _bool_axis(fig)
        return _layout(fig, col, barmode="group", yaxis_title="% of group")
    values = _values(df, col)
    if not len(values):
        return None
    b = _bins(values, _is_int(df, col), [])
    for name, g in groups:
        v = _values(g, col)
        counts = b.counts(v) if len(v) else np.zeros(len(b.centers), dtype=int)
        fig.add_bar(x=b.centers, y=100 * counts / max(len(v), 1), width=b.widths,
                    name=f"{name} ({len(v):,})", marker_color=COLORS[name], opacity=0.55,
                    marker_line_width=0, customdata=counts,
                    hovertemplate="%{x:.4g}: %{y:.1f}% (%{customdata:,} rows)<extra>" + name + "</extra>")
    _int_axis(fig, b)
    return _layout(fig, col, barmode="overlay", bargap=0.02, xaxis_title=col, yaxis_title="% of group")


def _step_name(step: dict[str, Any]) -> str:
    """A short name of a decision step of the pipeline spec, for the funnel."""
    kind = step.get("step")
    if kind == "filter":
        return f"filter: {step.get('name') or step.get('predicate')}"
    if kind == "dedup":
        return "decontaminate" if step.get("method") == "decontaminate" else f"dedup: {step.get('method')}"
    opts = step.get("options") or {}
    by = f" by {opts['by']}" if opts.get("by") else ""
    budget = step.get("budget")
    return f"select: {step.get('strategy')}{by}" + (f" (budget {budget})" if budget is not None else "")


def funnel(manifest: dict[str, Any]):
    """Rows left after ingest and after every decision step."""
    import plotly.graph_objects as go

    labels, values = [], []
    steps = [s for s in manifest.get("pipeline", {}).get("steps", [])
             if s.get("step") in ("filter", "dedup", "select")]
    decisions = [st for st in manifest.get("stages", [])
                 if st.get("stage") not in ("ingest", None) and not st["stage"].startswith("score:")]
    named = {id(st): _step_name(step) for st, step in zip(decisions, steps)} \
        if len(steps) == len(decisions) else {}
    for st in manifest.get("stages", []):
        name = st.get("stage", "")
        if name == "ingest":
            labels += ["input rows", "ingest: valid rows"]
            values += [st.get("in", 0), st.get("out", 0)]
        elif not name.startswith("score:"):
            labels.append(named.get(id(st)) or f"{name}: {st.get('label', '')}")
            values.append(st.get("out", 0))
    if not labels:
        return None
    # a funnel's categories must be unique: number them
    labels = [html.escape(_short(f"{i + 1}. {lab}", 70)) for i, lab in enumerate(labels)]
    fig = _figure(go.Funnel(y=labels, x=values, texttemplate="%{value:,}<br>%{percentInitial:.1%}",
                            marker={"color": COLORS["selected"]},
                            hovertemplate="%{y}: %{x:,} rows (%{percentInitial:.1%} of input)"
                                          "<extra></extra>"))
    return _layout(fig, "Rows left after each stage", height=max(260, 60 + 42 * len(labels)),
                   margin={"l": 260, "r": 20, "t": 45, "b": 30})


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the rows of ``x`` and their share of the variance.

    SVD of the d x d scatter matrix (d = embedding width), not of the n x d data: the
    same axes, a fraction of the work for thousands of rows.
    """
    x = x - x.mean(axis=0, keepdims=True)
    _, var, vt = np.linalg.svd(x.T @ x, hermitian=True)
    axes = vt[:2]
    # a fixed sign per axis: its largest loading is positive
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    coords = x @ axes.T
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(len(axes))
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros((len(coords), 2 - coords.shape[1]))])
        ratio = np.concatenate([ratio, np.zeros(2 - len(ratio))])
    return coords, ratio


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
        km.train(x)
        return km.index.search(x, 1)[1][:, 0].astype(np.int64)
    except ImportError:  # plain Lloyd iterations
        rng = np.random.default_rng(seed)
        centers = x[rng.choice(len(x), k, replace=False)]
        assign = np.zeros(len(x), dtype=np.int64)
        for _ in range(25):
            d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
            assign = d.argmin(1)
            for c in range(k):
                if (assign == c).any():
                    centers[c] = x[assign == c].mean(0)
        return assign


@dataclass
class MapResult:
    figures: list[tuple[str, Any]]
    note: str


def embedding_map(data: RunData, *, max_points: int, seed: int) -> MapResult:
    """2-D PCA of the embeddings: by outcome, and by cluster."""
    ds = data.run.dataset("scores")
    n_total = ds.count_rows()
    # rows dropped before the embedding step have none: sample among those that do
    valid = np.concatenate([pc.is_valid(b.column(0)).to_numpy(zero_copy_only=False)
                            for b in ds.to_batches(columns=["embedding"])] or [np.zeros(0, bool)])
    with_emb = np.flatnonzero(valid)
    n_emb = len(with_emb)
    if n_emb < 3:
        return MapResult([], f"Fewer than 3 rows have an embedding ({n_emb:,}); no map.")
    if n_emb > max_points:
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(with_emb, max_points, replace=False))
        table = ds.take(pa.array(positions), columns=["id", "embedding"])
    else:
        table = ds.to_table(columns=["id", "embedding"]).filter(pa.array(valid))
    vecs = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float64)
    coords, ratio = _pca(vecs)
    pts = pl.DataFrame({"id": table["id"].cast(pa.string()), "x": coords[:, 0], "y": coords[:, 1]})
    rej = data.rejected.select("id", "stage", "reason", "cluster", "representative")
    pts = pts.join(rej, on="id", how="left", maintain_order="left")
    texts = _texts_for(data.run, data.kind, pts["id"].to_list())
    hover = [html.escape(f"{i} | {_short(texts.get(i, ('', ''))[1], 90)}") for i in pts["id"]]
    pts = pts.with_columns(hover=pl.Series(hover, dtype=pl.String))
    axes = {"xaxis_title": f"PC1 ({ratio[0]:.0%} of variance)",
            "yaxis_title": f"PC2 ({ratio[1]:.0%} of variance)"}
    note = (f"A seeded random sample of {table.num_rows:,} of the {n_emb:,} rows with an embedding."
            if n_emb > max_points else f"All {n_emb:,} rows with an embedding.")
    if n_emb < n_total:
        note += (f" {n_total - n_emb:,} rows were dropped before the embedding step and have none "
                 "(they are not on the map).")

    # by outcome
    fig = _figure()
    # the many rows a budget leaves out go first (below), rarer outcomes on top
    stages = sorted(pts["stage"].drop_nulls().unique().to_list(), key=lambda x: (x != "select", x))
    groups = ([(s, pts.filter(pl.col("stage") == s)) for s in stages if s == "select"]
              + [("selected", pts.filter(pl.col("stage").is_null()))]
              + [(s, pts.filter(pl.col("stage") == s)) for s in stages if s != "select"])
    for name, g in groups:
        if not g.height:
            continue
        label = name if name == "selected" else f"rejected at {name}"
        fig.add_scatter(x=g["x"], y=g["y"], mode="markers", name=f"{label} ({g.height:,})",
                        marker={"size": 5, "opacity": 0.7, "color": COLORS.get(name, "#8c564b")},
                        text=g["hover"], hovertemplate="%{text}<extra>" + html.escape(label) + "</extra>")
    figs = [("map-outcome", _layout(fig, "By outcome", height=460, **axes))]

    # by cluster: the run's dedup clusters when dropped duplicates are on the map, else k-means
    clusters = data.rejected.filter((pl.col("stage") == "dedup") & pl.col("cluster").is_not_null())
    fig = _figure()
    rep_cluster = clusters.group_by("representative").agg(pl.col("cluster").first()).select(
        pl.col("representative").alias("id"), pl.col("cluster").alias("kept_cluster"))
    pts = (pts.join(clusters.select("id", pl.col("cluster").alias("dropped_cluster")), on="id",
                    how="left", maintain_order="left")
           .join(rep_cluster, on="id", how="left", maintain_order="left")
           .with_columns(dup=pl.coalesce("dropped_cluster", "kept_cluster")))
    if pts["dropped_cluster"].drop_nulls().len():
        in_dup = pts.filter(pl.col("dup").is_not_null())
        plain = pts.filter(pl.col("dup").is_null())
        codes = in_dup["dup"].rank("dense").cast(pl.Int64).to_numpy()
        n_clusters = int(codes.max())
        fig.add_scatter(x=plain["x"], y=plain["y"], mode="markers",
                        name=f"not a duplicate ({plain.height:,})",
                        marker={"size": 4, "color": "#c7c7c7", "opacity": 0.6}, text=plain["hover"],
                        hovertemplate="%{text}<extra>not a duplicate</extra>")
        for name, mask, symbol in (("kept representative", in_dup["dropped_cluster"].is_null(), "circle"),
                                   ("dropped duplicate", in_dup["dropped_cluster"].is_not_null(), "x")):
            g = in_dup.filter(mask)
            c = codes[mask.to_numpy()]
            fig.add_scatter(x=g["x"], y=g["y"], mode="markers", name=f"{name} ({g.height:,})",
                            marker={"size": 7, "symbol": symbol, "color": c, "colorscale": "Turbo",
                                    "cmin": 1, "cmax": max(n_clusters, 2)},
                            text=[f"{h}<br>cluster {html.escape(str(k))}" for h, k in
                                  zip(g["hover"], g["dup"])],
                            hovertemplate="%{text}<extra>" + name + "</extra>")
        title = f"By duplicate cluster ({n_clusters:,} cluster{'s' if n_clusters != 1 else ''})"
        note += (" Clusters are the run's dedup clusters: rows of one cluster share a colour; "
                 "a circle is the kept row, a cross a dropped duplicate.")
    else:
        k = int(min(12, max(2, round(math.sqrt(len(vecs)) / 3)), len(vecs) - 1))
        assign = _kmeans(vecs, k, seed)
        for c in range(k):
            mask = assign == c
            g = pts.filter(pl.Series(mask))
            fig.add_scatter(x=g["x"], y=g["y"], mode="markers", name=f"cluster {c} ({g.height:,})",
                            marker={"size": 5, "opacity": 0.75}, text=g["hover"],
                            hovertemplate="%{text}<extra>cluster " + str(c) + "</extra>")
        title = f"By k-means cluster (k = {k})"
        why = ("The run has no dedup clusters" if not clusters.height else
               "No dropped duplicate has an embedding (dedup ran before the embedding step)")
        note += f" {why}; clusters are a seeded k-means (k = {k}) over the plotted embeddings."
    figs.append(("map-cluster", _layout(fig, title, height=460, **axes)))
    return MapResult(figs, note)


def _scorer_default(scorer: str, option: str) -> Any:
    """The default of a scorer option (what a run that did not set it used)."""
    import dataclasses

    from curate.scorer import SCORERS, scorer_names

    try:
        scorer_names()
        fields = {f.name: f for f in dataclasses.fields(SCORERS[scorer])}
        return fields[option].default
    except (KeyError, TypeError, ImportError):  # an unknown or changed scorer: leave it out
        return None


def token_histogram(df: pl.DataFrame, col: str):
    values = _values(df, col)
    b = _bins(values, True, [])
    fig = _figure()
    fig.add_bar(x=b.centers, y=b.counts(values), width=b.widths, marker_color=COLORS["selected"],
                marker_line_width=0, showlegend=False,
                customdata=np.stack([b.edges[:-1], b.edges[1:]], axis=1),
                hovertemplate="[%{customdata[0]:,.0f}, %{customdata[1]:,.0f}): %{y:,} rows<extra></extra>")
    return _layout(fig, f"{col} of the selected rows", xaxis_title=col, yaxis_title="rows",
                   bargap=0.02), _bin_note(b)


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
