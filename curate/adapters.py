"""Adapters from common dataset layouts to the canonical columns.

Each adapter turns one raw row (a dict) into canonical values or raises
``BadRow`` with a reason; ``validate`` then applies the rules every row of a
kind must meet. ``detect`` picks the adapter from the columns of the input.

| name              | columns                                   | kind       |
|-------------------|-------------------------------------------|------------|
| openai            | messages [+ chosen, rejected]             | sft / pref |
| sharegpt          | conversations (from/value) [+ chosen, rejected] | sft / pref |
| alpaca            | instruction, input, output [+ system, history] | sft  |
| ranked            | instruction/prompt + several rated responses | preference |
| pairwise          | instruction, output_1, output_2, preference | preference |
| prompt_completion | prompt/question + completion/response/answer | sft   |
| prompt_pair       | prompt, chosen, rejected (strings)        | preference |
| hh_rlhf           | chosen, rejected ("\\n\\nHuman: ... \\n\\nAssistant: ...") | preference |
| text              | text                                      | text       |
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from curate.errors import InputError
from curate.schema import ROLES, has_answer


class BadRow(ValueError):
    """A row that cannot become a canonical row; the message is the reason."""


Row = dict[str, Any]
Msgs = list[dict[str, Any]]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "model": "assistant", "system": "system", "function_call": "assistant",
                  "observation": "tool", "tool": "tool", "function": "tool"}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user",
                "assistant": "assistant", "tool": "tool", "function": "tool"}


def _text_content(content: Any, role: Any) -> str:
    """Message content as one string: a list of parts (``[{"type": "text", "text": ...}]``)
    is joined with newlines; a part that is not text is a bad row."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise BadRow(f"a content part of a {role} turn is a {type(part).__name__}")
            if part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                raise BadRow(f"content part of type {part.get('type')!r} in a {role} turn "
                             "(curate reads text parts only)")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRow(f"non-string content ({type(content).__name__}) in a {role} turn")


def _arguments(value: Any) -> str | None:
    """Tool-call arguments as JSON text (a string is kept exactly as given)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _tool_calls(calls: Any, role: Any) -> list[dict] | None:
    if calls is None:
        return None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, (list, tuple)):
        raise BadRow(f"tool_calls of a {role} turn is a {type(calls).__name__}, expected a list")
    out = []
    for c in calls:
        if not isinstance(c, dict):
            raise BadRow(f"a tool call of a {role} turn is a {type(c).__name__}")
        fn = c.get("function") if isinstance(c.get("function"), dict) else c
        if not isinstance(fn.get("name"), str):
            raise BadRow(f"a tool call of a {role} turn has no function name")
        out.append({"id": None if c.get("id") is None else str(c["id"]),
                    "type": c.get("type") or "function",
                    "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments"))}})
    return out or None


def _msg(role: Any, content: Any, roles: dict[str, str], source: dict | None = None) -> dict:
    """A canonical message; ``source`` is the raw message (for tool calls, tool ids, names)."""
    if not isinstance(role, str) or role.lower() not in roles:
        raise BadRow(f"unknown role {role!r}")
    src = source or {}
    calls = _tool_calls(src.get("tool_calls"), role)
    if calls is None and isinstance(src.get("function_call"), dict):  # legacy OpenAI
        calls = _tool_calls([src["function_call"]], role)
    name = src.get("name")
    call_id = src.get("tool_call_id")
    return {"role": roles[role.lower()], "content": _text_content(content, role),
            "tool_calls": calls, "tool_call_id": None if call_id is None else str(call_id),
            "name": name if isinstance(name, str) else None}


def _sharegpt_function_call(value: Any) -> dict:
    """A ShareGPT ``function_call`` turn (JSON text ``{"name", "arguments"}``) as an
    assistant message with one tool call; text that is not such JSON stays content."""
    try:
        call = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        call = None
    if isinstance(call, dict) and isinstance(call.get("name"), str):
        return {"role": "assistant", "content": "", "tool_calls": _tool_calls([call], "function_call"),
                "tool_call_id": None, "name": None}
    return _msg("function_call", value, SHAREGPT_ROLES)


def _as_list(value: Any, what: str) -> list:
    if value is None:
        raise BadRow(f"{what} is null")
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise BadRow(f"{what} is a {type(value).__name__}, expected a list")
    return list(value)


def _str(value: Any, what: str, allow_empty: bool = False) -> str:
    if value is None:
        if allow_empty:
            return ""
        raise BadRow(f"{what} is null")
    if not isinstance(value, str):
        raise BadRow(f"{what} is not a string ({type(value).__name__})")
    return value


def _openai_msgs(value: Any, what: str) -> Msgs:
    out = []
    for m in _as_list(value, what):
        if not isinstance(m, dict):
            raise BadRow(f"{what} holds a {type(m).__name__}, expected {{role, content}}")
        out.append(_msg(m.get("role"), m.get("content"), OPENAI_ROLES, m))
    return out


def _sharegpt_msgs(value: Any, what: str) -> Msgs:
    out = []
    for m in _as_list(value, what):
        if not isinstance(m, dict):
            raise BadRow(f"{what} holds a {type(m).__name__}, expected {{from, value}}")
        role = m.get("from", m.get("role"))
        value = m.get("value", m.get("content"))
        if isinstance(role, str) and role.lower() == "function_call":
            out.append(_sharegpt_function_call(value))
        else:
            out.append(_msg(role, value, SHAREGPT_ROLES, m))
    return out


def message(role: str, content: str) -> dict:
    """A canonical message with text only."""
    return {"role": role, "content": content, "tool_calls": None, "tool_call_id": None,
            "name": None}


def _user_prompt(instruction: Any, extra: Any = None, system: Any = None, history: Any = None) -> Msgs:
    msgs: Msgs = []
    if system:
        msgs.append(message("system", _str(system, "system")))
    for pair in history or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise BadRow("history entry is not a [user, assistant] pair")
        msgs.append(message("user", _str(pair[0], "history user turn")))
        msgs.append(message("assistant", _str(pair[1], "history assistant turn")))
    text = _str(instruction, "instruction")
    extra = _str(extra, "input", allow_empty=True)
    msgs.append(message("user", f"{text}\n\n{extra}" if extra.strip() else text))
    return msgs


def _answer(text: Any, what: str) -> Msgs:
    return [message("assistant", _str(text, what))]


def _split_preference(chosen: Msgs, rejected: Msgs) -> Row:
    """Split two full conversations into shared prompt and differing answers."""
    i = 0
    while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
        i += 1
    # the answers start at the last assistant turn of the shared prefix boundary
    while i > 0 and chosen[i - 1]["role"] == "assistant":
        i -= 1
    return {"prompt": chosen[:i], "chosen": chosen[i:], "rejected": rejected[i:]}


# --- adapters ---------------------------------------------------------------

def openai(row: Row) -> Row:
    messages = _openai_msgs(row.get("messages"), "messages")
    if "chosen" in row and "rejected" in row:
        return _pref_from_prompt(messages, row["chosen"], row["rejected"], _openai_msgs)
    return {"messages": messages}


def sharegpt(row: Row) -> Row:
    messages = _sharegpt_msgs(row.get("conversations"), "conversations")
    if "system" in row and row["system"]:
        messages = [message("system", _str(row["system"], "system"))] + messages
    if "chosen" in row and "rejected" in row:
        return _pref_from_prompt(messages, row["chosen"], row["rejected"], _sharegpt_msgs)
    return {"messages": messages}


def _pref_from_prompt(prompt: Msgs, chosen: Any, rejected: Any,
                      parse: Callable[[Any, str], Msgs]) -> Row:
    def answer(v: Any, what: str) -> Msgs:
        return _answer(v, what) if isinstance(v, str) else parse(v, what)
    return {"prompt": prompt, "chosen": answer(chosen, "chosen"),
            "rejected": answer(rejected, "rejected")}


def alpaca(row: Row) -> Row:
    msgs = _user_prompt(row.get("instruction"), row.get("input"), row.get("system"),
                        row.get("history"))
    return {"messages": msgs + _answer(row.get("output"), "output")}


def _ranked_responses(row: Row) -> list[tuple[str, float]]:
    """(response, score) pairs of a multi-response row; higher score is better."""
    if isinstance(row.get("completions"), (list, tuple)):  # UltraFeedback style
        pairs = []
        for c in row["completions"]:
            if not isinstance(c, dict):
                raise BadRow("completions holds a non-object")
            text = c.get("response", c.get("text", c.get("output")))
            score = next((c[k] for k in ("overall_score", "score", "rating", "fine-grained_score")
                          if c.get(k) is not None), None)
            if score is None:
                raise BadRow("a completion has no score")
            pairs.append((_str(text, "completion"), float(score)))
        return pairs
    responses, scores = row.get("responses"), row.get("scores", row.get("ratings"))
    if not isinstance(responses, (list, tuple)) or not isinstance(scores, (list, tuple)):
        raise BadRow("responses/scores are not lists")
    if len(responses) != len(scores):
        raise BadRow(f"{len(responses)} responses but {len(scores)} scores")
    return [(_str(r, "response"), float(s)) for r, s in zip(responses, scores)]


def ranked(row: Row) -> Row:
    """Several rated responses to one prompt become one pair: the best vs the worst.
    An ``output`` list is ordered best first (LLaMA-Factory ranking data): ``output[0]``
    vs ``output[-1]``. Scored responses: highest vs lowest score (the first of equal
    scores wins)."""
    if isinstance(row.get("output"), (list, tuple)):
        outs = list(row["output"])
        if len(outs) < 2:
            raise BadRow(f"{len(outs)} response(s); a preference pair needs two")
        return {"prompt": _user_prompt(row.get("instruction", row.get("prompt")), row.get("input"),
                                       row.get("system"), row.get("history")),
                "chosen": _answer(outs[0], "output[0]"),
                "rejected": _answer(outs[-1], f"output[{len(outs) - 1}]")}
    pairs = _ranked_responses(row)
    if len(pairs) < 2:
        raise BadRow(f"{len(pairs)} response(s); a preference pair needs two")
    best = max(range(len(pairs)), key=lambda i: (pairs[i][1], -i))
    worst = min(range(len(pairs)), key=lambda i: (pairs[i][1], i))
    if pairs[best][1] == pairs[worst][1]:
        raise BadRow("all responses have the same score")
    prompt_text = row.get("instruction", row.get("prompt"))
    return {"prompt": _user_prompt(prompt_text, row.get("input"), row.get("system"),
                                   row.get("history")),
            "chosen": _answer(pairs[best][0], "chosen"),
            "rejected": _answer(pairs[worst][0], "rejected")}


def pairwise(row: Row) -> Row:
    """Two outputs and a judge's preference in [1, 2] (AlpacaEval: 1 + P(output_2 wins));
    below 1.5 output_1 is chosen, above it output_2; exactly 1.5 is a tie."""
    pref = row.get("preference")
    if not isinstance(pref, (int, float)) or not 1 <= pref <= 2:
        raise BadRow("preference not a number in [1, 2]")
    if pref == 1.5:
        raise BadRow("tied preference")
    a, b = _answer(row.get("output_1"), "output_1"), _answer(row.get("output_2"), "output_2")
    chosen, rejected = (a, b) if pref < 1.5 else (b, a)
    return {"prompt": _user_prompt(row.get("instruction"), row.get("input")),
            "chosen": chosen, "rejected": rejected}


PROMPT_KEYS = ("prompt", "question", "query")
ANSWER_KEYS = ("completion", "response", "answer")


def prompt_completion(row: Row) -> Row:
    prompt = next(row[k] for k in PROMPT_KEYS if k in row)
    answer = next(row[k] for k in ANSWER_KEYS if k in row)
    return {"messages": _user_prompt(prompt) + _answer(answer, "completion")}


def prompt_pair(row: Row) -> Row:
    prompt = row.get("prompt")
    msgs = _openai_msgs(prompt, "prompt") if isinstance(prompt, list) else _user_prompt(prompt)
    return _pref_from_prompt(msgs, row.get("chosen"), row.get("rejected"), _openai_msgs)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh(transcript: Any, what: str) -> Msgs:
    """Parse an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")."""
    text = _str(transcript, what)
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise BadRow(f"{what} is not a Human/Assistant transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [message(roles[parts[i]], parts[i + 1]) for i in range(1, len(parts), 2)]


def hh_rlhf(row: Row) -> Row:
    chosen = parse_hh(row.get("chosen"), "chosen")
    rejected = parse_hh(row.get("rejected"), "rejected")
    return _split_preference(chosen, rejected)


def text(row: Row) -> Row:
    return {"text": _str(row.get("text"), "text")}


def any_text(row: Row) -> Row:
    """Every string and list-of-strings value of a row, in column order, as one text
    (``--kind text`` on a layout no adapter knows, such as MT-Bench's ``turns``)."""
    parts: list[str] = []
    for value in row.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            parts.extend(value)
    return {"text": "\n\n".join(p for p in parts if p.strip())}


@dataclass(frozen=True)
class Adapter:
    name: str
    kind: str  # "sft", "preference", "text", or "sft|preference" (decided by columns)
    convert: Callable[[Row], Row]
    detect: Callable[[set[str], Row], bool]
    needs: tuple[tuple[str, ...], ...] = ()  # per group, a row must have one of these

    def kind_for(self, columns: set[str]) -> str:
        if self.kind != "sft|preference":
            return self.kind
        return "preference" if {"chosen", "rejected"} <= columns else "sft"

    def check(self, row: Row) -> None:
        """BadRow naming the missing column when a row does not fit this layout."""
        for group in self.needs:
            if all(row.get(c) is None for c in group):
                raise BadRow(f"row has no {' or '.join(group)}; the file's layout is {self.name}")


def _is_hh(cols: set[str], row: Row) -> bool:
    return {"chosen", "rejected"} <= cols and isinstance(row.get("chosen"), str) \
        and "Human:" in row["chosen"] and "prompt" not in cols


def _is_ranked(cols: set[str], row: Row) -> bool:
    return (bool(cols & {"instruction", "prompt"}) and
            (isinstance(row.get("output"), (list, tuple)) or "completions" in cols
             or ({"responses"} <= cols and bool(cols & {"scores", "ratings"}))))


ADAPTERS: dict[str, Adapter] = {a.name: a for a in [
    Adapter("openai", "sft|preference", openai, lambda c, r: "messages" in c, (("messages",),)),
    Adapter("sharegpt", "sft|preference", sharegpt, lambda c, r: "conversations" in c,
            (("conversations",),)),
    Adapter("hh_rlhf", "preference", hh_rlhf, _is_hh, (("chosen",), ("rejected",))),
    Adapter("ranked", "preference", ranked, _is_ranked, (("instruction", "prompt"),)),
    Adapter("pairwise", "preference", pairwise,
            lambda c, r: {"output_1", "output_2", "preference"} <= c,
            (("output_1",), ("output_2",), ("preference",))),
    Adapter("alpaca", "sft", alpaca, lambda c, r: {"instruction", "output"} <= c,
            (("instruction",), ("output",))),
    Adapter("prompt_pair", "preference", prompt_pair,
            lambda c, r: {"prompt", "chosen", "rejected"} <= c,
            (("prompt",), ("chosen",), ("rejected",))),
    Adapter("prompt_completion", "sft", prompt_completion,
            lambda c, r: bool(c & set(PROMPT_KEYS)) and bool(c & set(ANSWER_KEYS)),
            (PROMPT_KEYS, ANSWER_KEYS)),
    Adapter("text", "text", text, lambda c, r: "text" in c, (("text",),)),
]}
ANY_TEXT = Adapter("any_text", "text", any_text, lambda c, r: True)


def _present(row: Row) -> set[str]:
    return {k for k, v in row.items() if v is not None}


def detect(rows: list[Row], file: str, *, kind: str | None = None) -> Adapter:
    """The layout of a file, decided from its columns over ``rows`` (its first chunk):
    the adapter that fits the most rows (ties: the order of ``ADAPTERS``). With
    ``kind="text"`` a file no adapter fits is read as ``any_text``; otherwise it is an
    InputError listing the layouts."""
    counts = dict.fromkeys(ADAPTERS, 0)
    for row in rows[:1000]:
        present = _present(row)
        for adapter in ADAPTERS.values():
            if adapter.detect(present, row):
                counts[adapter.name] += 1
                break
    best = max(counts, key=lambda name: counts[name])  # first of equal counts wins
    if counts[best]:
        return ADAPTERS[best]
    if kind == "text":
        return ANY_TEXT
    columns = sorted(set().union(*(r.keys() for r in rows)))
    raise InputError(
        f"{file}: columns {columns} match none of the known layouts "
        f"({', '.join(ADAPTERS)}); map your columns (--map prompt=COLUMN --map response=COLUMN, "
        "or read(..., columns={...})), pass --adapter, or --kind text")


def get_adapter(name: str) -> Adapter:
    if name == ANY_TEXT.name:
        return ANY_TEXT
    if name not in ADAPTERS:
        raise InputError(f"unknown adapter {name!r}; choose one of {', '.join(ADAPTERS)}, "
                         f"{ANY_TEXT.name}")
    return ADAPTERS[name]


# --- validation of canonical rows -------------------------------------------

def _check_messages(msgs: Msgs, what: str) -> None:
    for m in msgs:
        if m["role"] not in ROLES:
            raise BadRow(f"unknown role {m['role']!r} in {what}")


def validate(kind: str, row: Row) -> None:
    """Raise BadRow if a canonical row cannot be trained on. An assistant turn that
    only calls a tool (no text) is a real answer."""
    if kind == "text":
        if not row["text"].strip():
            raise BadRow("empty text")
        return
    if kind == "sft":
        msgs = row["messages"]
        if not msgs:
            raise BadRow("empty messages")
        _check_messages(msgs, "messages")
        if not any(m["role"] == "user" for m in msgs):
            raise BadRow("no user turn")
        answers = [m for m in msgs if m["role"] == "assistant"]
        if not answers:
            raise BadRow("no assistant turn")
        if not has_answer(answers[-1]):
            raise BadRow("empty response")
        if not any(m["content"].strip() for m in msgs if m["role"] == "user"):
            raise BadRow("empty instruction")
        return
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    for what, msgs in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not msgs:
            raise BadRow(f"empty {what}")
        _check_messages(msgs, what)
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise BadRow("empty prompt")
    for what, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["role"] == "assistant" and has_answer(m) for m in msgs):
            raise BadRow(f"empty {what} response")
