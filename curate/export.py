"""Exports of a run's selected rows in the layouts trainers read, loadable unchanged.

``export(run_dir, to=..., output=DIR)`` writes one folder:

- ``trl``: ``train.parquet`` (or ``train.jsonl``) in TRL's conversational types. SFT rows
  are language modelling (``messages``) or prompt-completion (``prompt`` = every turn
  before the last assistant turn, ``completion`` = that turn); KTO-labelled rows keep
  ``label`` (and default to prompt-completion, TRL's unpaired-preference type);
  preference rows are ``prompt`` / ``chosen`` / ``rejected`` message lists. A row's
  ``tools`` is a list of schema dicts. Null message fields are dropped and tool-call
  arguments are JSON objects, as chat templates expect. In Parquet, where Arrow structs
  cannot leave a field out, message lists that carry tool calls and the ``tools`` column
  are stored as Arrow JSON values (``datasets`` >= 4.7, TRL's minimum, reads them back as
  dicts); plain chats are ``{role, content}`` structs.
- ``llamafactory``: ``NAME.jsonl`` (or ``.parquet``) plus ``dataset_info.json`` naming it,
  so ``dataset_dir: DIR`` and ``dataset: NAME`` find it. ``sharegpt`` (default) keeps
  messages with tool calls as ``function_call`` turns and tool results as
  ``observation`` turns; ``alpaca`` writes instruction/input/output/system/history.
- ``axolotl``: ``NAME.jsonl`` plus ``axolotl.yaml`` holding the ``datasets:`` entry
  (``type: chat_template``; for preference data ``rl: dpo`` with ``chat_template.default``).
- ``jsonl`` / ``parquet``: the canonical rows as they are in ``selected/``, every column.

Every export also writes ``curate_export.json`` (what was written, from which run, and
every row left out with the reason). A row the target layout cannot hold (an assistant
turn with both text and tool calls for LLaMA-Factory, a two-message chosen answer for a
single-message layout, turns that do not alternate) is left out and reported, never
changed. The folder is written under a temporary name beside DIR and renamed at the end.

One module (over 500 lines) because the layouts share the row conversions (messages,
tool calls, preference pairs) and the left-out accounting; each layout is one writer
function at the end.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.run import open_run
from curate.schema import kind_of

TARGETS = ("trl", "llamafactory", "axolotl", "jsonl", "parquet")
FORMATS = ("parquet", "jsonl")
LAYOUTS = {"trl": ("messages", "prompt_completion"), "llamafactory": ("sharegpt", "alpaca")}
MANIFEST = "curate_export.json"
CHUNK_ROWS = 2048

# LLaMA-Factory's sharegpt tags for the files written here (every tag is given: a
# dataset_info entry with "tags" resets the ones it leaves out)
LF_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
           "assistant_tag": "assistant", "observation_tag": "observation",
           "function_tag": "function_call", "system_tag": "system"}
# how LLaMA-Factory's own OpenAI-format converter joins consecutive tool results
LF_OBSERVATION_SEP = "\n</tool_response>\n<tool_response>\n"

_PLAIN_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_JSON_LIST = pa.list_(pa.json_())
_UMASK = os.umask(0)
os.umask(_UMASK)


class _Skip(Exception):
    """A row the target layout cannot hold (the message is the reason)."""


# ---------------------------------------------------------------- message helpers

def _arguments(call: dict) -> Any:
    """A tool call's arguments as a JSON value (the text itself if it is not JSON)."""
    args = (call.get("function") or {}).get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def _clean(messages: list[dict] | None, *, parse_arguments: bool = True) -> list[dict]:
    """Canonical messages with null fields dropped (OpenAI chat layout)."""
    out = []
    for m in messages or ():
        d = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                call = {} if c.get("id") is None else {"id": c["id"]}
                call["type"] = c.get("type") or "function"
                fn = c.get("function") or {}
                call["function"] = {"name": fn.get("name"),
                                    "arguments": _arguments(c) if parse_arguments
                                    else fn.get("arguments")}
                calls.append(call)
            d["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                d[key] = m[key]
        out.append(d)
    return out


def _tools(text: str | None, *, parse: bool = True) -> Any:
    """A row's tools: a list of schema dicts (``parse``) or the canonical JSON text."""
    if text is None or not str(text).strip():
        return None
    if not parse:
        return text
    try:
        value = json.loads(text)
    except ValueError as err:
        raise _Skip(f"its tools are not valid JSON ({err})") from err
    return value if isinstance(value, list) else [value]


def _last_assistant(messages: list[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    return -1


def _one_answer(messages: list[dict], what: str) -> dict:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise _Skip(f"{what} has {len(messages)} messages "
                    f"({', '.join(m['role'] for m in messages) or 'none'}); this layout takes one "
                    "assistant message")
    return messages[0]


def _no_tools(messages: list[dict], why: str) -> None:
    for m in messages:
        if m["role"] == "tool" or m.get("tool_calls"):
            raise _Skip(f"it has tool calls or tool results, which {why}")


# ---------------------------------------------------------------- TRL

def _trl_row(row: dict, kind: str, opts: dict) -> dict:
    if kind == "text":
        rec = {"text": row["text"]}
    elif kind == "preference":
        prompt = _clean(row["prompt"])
        if not prompt:
            raise _Skip("its prompt is empty")
        rec = {"prompt": prompt, "chosen": _clean(row["chosen"]), "rejected": _clean(row["rejected"])}
        if not rec["chosen"] or not rec["rejected"]:
            raise _Skip("its chosen or rejected answer is empty")
    else:
        messages = _clean(row["messages"])
        if opts["layout"] == "messages":
            rec = {"messages": messages}
        else:
            i = _last_assistant(messages)
            if i < 0:
                raise _Skip("it has no assistant turn")
            if i == 0:
                raise _Skip("nothing comes before its assistant turn (no prompt)")
            if i < len(messages) - 1:
                raise _Skip(f"{len(messages) - 1 - i} turn(s) follow its last assistant turn")
            rec = {"prompt": messages[:i], "completion": [messages[i]]}
    if opts["tools"]:
        rec["tools"] = _tools(row.get("tools"))
    if opts["label"]:
        rec["label"] = row.get("label")
    rec["id"] = row["id"]
    return rec


def _trl_schema(kind: str, opts: dict) -> pa.Schema:
    msgs = _JSON_LIST if opts["rich"] else _PLAIN_MESSAGES
    cols = {"text": ["text"], "preference": ["prompt", "chosen", "rejected"]}.get(
        kind, ["messages"] if opts["layout"] == "messages" else ["prompt", "completion"])
    fields = [(c, pa.string() if c == "text" else msgs) for c in cols]
    if opts["tools"]:
        fields.append(("tools", _JSON_LIST))
    if opts["label"]:
        fields.append(("label", pa.bool_()))
    fields.append(("id", pa.string()))
    return pa.schema(fields)


# ---------------------------------------------------------------- LLaMA-Factory

def _lf_turns(messages: list[dict]) -> list[dict]:
    """Canonical messages as LLaMA-Factory sharegpt turns (tags in ``LF_TAGS``)."""
    out: list[dict] = []
    results: list[str] = []

    def flush() -> None:
        if results:
            out.append({"role": "observation", "content": LF_OBSERVATION_SEP.join(results)})
            results.clear()

    for i, m in enumerate(messages):
        if m["role"] == "tool":
            results.append(m.get("content") or "")
            continue
        flush()
        if m["role"] == "system" and i != 0:
            raise _Skip(f"it has a system turn at position {i + 1} (LLaMA-Factory takes one, first)")
        if m["role"] == "assistant" and m.get("tool_calls"):
            if (m.get("content") or "").strip():
                raise _Skip("an assistant turn has both text and tool calls (LLaMA-Factory's "
                            "function_call turn holds only the calls)")
            calls = [{"name": (c.get("function") or {}).get("name"), "arguments": _arguments(c)}
                     for c in m["tool_calls"]]
            out.append({"role": "function_call",
                        "content": json.dumps(calls[0] if len(calls) == 1 else calls,
                                              ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    flush()
    body = out[1:] if out and out[0]["role"] == "system" else out
    for j, turn in enumerate(body):
        allowed = ("user", "observation") if j % 2 == 0 else ("assistant", "function_call")
        if turn["role"] not in allowed:
            raise _Skip(f"its turns do not alternate user/assistant (turn {j + 1} is "
                        f"{turn['role']}, LLaMA-Factory expects {' or '.join(allowed)})")
    return out


def _lf_body_len(turns: list[dict]) -> int:
    return len(turns) - (1 if turns and turns[0]["role"] == "system" else 0)


def _lf_sharegpt_row(row: dict, kind: str, opts: dict) -> dict:
    if kind == "preference":
        turns = _lf_turns(row["prompt"] or [])
        if _lf_body_len(turns) % 2 == 0:
            raise _Skip("its prompt does not end on a user turn or tool result")
        answers = {}
        for side in ("chosen", "rejected"):
            msg = _one_answer(_clean(row[side], parse_arguments=False), side)
            answers[side] = _lf_turns([{"role": "user", "content": ""}, msg])[1]
        rec = {"messages": turns, **answers}
    else:
        turns = _lf_turns(row["messages"] or [])
        n = _lf_body_len(turns)
        if n == 0 or n % 2:
            raise _Skip("it does not end on an assistant turn")
        rec = {"messages": turns}
    return _lf_extras(rec, row, opts)


def _lf_extras(rec: dict, row: dict, opts: dict) -> dict:
    """The columns both LLaMA-Factory layouts add: tools, the KTO tag, the row id."""
    if opts["tools"]:
        rec["tools"] = _tools(row.get("tools"), parse=False) or ""
    if opts["label"]:
        rec["kto_tag"] = row.get("label")
    rec["id"] = row["id"]
    return rec


def _lf_alpaca_parts(messages: list[dict]) -> tuple[str, list[dict]]:
    _no_tools(messages, "alpaca cannot hold (use --layout sharegpt)")
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0].get("content") or "", messages[1:]
    for j, m in enumerate(messages):
        want = "user" if j % 2 == 0 else "assistant"
        if m["role"] != want:
            raise _Skip(f"its turns do not alternate user/assistant (turn {j + 1} is {m['role']})")
    return system, messages


def _lf_alpaca_row(row: dict, kind: str, opts: dict) -> dict:
    if kind == "text":
        return {"text": row["text"], "id": row["id"]}
    if kind == "preference":
        system, body = _lf_alpaca_parts(row["prompt"] or [])
        if len(body) % 2 == 0:
            raise _Skip("its prompt does not end on a user turn")
        answers = {}
        for side in ("chosen", "rejected"):
            msg = _one_answer(_clean(row[side]), side)
            _no_tools([msg], "alpaca cannot hold (use --layout sharegpt)")
            answers[side] = msg["content"]
        last, rest = body[-1], body[:-1]
        rec = {"instruction": last.get("content") or "", "input": "", **answers}
    else:
        system, body = _lf_alpaca_parts(row["messages"] or [])
        if not body or len(body) % 2:
            raise _Skip("it does not end on an assistant turn")
        rest = body[:-2]
        rec = {"instruction": body[-2].get("content") or "", "input": "",
               "output": body[-1].get("content") or ""}
    rec["system"] = system
    rec["history"] = [[rest[k].get("content") or "", rest[k + 1].get("content") or ""]
                      for k in range(0, len(rest), 2)]
    return _lf_extras(rec, row, opts)


def _lf_schema(kind: str, opts: dict) -> pa.Schema:
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    if kind == "text":
        fields = [("text", pa.string())]
    elif opts["layout"] == "sharegpt":
        fields = [("messages", pa.list_(turn))]
        if kind == "preference":
            fields += [("chosen", turn), ("rejected", turn)]
    else:
        fields = [("instruction", pa.string()), ("input", pa.string())]
        fields += ([("chosen", pa.string()), ("rejected", pa.string())] if kind == "preference"
                   else [("output", pa.string())])
        fields += [("system", pa.string()), ("history", pa.list_(pa.list_(pa.string())))]
    if opts["tools"] and kind != "text":
        fields.append(("tools", pa.string()))
    if opts["label"] and kind != "text":
        fields.append(("kto_tag", pa.bool_()))
    fields.append(("id", pa.string()))
    return pa.schema(fields)


def _lf_info(kind: str, opts: dict, file_name: str) -> dict:
    entry: dict[str, Any] = {"file_name": file_name}
    if kind == "text":
        entry["columns"] = {"prompt": "text"}
        return entry
    entry["formatting"] = opts["layout"]
    if kind == "preference":
        entry["ranking"] = True
    if opts["layout"] == "sharegpt":
        columns = {"messages": "messages"}
    else:
        columns = {"prompt": "instruction", "query": "input", "system": "system",
                   "history": "history"}
        if kind != "preference":
            columns["response"] = "output"
    if kind == "preference":
        columns.update(chosen="chosen", rejected="rejected")
    if opts["tools"]:
        columns["tools"] = "tools"
    if opts["label"]:
        columns["kto_tag"] = "kto_tag"
    entry["columns"] = columns
    if opts["layout"] == "sharegpt":
        entry["tags"] = dict(LF_TAGS)
    return entry


# ---------------------------------------------------------------- Axolotl

def _axolotl_row(row: dict, kind: str, opts: dict) -> dict:
    if kind == "text":
        return {"text": row["text"], "id": row["id"]}
    if kind == "preference":
        prompt = _clean(row["prompt"])
        _no_tools(prompt, "Axolotl's chat_template.default DPO type cannot hold")
        if opts["tools"] and _tools(row.get("tools"), parse=False):
            raise _Skip("it declares tools, which Axolotl's chat_template.default DPO type "
                        "cannot hold")
        if not prompt:
            raise _Skip("its prompt is empty")
        rec: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]}
                                            for m in prompt]}
        for side in ("chosen", "rejected"):
            msg = _one_answer(_clean(row[side]), side)
            _no_tools([msg], "Axolotl's chat_template.default DPO type cannot hold")
            rec[side] = {"role": "assistant", "content": msg["content"]}
    else:
        # arguments stay JSON text: Axolotl parses them, and text avoids `datasets`
        # casting arguments of different tools to one struct
        rec = {"messages": _clean(row["messages"], parse_arguments=False)}
        if opts["tools"]:
            rec["tools"] = _tools(row.get("tools"), parse=False)
        if opts["label"]:
            rec["label"] = row.get("label")
    rec["id"] = row["id"]
    return rec


def _axolotl_config(kind: str, opts: dict, path: Path) -> dict:
    entry: dict[str, Any] = {"path": str(path), "ds_type": "json", "split": "train"}
    if kind == "text":
        entry.update(type="completion", field="text")
        return {"datasets": [entry]}
    if kind == "preference":
        entry.update(type="chat_template.default", field_messages="messages",
                     field_chosen="chosen", field_rejected="rejected",
                     message_property_mappings={"role": "role", "content": "content"},
                     roles={"user": ["user"], "assistant": ["assistant"], "system": ["system"]})
        return {"rl": "dpo", "datasets": [entry]}
    entry.update(type="chat_template", field_messages="messages",
                 message_property_mappings={"role": "role", "content": "content"},
                 roles_to_train=["assistant"])
    if opts["tools"]:
        entry["field_tools"] = "tools"
    return {"datasets": [entry]}


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML writer (mappings, lists, scalars; strings quoted as JSON, which is
    valid YAML), so the snippet needs no YAML package."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            sub = _yaml(item, indent + 2)
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
    else:
        lines.append(pad + _yaml_scalar(value))
    return lines


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v), ensure_ascii=False)


# ---------------------------------------------------------------- canonical rows

def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    return str(value)


# ---------------------------------------------------------------- writing

class _Writer:
    """Rows to one JSONL or Parquet file, chunk by chunk."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema | None):
        self.path, self.fmt, self.schema = path, fmt, schema
        self._fh = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None
        self._pq: pq.ParquetWriter | None = None

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if self._fh is not None:
            self._fh.write("".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n"
                                   for r in records))
            return
        table = _to_table(records, self.schema)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._pq.write_table(table)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        elif self._pq is not None:
            self._pq.close()
        else:  # nothing written: still a valid, empty file (never kept: 0 rows is an error)
            pq.write_table(self.schema.empty_table(), self.path)


def _to_table(records: list[dict], schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        values = [r.get(field.name) for r in records]
        if field.type == _JSON_LIST:
            values = [None if v is None else [json.dumps(x, ensure_ascii=False) for x in v]
                      for v in values]
            arrays.append(pa.array(values, type=pa.list_(pa.string())).cast(_JSON_LIST))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _rich_messages(table: pa.Table, columns: list[str]) -> bool:
    """Whether any message has a field beyond role and content (tool calls, ids, names)."""
    for col in columns:
        flat = pc.list_flatten(table.column(col))
        if len(flat) == 0:
            continue
        for chunk in flat.chunks:
            if not {"tool_calls", "tool_call_id", "name"} <= {f.name for f in chunk.type}:
                return True  # not the canonical message struct: keep every field
            if pc.any(pc.greater(pc.fill_null(pc.list_value_length(chunk.field("tool_calls")), 0),
                                 0)).as_py():
                return True
            if chunk.field("tool_call_id").null_count < len(chunk) or \
                    chunk.field("name").null_count < len(chunk):
                return True
    return False


def _has_values(table: pa.Table, column: str) -> bool:
    if column not in table.column_names:
        return False
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.any(pc.greater(pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0),
                                 0)).as_py() or False
    return col.null_count < len(col)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return cleaned or "curate_export"


def _check_output(out: Path, run_path: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CurateError(f"output {out} is a file, not a directory")
    o, r = out.resolve(), run_path.resolve()
    if o == r or r in o.parents or o in r.parents:
        raise CurateError(f"output directory {out} is inside the run {run_path} (or holds it); "
                          "choose an output outside the run")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CurateError(f"output directory {out} is not empty; choose another --output or "
                              "pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise CurateError(f"output directory {out} is not empty and holds no curate export "
                              f"({MANIFEST}); refusing to delete it even with --overwrite")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` (absent, empty, or an old export) by the finished ``tmp``."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "x")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _resolve_options(to: str, kind: str, fmt: str | None, layout: str | None,
                     has_label: bool) -> tuple[str, str | None]:
    if to not in TARGETS:
        raise CurateError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    if fmt is not None and fmt not in FORMATS:
        raise CurateError(f"unknown format {fmt!r}; choose parquet or jsonl")
    if to in ("jsonl", "parquet"):
        if fmt not in (None, to):
            raise CurateError(f"--to {to} writes {to}; --format {fmt} contradicts it")
        if layout is not None:
            raise CurateError(f"--to {to} writes the canonical rows; --layout applies to trl and "
                              "llamafactory")
        return to, None
    if to == "axolotl":
        if fmt not in (None, "jsonl"):
            raise CurateError("--to axolotl writes JSONL (Axolotl's chat_template datasets); "
                              "use --format jsonl or leave it out")
        if layout is not None:
            raise CurateError("--to axolotl has one layout (chat_template); leave --layout out")
        return "jsonl", None
    choices = LAYOUTS[to]
    if layout is not None and layout not in choices:
        raise CurateError(f"--to {to} has layouts {', '.join(choices)}, not {layout!r}")
    if to == "trl" and kind != "sft" and layout is not None:
        raise CurateError(f"--layout {layout} is for sft runs; this run is {kind} "
                          f"({'prompt/chosen/rejected' if kind == 'preference' else 'text'})")
    if kind == "text" and to == "llamafactory" and layout == "sharegpt":
        raise CurateError("LLaMA-Factory reads plain text only in the alpaca layout; "
                          "leave --layout out")
    if to == "trl" and kind != "sft":
        layout = kind  # preference (prompt/chosen/rejected) or text
    if layout is None:
        if to == "trl":
            layout = "prompt_completion" if has_label else "messages"
        else:
            layout = "alpaca" if kind == "text" else "sharegpt"
    return fmt or ("parquet" if to == "trl" else "jsonl"), layout


def export(run_dir: str | Path, to: str, output: str | Path, *, format: str | None = None,
           layout: str | None = None, name: str | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    """Export the selected rows of a complete run to ``output`` for a trainer.

    ``to``: trl, llamafactory, axolotl, jsonl or parquet. ``format``: parquet or jsonl
    (trl: parquet by default; llamafactory: jsonl). ``layout``: trl ``messages`` or
    ``prompt_completion``; llamafactory ``sharegpt`` or ``alpaca``. ``name``: the dataset
    name (LLaMA-Factory's ``dataset:``, file names) [default: the run folder's name].

    Returns what was written: output, files, rows, skipped rows with reasons, warnings.
    """
    to = (to or "").lower()
    run = open_run(run_dir)
    out = Path(output)
    if to not in TARGETS:
        raise CurateError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    table = run.table("selected")
    if table.num_rows == 0:
        raise CurateError(f"run {run.path} has no selected rows; nothing to export")
    try:
        kind = kind_of(table.schema)
    except ValueError as err:
        raise CurateError(f"run {run.path}: selected rows are not canonical ({err})") from err
    has_label = kind == "sft" and _has_values(table, "label")
    fmt, layout = _resolve_options(to, kind, format, layout, has_label)
    _check_output(out, run.path, overwrite)
    ds_name = _safe_name(name if name is not None else run.path.resolve().name)
    if name is not None and ds_name != name:
        raise CurateError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    msg_cols = {"sft": ["messages"], "preference": ["prompt", "chosen", "rejected"]}.get(kind, [])
    opts = {"layout": layout, "label": has_label,
            "tools": kind != "text" and _has_values(table, "tools"),
            "rich": bool(msg_cols) and _rich_messages(table, msg_cols)}

    convert: Callable[[dict, str, dict], dict] | None
    schema: pa.Schema | None = None
    if to == "trl":
        convert, file_name, schema = _trl_row, f"train.{fmt}", _trl_schema(kind, opts)
    elif to == "llamafactory":
        convert = _lf_sharegpt_row if layout == "sharegpt" else _lf_alpaca_row
        file_name, schema = f"{ds_name}.{fmt}", _lf_schema(kind, opts)
    elif to == "axolotl":
        convert, file_name = _axolotl_row, f"{ds_name}.jsonl"
    else:
        convert, file_name = None, f"{ds_name}.{fmt}"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    final = out.resolve()
    skipped: list[dict[str, str]] = []
    rows = 0
    try:
        if convert is None and fmt == "parquet":
            pq.write_table(table, tmp / file_name, compression="zstd")
            rows = table.num_rows
        else:
            writer = _Writer(tmp / file_name, fmt, schema)
            try:
                for batch in _batches(table):
                    records = []
                    for row in batch:
                        if convert is None:
                            records.append(row)
                            continue
                        try:
                            records.append(convert(row, kind, opts))
                        except _Skip as why:
                            skipped.append({"id": row["id"], "reason": str(why)})
                    writer.write(records)
                    rows += len(records)
            finally:
                writer.close()
        if rows == 0:
            raise CurateError(f"none of the {table.num_rows} selected rows of {run.path} fits "
                              f"{to} ({layout}): {_reasons(skipped)}; nothing written")
        files = [file_name]
        if to == "llamafactory":
            _write_json({ds_name: _lf_info(kind, opts, file_name)}, tmp / "dataset_info.json")
            files.append("dataset_info.json")
        elif to == "axolotl":
            config = _axolotl_config(kind, opts, final / file_name)
            (tmp / "axolotl.yaml").write_text(
                f"# Axolotl datasets entry for {file_name} (curate export of {run.path.resolve()})\n"
                + "\n".join(_yaml(config)) + "\n", encoding="utf-8")
            files.append("axolotl.yaml")
        warnings = _warnings(table, kind, to, opts, skipped)
        result = {"output": str(out), "to": to, "kind": kind, "layout": layout, "format": fmt,
                  "name": ds_name, "rows": rows, "selected": table.num_rows,
                  "files": [str(out / f) for f in files + [MANIFEST]],
                  "skipped": skipped, "warnings": warnings}
        manifest = {"status": "complete", "run": str(run.path.resolve()),
                    "run_key": (run.manifest() or {}).get("run_key"),
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    **{k: v for k, v in result.items() if k not in ("output", "files")},
                    "files": files}
        _write_json(manifest, tmp / MANIFEST)
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _batches(table: pa.Table) -> Iterator[list[dict]]:
    for batch in table.to_batches(max_chunksize=CHUNK_ROWS):
        yield batch.to_pylist()


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _reasons(skipped: list[dict[str, str]], top: int = 3) -> str:
    counts = Counter(s["reason"] for s in skipped)
    return "; ".join(f"{n} row(s): {r}" for r, n in counts.most_common(top)) or "no rows"


def _warnings(table: pa.Table, kind: str, to: str, opts: dict,
              skipped: list[dict[str, str]]) -> list[str]:
    out = []
    if skipped:
        out.append(f"{len(skipped)} of {table.num_rows} selected rows left out "
                   f"(ids and reasons in {MANIFEST}): {_reasons(skipped)}")
    if opts["label"] and to in ("trl", "axolotl", "llamafactory"):
        bad = pc.sum(pc.equal(table.column("label"), False)).as_py() or 0
        if bad:
            use = {"trl": "train with KTOTrainer (prompt/completion/label) or filter them out",
                   "llamafactory": "train with stage: kto (kto_tag) or filter them out",
                   "axolotl": "filter them out before SFT"}[to]
            out.append(f"{bad} exported rows are labelled undesirable (label false); an SFT "
                       f"trainer learns them like the others: {use}")
    return out


def describe(result: dict[str, Any]) -> list[str]:
    """Lines telling a person what was written and how to load it."""
    out = result["output"]
    lines = [f"exported {result['rows']} of {result['selected']} selected rows "
             f"({result['kind']}) to {result['to']}"
             + (f" ({result['layout']}, {result['format']})" if result["layout"] else
                f" ({result['format']})") + f": {out}"]
    lines += [f"warning: {w}" for w in result["warnings"]]
    data = result["files"][0]
    if result["to"] == "trl":
        builder = "json" if result["format"] == "jsonl" else "parquet"
        lines.append(f"load: datasets.load_dataset({builder!r}, data_files={data!r}, split='train')")
    elif result["to"] == "llamafactory":
        lines.append(f"LLaMA-Factory config: dataset_dir: {out}  dataset: {result['name']}")
    elif result["to"] == "axolotl":
        lines.append(f"Axolotl: copy the datasets entry of {result['files'][1]} into your config")
    return lines
