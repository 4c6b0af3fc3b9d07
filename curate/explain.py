"""Why a row was kept or dropped: the step that dropped it, what that step checked
and the row's own values against the bound, its kept twin, its scores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.run import open_run


def _lookup(run, name: str, row_id: str) -> dict[str, Any] | None:
    ds = run.dataset(name)
    if "id" not in ds.schema.names:
        return None
    rows = ds.to_table(filter=pc.field("id") == row_id).to_pylist()
    return rows[0] if rows else None


# --- which step, and what it checked ------------------------------------------------------

def _steps(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return list(manifest.get("pipeline", {}).get("steps", []))


def _filter_label(step: dict[str, Any]) -> str:
    return step.get("name") or str(step.get("predicate"))


def find_step(manifest: dict[str, Any], stage: str, reason: str) -> tuple[int, dict] | None:
    """(0-based index, spec) of the pipeline step that rejected a row at ``stage``
    with ``reason``, or None (ingest, or a step the manifest does not describe)."""
    steps = list(enumerate(_steps(manifest)))
    if stage == "filter":
        found = [(i, s) for i, s in steps if s.get("step") == "filter" and _filter_label(s) == reason]
    elif stage == "dedup":
        found = [(i, s) for i, s in steps if s.get("step") == "dedup"]
        method = "decontaminate" if reason.startswith("contaminated") else next(
            (s["method"] for _, s in found if s.get("method") in reason), None)
        found = [(i, s) for i, s in found if method is None or s.get("method") == method]
    elif stage == "select":
        found = [(i, s) for i, s in steps if s.get("step") == "select"]
        named = [(i, s) for i, s in found if str(s.get("strategy")) in reason]
        found = named or found[-1:]
    else:
        return None
    return found[0] if found else None


def filter_checks(predicate: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Each top-level AND part of a filter predicate evaluated on one row: its text,
    ``passed`` (True, False, or None when null, which the filter counts as failed),
    ``evaluated`` (False when this reader could not evaluate it) and the row's values
    of the columns it reads."""
    from curate.bounds import _polars_to_sql, _split_top, _strip_parens

    text = str(predicate).strip()
    if text.startswith("[") or 'col("' in text:  # a polars expression, as stored in the spec
        text = _polars_to_sql(text)
    text = _strip_parens(text)
    parts = [text] if len(_split_top(text, "or")) > 1 else _split_top(text, "and")
    out = []
    for part in parts:
        part = _strip_parens(part)
        check: dict[str, Any] = {"part": part, "passed": None, "evaluated": False, "values": {}}
        try:
            expr = pl.sql_expr(part)
            cols = expr.meta.root_names()
            check["values"] = {c: values.get(c) for c in cols}
            if all(c in values for c in cols):
                frame = pl.DataFrame({c: [values[c]] for c in cols}) if cols else pl.DataFrame({"_": [0]})
                check["passed"] = frame.select(expr.alias("ok")).to_series()[0]
                check["evaluated"] = True
        except Exception:  # a predicate this reader cannot evaluate: show it as is
            pass
        out.append(check)
    return out


def filter_detail(frame: pl.DataFrame, expr: pl.Expr) -> pl.Series | None:
    """Per row, the values of the (scalar) columns a filter reads, e.g.
    ``quality_ngram_repetition = 0.52``: the ``detail`` of the rows it drops, so
    their ``reason`` (the filter's label) stays the same for all of them."""
    try:
        names = list(dict.fromkeys(expr.meta.root_names()))
    except Exception:
        return None
    cols = [c for c in names if c in frame.columns
            and (frame[c].dtype.is_numeric() or frame[c].dtype in (pl.Boolean, pl.String))]
    if not cols:
        return None
    parts = [pl.concat_str([pl.lit(f"{c} = "), pl.col(c).cast(pl.String).fill_null("null")])
             for c in cols]
    return frame.select(pl.concat_str(parts, separator=", ").alias("detail")).to_series()


def explain(run_dir: str | Path, row_id: str) -> dict[str, Any]:
    """Verdict (selected / rejected), stage, reason, the step and what it checked,
    kept twin, scores and the row itself."""
    run = open_run(run_dir)
    manifest = run.manifest() or {}
    out: dict[str, Any] = {"id": row_id}
    rej = _lookup(run, "rejected", row_id)
    if rej:
        out.update(verdict="rejected", **{k: v for k, v in rej.items() if k != "id" and v is not None})
        if rej.get("representative"):
            out["kept_twin"] = _lookup(run, "data", rej["representative"])
    elif _lookup(run, "selected", row_id):
        out["verdict"] = "selected"
    else:
        raise CurateError(f"no row with id {row_id!r} in run {run.path}")
    scores = _lookup(run, "scores", row_id)
    if scores:
        out["scores"] = {k: v for k, v in scores.items() if k != "id"}
    data = _lookup(run, "data", row_id)
    if data:
        out["row"] = data
    if rej:
        found = find_step(manifest, rej.get("stage") or "", rej.get("reason") or "")
        if found:
            index, spec = found
            out["step"] = {"number": index + 1, "of": len(_steps(manifest)), **spec}
            values = {**(data or {}), **(scores or {})}
            if spec.get("step") == "filter":
                out["checks"] = filter_checks(spec.get("predicate"), values)
            elif spec.get("step") == "select":
                opts = spec.get("options") or {}
                cols = [opts[k] for k in ("by", "weight") if isinstance(opts.get(k), str)]
                out["values"] = {c: values.get(c) for c in cols if c in values}
    return out


# --- text -------------------------------------------------------------------------------

def summarize(value: Any, limit: int = 200) -> str:
    """A value in a line: vectors as "[384 floats, norm 1.00]", long lists and texts
    cut, numbers with 6 significant digits."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"[{len(value)} bytes]"
    if isinstance(value, str):
        value = value.replace("\n", " ")
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value):,} chars)"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value) \
                and len(value) > 8:
            if any(isinstance(x, float) for x in value):
                norm = math.sqrt(sum(float(x) ** 2 for x in value))
                return f"[{len(value)} floats, norm {norm:.2f}]"
            return f"[{len(value)} ints]"
        if value and all(isinstance(x, dict) and "role" in x for x in value):
            return " | ".join(f"{m.get('role')}: {summarize(m.get('content') or '', 80)}"
                              for m in value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} chars)"


def _messages(value: Any, indent: str, limit: int = 300) -> list[str]:
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "role" in m
                                                         for m in value):
        lines = []
        for m in value:
            content = m.get("content")
            extra = {k: v for k, v in m.items() if k not in ("role", "content") and v}
            text = summarize(content if content is not None else "", limit)
            if extra:
                text += f" {summarize(extra, 160)}"
            lines.append(f"{indent}{m.get('role')}: {text}")
        return lines
    return [f"{indent}{summarize(value, limit)}"]


def _row_lines(row: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in row.items():
        if key in ("id", "prompt_id") or key.startswith("raw_") or value is None:
            continue
        body = _messages(value, indent + "    ")
        if len(body) == 1 and not isinstance(value, (list, tuple)):
            lines.append(f"{indent}  {key}: {body[0].strip()}")
        else:
            lines += [f"{indent}  {key}:", *body]
    return lines


def _outcome(check: dict[str, Any]) -> str:
    if not check["evaluated"]:
        return "?"
    return {True: "pass", False: "FAIL"}.get(check["passed"], "FAIL (null)")


def render(info: dict[str, Any]) -> list[str]:
    """``explain``'s answer as the lines ``curate explain`` prints."""
    lines = [f"{info['id']}: {info['verdict'].upper()}"]
    for key in ("stage", "reason", "detail", "cluster", "representative"):
        if key in info:
            lines.append(f"  {key}: {info[key]}")
    step = info.get("step")
    if step:
        head = f"  step {step['number']} of {step['of']}: {step['step']}"
        if step["step"] == "filter":
            lines.append(f"{head} {_filter_label(step)!r}"
                         + (f" (predicate: {step.get('predicate')})" if step.get("name") else ""))
            width = max((len(c["part"]) for c in info.get("checks", [])), default=0)
            for c in info.get("checks", []):
                vals = ", ".join(f"{k} = {summarize(v)}" for k, v in c["values"].items())
                lines.append(f"    {_outcome(c):<11} "
                             f"{c['part']:<{width}}   {vals}".rstrip())
        elif step["step"] == "select":
            opts = " ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
            lines.append(f"{head} {step.get('strategy')} (budget {step.get('budget')}) {opts}".rstrip())
            for k, v in (info.get("values") or {}).items():
                lines.append(f"    {k} = {summarize(v)}")
        elif step["step"] == "dedup":
            opts = " ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
            lines.append(f"{head} {step.get('method')} {opts}".rstrip())
    twin = info.get("kept_twin")
    if twin:
        lines.append(f"  kept twin: {twin.get('id')}")
        lines += _row_lines(twin, "  ")
    unscored = []
    for k, v in (info.get("scores") or {}).items():
        if v is None:
            unscored.append(k)
        else:
            lines.append(f"  score {k} = {summarize(v)}")
    if unscored:
        lines.append(f"  null (not scored, or dropped before that step): {', '.join(unscored)}")
    if info.get("row"):
        lines.append("  row:")
        lines += _row_lines(info["row"], "  ")
    return lines
