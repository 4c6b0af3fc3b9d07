"""Why a row was kept or dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from curate.errors import CurateError
from curate.run import open_run


def _lookup(run, name: str, row_id: str) -> dict[str, Any] | None:
    ds = run.dataset(name)
    if "id" not in ds.schema.names:
        return None
    rows = ds.to_table(filter=pc.field("id") == row_id).to_pylist()
    return rows[0] if rows else None


def explain(run_dir: str | Path, row_id: str) -> dict[str, Any]:
    """Verdict (selected / rejected), stage, reason, twin and scores of one row."""
    run = open_run(run_dir)
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
    return out
