"""Bounds that filter steps put on score columns (``column op value``), read from
simple SQL predicates (or the repr of a simple polars expression) when the plan is
built: the runner records them in the manifest (``bounds``) and the report draws
them on the score histograms.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from curate.steps import Filter, Step


def _num(x: float) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


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


def plan_bounds(steps: Iterable[Step]) -> list[dict[str, Any]]:
    """The bounds of every filter step, as JSON records for the manifest."""
    return [dataclasses.asdict(t) for step in steps if isinstance(step, Filter)
            for t in parse_thresholds(step.predicate if isinstance(step.predicate, str)
                                      else str(step.predicate), step.label)]


def pipeline_thresholds(manifest: dict[str, Any]) -> list[Threshold]:
    """Bounds of every filter step of the run's pipeline: those the runner recorded
    with the plan, or (a run written before they were) read from its steps."""
    if "bounds" in manifest:
        return [Threshold(**b) for b in manifest["bounds"]]
    out: list[Threshold] = []
    for step in manifest.get("pipeline", {}).get("steps", []):
        if step.get("step") == "filter":
            pred = step.get("predicate")
            out += parse_thresholds(pred, step.get("name") or str(pred))
    return out
