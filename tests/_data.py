"""Small canonical tables built from REAL rows of tests/data, for scorer tests.

These helpers convert the raw layouts themselves (independently of curate's
adapters) so the tests know exactly what text each row holds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.schema import MESSAGES

DATA = Path(__file__).resolve().parent / "data"  # real public datasets, see data/README.md
ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
DPO = DATA / "llamafactory" / "dpo_en_demo.parquet"
C4 = DATA / "c4_demo" / "c4_demo.parquet"
MSRP = DATA / "paraphrase" / "msrp_train.parquet"
GPTEACHER_ROLEPLAY = DATA / "gpteacher" / "roleplay_rest.parquet"

SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def need(path: Path) -> None:
    """Fail (never skip) when a test data file is missing: a test that cannot run must not pass."""
    if not path.exists():
        pytest.fail(f"test data file {path} is missing (see tests/data/README.md)")


def read_rows(path: Path, n: int | None = None) -> list[dict]:
    """The first ``n`` rows (all when None) of a test data file; a missing file fails."""
    need(path)
    table = pq.read_table(path)
    return (table if n is None else table.slice(0, n)).to_pylist()


def alpaca_user_text(row: dict) -> str:
    """The user turn of an alpaca row: instruction, then input after a blank line if any."""
    return row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")


def sft_table(rows: list[dict]) -> pa.Table:
    """Canonical sft table (id, messages) from alpaca rows (instruction, input, output)."""
    messages = [[{"role": "user", "content": alpaca_user_text(r)},
                 {"role": "assistant", "content": r["output"]}] for r in rows]
    return pa.table({"id": [f"alpaca-{i}" for i in range(len(rows))],
                     "messages": pa.array(messages, type=MESSAGES)})


def sft_messages_table(conversations: list[list[dict]]) -> pa.Table:
    """Canonical sft table from explicit message lists."""
    return pa.table({"id": [f"row-{i}" for i in range(len(conversations))],
                     "messages": pa.array(conversations, type=MESSAGES)})


def preference_table(rows: list[dict]) -> pa.Table:
    """Canonical preference table (id, prompt, chosen, rejected) from sharegpt dpo rows."""
    def msg(m: dict) -> dict:
        return {"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]}

    return pa.table({
        "id": [f"dpo-{i}" for i in range(len(rows))],
        "prompt": pa.array([[msg(m) for m in r["conversations"]] for r in rows], type=MESSAGES),
        "chosen": pa.array([[msg(r["chosen"])] for r in rows], type=MESSAGES),
        "rejected": pa.array([[msg(r["rejected"])] for r in rows], type=MESSAGES),
    })


def text_table(texts: list[str]) -> pa.Table:
    """Canonical text table (id, text)."""
    return pa.table({"id": [f"text-{i}" for i in range(len(texts))], "text": texts})
