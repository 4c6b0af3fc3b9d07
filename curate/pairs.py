"""Build preference pairs from SFT rows that answer the same prompt.

For every prompt with at least two answers in a run, the answer with the
highest value of a column (``by``: a score such as the target model's mean
log-probability, or an existing rating column of the data) becomes ``chosen``
and the lowest becomes ``rejected``; each pair records both ids, both values
and why it was built. Ties make no pair. With ``by="label"`` (KTO-style data) a
desirable answer (label true) is paired with an undesirable one (label false). The result is a Parquet file that
``curate ingest`` reads as a preference dataset.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.errors import CurateError
from curate.run import open_run, write_table
from curate.schema import MESSAGES, prompt_messages


def build_pairs(run_dir: str | Path, output: str | Path, *, by: str = "logprob_conditional",
                only_selected: bool = False) -> dict[str, int]:
    """Write pairs to ``output`` (Parquet); returns counts (prompts, pairs, ties)."""
    run = open_run(run_dir)
    if (run.manifest() or {}).get("input", {}).get("kind") != "sft":
        raise CurateError(f"pairs are built from an sft run; {run.path} is not one")
    data = pl.from_arrow(run.table("selected" if only_selected else "data"))
    scores = pl.from_arrow(run.table("scores"))
    if by not in data.columns and by not in scores.columns:
        raise CurateError(f"no column {by!r} in the run's data or scores; "
                          f"scores: {', '.join(c for c in scores.columns if c != 'id')}")
    if by not in data.columns:
        data = data.join(scores.select("id", by), on="id", how="left")
    boolean = data.schema[by] == pl.Boolean
    rows = data.select("id", "prompt_id", "messages", pl.col(by).cast(pl.Float64)).drop_nulls(by)
    ranked = rows.sort([by, "id"], descending=[True, False])
    groups = ranked.group_by("prompt_id", maintain_order=True).agg(
        n=pl.len(), chosen_id=pl.col("id").first(), rejected_id=pl.col("id").last(),
        chosen_value=pl.col(by).first(), rejected_value=pl.col(by).last(),
        chosen_messages=pl.col("messages").first(), rejected_messages=pl.col("messages").last())
    multi = groups.filter(pl.col("n") >= 2)
    pairs = multi.filter(pl.col("chosen_value") > pl.col("rejected_value"))
    records = []
    for r in pairs.iter_rows(named=True):
        chosen, rejected = r["chosen_messages"], r["rejected_messages"]
        prompt = prompt_messages(chosen)
        records.append({
            "prompt": prompt, "chosen": chosen[len(prompt):], "rejected": rejected[len(prompt):],
            "chosen_id": r["chosen_id"], "rejected_id": r["rejected_id"],
            "chosen_value": r["chosen_value"], "rejected_value": r["rejected_value"],
            "answers": r["n"], "prompt_id": r["prompt_id"],
            "pair_reason": (f"{by} true vs false, of {r['n']} answers" if boolean else
                            f"highest vs lowest {by} of {r['n']} answers: "
                            f"{r['chosen_value']:.4g} vs {r['rejected_value']:.4g}"),
        })
    schema = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                        ("chosen_id", pa.string()), ("rejected_id", pa.string()),
                        ("chosen_value", pa.float64()), ("rejected_value", pa.float64()),
                        ("answers", pa.int64()), ("prompt_id", pa.string()),
                        ("pair_reason", pa.string())])
    write_table(pa.Table.from_pylist(records, schema=schema), Path(output))
    return {"prompts_with_several_answers": multi.height, "pairs": len(records),
            "ties": multi.height - len(records)}
