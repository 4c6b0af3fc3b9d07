"""Evaluate a model (embedded, a local folder, or a `curate finetune` output) on
reference answers.

It is the perplexity scorer's computation, run as an ordinary curate run: per row
the mean per-token loss and perplexity of the reference answer given its prompt,
under the model's chat template; preference rows also get whether the model gives
the chosen answer a higher mean log-likelihood than the rejected one (reward
accuracy) and the margin. The result is a run directory, so ``curate sql`` can
compare models; ``RUN/eval.json`` holds the summary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.pipeline import Pipeline, read
from curate.run import Run, write_json


def eval_pipeline(data: str | Path, model: str, *, kind: str | None = None,
                  adapter: str | None = None, columns: dict[str, str] | None = None,
                  max_length: int | None = None) -> Pipeline:
    """The pipeline ``evaluate`` runs: read the eval rows, score them under ``model``."""
    if kind == "text":
        raise CurateError("evaluation needs reference answers (sft or preference rows), "
                          "not plain text")
    options: dict[str, Any] = {"model": model, "dtype": "float32"}  # exact losses, any device
    if max_length:
        options["max_length"] = max_length
    return read(data, kind=kind, adapter=adapter, columns=columns).score("perplexity", **options)


def summarize(run: Run) -> dict[str, Any]:
    """Mean loss, perplexity and (preference rows) reward accuracy of an eval run."""
    kind = (run.manifest() or {}).get("input", {}).get("kind")
    if kind == "text":
        raise CurateError(f"{run.path}: evaluation needs reference answers (sft or preference "
                          "rows); this input is plain text")
    scores = pl.from_arrow(run.table("scores"))
    prefix = "chosen_" if kind == "preference" else ""
    lp = scores[f"{prefix}logprob_conditional"].drop_nulls()
    tokens = scores[f"{prefix}response_tokens"].drop_nulls()
    out: dict[str, Any] = {
        "kind": kind, "rows": scores.height, "scored_rows": lp.len(),
        "mean_loss": None if lp.is_empty() else -float(lp.mean()),
        # token-weighted: the loss of all reference tokens together
        "token_loss": None if lp.is_empty() else -float(
            (scores[f"{prefix}logprob_conditional"] * scores[f"{prefix}response_tokens"]).sum()
            / tokens.sum()),
    }
    out["perplexity"] = None if out["token_loss"] is None else math.exp(out["token_loss"])
    if kind == "preference":
        margin = scores["logprob_margin"].drop_nulls()
        out["reward_accuracy"] = None if margin.is_empty() else float((margin > 0).mean())
        out["mean_margin"] = None if margin.is_empty() else float(margin.mean())
    return out


def evaluate(model: str, data: str | Path, output: str | Path, *, kind: str | None = None,
             adapter: str | None = None, columns: dict[str, str] | None = None,
             max_length: int | None = None, **write_options: Any) -> dict[str, Any]:
    """Score ``data``'s reference answers under ``model`` into the run ``output``;
    returns the summary (also written to ``output/eval.json``)."""
    pipe = eval_pipeline(data, model, kind=kind, adapter=adapter, columns=columns,
                         max_length=max_length)
    run = pipe.write(output, **write_options)
    summary = {"model": model, "data": str(data), **summarize(run)}
    if summary["scored_rows"] == 0:
        raise CurateError(f"no row of {data} has a reference answer the model could score")
    write_json(summary, Path(run.path) / "eval.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    parts = [f"{summary['scored_rows']} of {summary['rows']} rows scored",
             f"loss {summary['token_loss']:.4f} per token",
             f"perplexity {summary['perplexity']:.3f}"]
    if summary.get("reward_accuracy") is not None:
        parts.append(f"reward accuracy {summary['reward_accuracy']:.3f} "
                     f"(mean margin {summary['mean_margin']:.4f})")
    return ", ".join(parts)

