"""The figures of the run report (plotly), and the run data they are drawn from:
score histograms with filter bounds, selected vs rejected, the funnel of rows per
step, the 2-D embedding map and the token counts of the selection. The page that
lays them out is ``curate.report``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.bounds import Threshold, _num
from curate.run import Run

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
    """Cluster of each row of ``x`` by k-means (faiss, a dependency)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


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
