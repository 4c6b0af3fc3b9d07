"""Canonical columns of the three dataset kinds, and text views of them for scorers.

- ``sft``: ``messages`` (list of messages), ``tools`` (the tool schemas the row
  declares, JSON text, or null), ``label`` (KTO-style: true for a desirable answer,
  false for an undesirable one, null when the data has no label).
- ``preference``: ``prompt`` (messages before the answer), ``chosen`` and ``rejected``
  (assistant message lists), ``tools``.
- ``text``: ``text`` (raw documents, eval sets).

A message is ``{role, content, tool_calls, tool_call_id, name}`` as in OpenAI's chat
format: ``content`` is always a string ("" for an assistant turn that only calls
tools), ``tool_calls`` a list of ``{id, type, function: {name, arguments}}`` with
``arguments`` as JSON text, ``tool_call_id`` and ``name`` tie a tool result to its call.

Every kind also has ``id``: a stable content hash, unique within a dataset.
"""

from __future__ import annotations

import json

import pyarrow as pa

FUNCTION = pa.struct([("name", pa.string()), ("arguments", pa.string())])
TOOL_CALL = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", FUNCTION)])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()),
                     ("tool_calls", pa.list_(TOOL_CALL)), ("tool_call_id", pa.string()),
                     ("name", pa.string())])
MESSAGES = pa.list_(MESSAGE)
ROLES = ("system", "user", "assistant", "tool")
KINDS = ("sft", "preference", "text")

CANONICAL: dict[str, dict[str, pa.DataType]] = {
    "sft": {"messages": MESSAGES, "tools": pa.string(), "label": pa.bool_()},
    "preference": {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES,
                   "tools": pa.string()},
    "text": {"text": pa.string()},
}
# the columns that make a table canonical of a kind (the others may be absent)
CORE = {"sft": ("messages",), "preference": ("prompt", "chosen", "rejected"), "text": ("text",)}


def kind_of(schema: pa.Schema) -> str:
    """The kind of a batch or table in canonical form (by its columns)."""
    names = set(schema.names)
    for kind in ("preference", "sft", "text"):
        if set(CORE[kind]) <= names:
            return kind
    raise ValueError(f"not a canonical dataset: columns {sorted(names)}")


Messages = list[dict]


def tool_call_text(call: dict) -> str:
    """One tool call as the text a model emits (Hermes/Qwen style)."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        pass
    body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def message_text(m: dict) -> str:
    """A message's text: its content, then its tool calls (so a turn that only calls
    a tool is not empty to the scorers)."""
    calls = m.get("tool_calls") or ()
    if not calls:
        return m["content"] or ""
    parts = [m["content"]] if m["content"] else []
    return "\n".join(parts + [tool_call_text(c) for c in calls])


def has_answer(m: dict) -> bool:
    """Whether an assistant message says or does something (text or a tool call)."""
    return bool((m.get("content") or "").strip() or m.get("tool_calls"))


def for_template(messages: Messages, tools: str | None = None, *,
                 native_tools: bool = False) -> tuple[Messages, list | None]:
    """Messages and tools ready for ``apply_chat_template``: null fields dropped; with a
    template that does not render tool calls (``native_tools`` False), calls become
    text in the content and the tool schemas a system-turn paragraph."""
    out = []
    for m in messages:
        d = {k: v for k, v in m.items() if v is not None and k != "tool_calls"}
        if m.get("tool_calls"):
            if native_tools:
                d["tool_calls"] = [{**c, "function": {**c["function"], "arguments":
                                                      _json_or_text(c["function"]["arguments"])}}
                                   for c in m["tool_calls"]]
            else:
                d["content"] = message_text(m)
        out.append(d)
    schemas = _json_or_text(tools) if tools else None
    if schemas and not native_tools:
        note = ("You can call these tools:\n<tools>\n"
                + json.dumps(schemas, ensure_ascii=False) + "\n</tools>")
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
        schemas = None
    return out, schemas


def _json_or_text(value: str) -> object:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _texts(messages: Messages | None, roles: tuple[str, ...]) -> str:
    return "\n".join(message_text(m) for m in messages or () if m["role"] in roles)


def _last_assistant(messages: Messages | None) -> str:
    for m in reversed(messages or ()):
        if m["role"] == "assistant":
            return message_text(m)
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
    return ["\n".join(message_text(m) for m in conv) for conv in conversations(batch)]
