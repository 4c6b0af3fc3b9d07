"""Canonical columns of the three dataset kinds, and text views of them for scorers.

- ``sft``: ``messages`` (list of {role, content}).
- ``preference``: ``prompt`` (messages before the answer), ``chosen`` and ``rejected``
  (assistant message lists).
- ``text``: ``text`` (raw documents, eval sets).

Every kind also has ``id``: a stable content hash, unique within a dataset.
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "preference", "text")

CANONICAL: dict[str, dict[str, pa.DataType]] = {
    "sft": {"messages": MESSAGES},
    "preference": {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES},
    "text": {"text": pa.string()},
}


def kind_of(schema: pa.Schema) -> str:
    """The kind of a batch or table in canonical form (by its columns)."""
    names = set(schema.names)
    for kind in ("preference", "sft", "text"):
        if set(CANONICAL[kind]) <= names:
            return kind
    raise ValueError(f"not a canonical dataset: columns {sorted(names)}")


Messages = list[dict]


def _texts(messages: Messages | None, roles: tuple[str, ...]) -> str:
    return "\n".join(m["content"] for m in messages or () if m["role"] in roles)


def _last_assistant(messages: Messages | None) -> str:
    for m in reversed(messages or ()):
        if m["role"] == "assistant":
            return m["content"]
    return ""


def prompt_messages(messages: Messages | None) -> Messages:
    """The turns before the last assistant turn (the prompt an SFT answer responds to)."""
    messages = list(messages or ())
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i]
    return messages


def conversations(batch: pa.RecordBatch | pa.Table) -> list[Messages]:
    """Each row as one message list (preference rows: prompt + chosen)."""
    kind = kind_of(batch.schema)
    if kind == "sft":
        return batch.column("messages").to_pylist()
    if kind == "preference":
        prompts = batch.column("prompt").to_pylist()
        chosen = batch.column("chosen").to_pylist()
        return [(p or []) + (c or []) for p, c in zip(prompts, chosen)]
    return [[{"role": "assistant", "content": t or ""}] for t in batch.column("text").to_pylist()]


def response_texts(batch: pa.RecordBatch | pa.Table) -> list[str]:
    """The answer being judged: last assistant turn (sft), the chosen answer
    (preference), or the whole document (text)."""
    kind = kind_of(batch.schema)
    if kind == "sft":
        return [_last_assistant(m) for m in batch.column("messages").to_pylist()]
    if kind == "preference":
        return [_texts(m, ("assistant",)) for m in batch.column("chosen").to_pylist()]
    return [t or "" for t in batch.column("text").to_pylist()]


def rejected_texts(batch: pa.RecordBatch | pa.Table) -> list[str]:
    """The rejected answer of preference rows."""
    return [_texts(m, ("assistant",)) for m in batch.column("rejected").to_pylist()]


def prompt_texts(batch: pa.RecordBatch | pa.Table) -> list[str]:
    """The instruction side: system and user turns before the judged answer
    (empty for the text kind)."""
    kind = kind_of(batch.schema)
    if kind == "sft":
        rows = [prompt_messages(m) for m in batch.column("messages").to_pylist()]
    elif kind == "preference":
        rows = batch.column("prompt").to_pylist()
    else:
        return [""] * batch.num_rows
    return [_texts(m, ("system", "user", "tool")) for m in rows]


def full_texts(batch: pa.RecordBatch | pa.Table) -> list[str]:
    """All text of a row joined by newlines (for length and dedup)."""
    return ["\n".join(m["content"] for m in conv) for conv in conversations(batch)]
