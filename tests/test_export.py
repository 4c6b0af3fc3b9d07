"""Exports of a run's selected rows, on real rows of tests/data:
tool calls (glaive), Chinese multi-turn chats (oaast_sft_zh), preference pairs with
system prompts (dpo_en_demo), HH-RLHF transcripts, KTO labels, and an OpenAI-layout
file with system turns built from real rows.

TRL exports are read back with ``datasets`` and checked with TRL's own utilities and
trainers (one optimisation step each on CPU with the embedded model); LLaMA-Factory
and Axolotl are not installed here (they pin other TRL/datasets versions), so their
exports are checked against their documented schemas and their loaders' rules.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from conftest import DATA, cli

from curate import read
from curate.errors import CurateError
from curate.export import LF_OBSERVATION_SEP, MANIFEST, export
from curate.run import open_run

yaml = pytest.importorskip("yaml")
datasets.disable_progress_bars()

LF = DATA / "llamafactory"
# documented keys of a LLaMA-Factory dataset_info.json entry (data/README.md)
LF_ENTRY_KEYS = {"hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name", "file_name",
                 "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns",
                 "tags"}
LF_COLUMN_KEYS = {"prompt", "query", "response", "history", "messages", "system", "tools",
                  "images", "videos", "audios", "chosen", "rejected", "kto_tag"}
LF_TAG_KEYS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag",
               "function_tag", "system_tag"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "function_call",
                  "observation": "observation", "system": "system"}
# a chat template that renders what SmolLM2's does not: the tools and the tool calls
TOOL_TEMPLATE = (
    "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</call>{% endfor %}\n{% endfor %}")


def make_run(tmp: Path, source: Path, name: str) -> Path:
    out = tmp / name
    read(source).write(out, quiet=True, cache_dir=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One run per real data file (every good row selected)."""
    tmp = tmp_path_factory.mktemp("export_runs")
    # an OpenAI-layout JSONL with system turns, from the real dpo_en_demo rows that have one
    rows = [r for r in pq.read_table(LF / "dpo_en_demo.parquet").to_pylist()
            if r["conversations"][0]["from"] == "system"][:40]
    assert len(rows) == 40
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    system_file = tmp / "system_chats.jsonl"
    with open(system_file, "w", encoding="utf-8") as fh:
        for r in rows:
            msgs = [{"role": role[t["from"]], "content": t["value"]}
                    for t in r["conversations"] + [r["chosen"]]]
            fh.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return {
        "system": make_run(tmp, system_file, "system_chats"),
        "glaive": make_run(tmp, LF / "glaive_toolcall_en_demo.parquet", "glaive"),
        "oaast": make_run(tmp, LF / "oaast_sft_zh.parquet", "oaast_sft_zh"),
        "dpo": make_run(tmp, LF / "dpo_en_demo.parquet", "dpo_en_demo"),
        "hh": make_run(tmp, DATA / "hh_rlhf" / "harmless_base_test.parquet", "hh_rlhf"),
        "kto": make_run(tmp, LF / "kto_en_demo.parquet", "kto"),
    }


@pytest.fixture(scope="module")
def tok():
    from curate.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def selected(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in open_run(run).table("selected").to_pylist()}


def load(result: dict) -> datasets.Dataset:
    data = result["files"][0]
    builder = "json" if data.endswith(".jsonl") else "parquet"
    return datasets.load_dataset(builder, data_files=data, split="train")


def plain(messages: list[dict]) -> list[dict]:
    """Canonical messages as {role, content} (what a chat without tools exports to)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def nulls(value, path="") -> list[str]:
    """Where a nested value holds None (exports drop null fields)."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


# ---------------------------------------------------------------- TRL

@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_trl_sft_with_system_prompts_loads_and_renders(runs, tok, tmp_path, fmt):
    from trl.data_utils import apply_chat_template, is_conversational

    res = export(runs["system"], "trl", tmp_path / "out", format=fmt)
    assert res["rows"] == 40 and res["layout"] == "messages" and not res["skipped"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted([f"train.{fmt}", MANIFEST])
    ds = load(res)
    assert set(ds.column_names) == {"messages", "id"}
    canon = selected(runs["system"])
    for row in ds:
        assert is_conversational(row)
        assert row["messages"] == plain(canon[row["id"]]["messages"])
        assert row["messages"][0]["role"] == "system"
        text = apply_chat_template({"messages": row["messages"]}, tok)["text"]
        assert text.startswith("<|im_start|>system\n" + row["messages"][0]["content"] + "<|im_end|>")
        assert row["messages"][-1]["content"] in text
    # the whole folder is also a dataset: load_dataset(DIR) finds the train split
    assert datasets.load_dataset(str(tmp_path / "out"), split="train").num_rows == 40


def test_trl_multi_turn_non_ascii_prompt_completion(runs, tok, tmp_path):
    from trl.data_utils import apply_chat_template, is_conversational

    res = export(runs["oaast"], "trl", tmp_path / "pc", format="jsonl", layout="prompt_completion")
    assert res["rows"] == 689 and not res["skipped"]
    raw = Path(res["files"][0]).read_text(encoding="utf-8")
    canon = selected(runs["oaast"])
    multi = 0
    for line, row in zip(raw.splitlines(), load(res)):
        rec = json.loads(line)
        assert rec == row  # what datasets reads is the file, unchanged
        msgs = canon[row["id"]]["messages"]
        assert row["prompt"] == plain(msgs[:-1]) and row["completion"] == plain(msgs[-1:])
        # non-ASCII text is written as UTF-8, byte for byte, not as \u escapes
        answer = msgs[-1]["content"]
        assert json.dumps(answer, ensure_ascii=False) in line
        multi += len(msgs) > 2
        assert is_conversational(row)
        out = apply_chat_template({"prompt": row["prompt"], "completion": row["completion"]}, tok)
        assert out["prompt"] + out["completion"] == tok.apply_chat_template(plain(msgs), tokenize=False)
        assert out["prompt"].endswith("<|im_start|>assistant\n")
    assert multi == 390  # rows with history: every earlier turn is in the prompt
    assert "\\u" not in raw[:20000] and "布洛芬" in raw


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_trl_tool_calls_and_tools_reach_the_chat_template_as_dicts(runs, tok, tmp_path, fmt):
    from trl.data_utils import apply_chat_template, is_conversational

    res = export(runs["glaive"], "trl", tmp_path / "tools", format=fmt)
    assert res["rows"] == 300
    ds = load(res)
    canon = selected(runs["glaive"])
    calls = 0
    for row in ds:
        src = canon[row["id"]]
        assert is_conversational(row)
        assert row["tools"] == json.loads(src["tools"])  # a list of schema dicts ([] for none)
        assert all(isinstance(t, dict) and t["name"] for t in row["tools"])
        assert not nulls(row["messages"]), nulls(row["messages"])  # null fields dropped
        assert [m["role"] for m in row["messages"]] == [m["role"] for m in src["messages"]]
        for got, want in zip(row["messages"], src["messages"]):
            assert got["content"] == want["content"]
            if want["tool_calls"]:
                calls += 1
                (call,), (wcall,) = got["tool_calls"], want["tool_calls"]
                assert call["type"] == "function" and "id" not in call  # glaive calls have no id
                assert call["function"]["name"] == wcall["function"]["name"]
                assert call["function"]["arguments"] == json.loads(wcall["function"]["arguments"])
        text = apply_chat_template({"messages": row["messages"]}, tok, tools=row["tools"],
                                   chat_template=TOOL_TEMPLATE)["text"]
        if row["tools"]:
            tools_line = text.splitlines()[0]
            assert tools_line.startswith("TOOLS ") and json.loads(tools_line[6:]) == row["tools"]
        rendered = re.findall(r"<call>(\S+) (.*?)</call>", text)
        wanted = [c["function"] for m in src["messages"] for c in m["tool_calls"] or ()]
        assert len(rendered) == len(wanted)
        for (name, args), want in zip(rendered, wanted):
            assert name == want["name"] and args.startswith("{")  # an object, not a string
            assert json.loads(args) == json.loads(want["arguments"])
    assert calls == 211  # the function_call turns of the source file


def test_trl_dpo_pairs_with_system_prompts(runs, tok, tmp_path):
    from trl.data_utils import apply_chat_template, is_conversational

    res = export(runs["dpo"], "trl", tmp_path / "dpo")
    assert res["rows"] == 300 and res["layout"] == "preference"
    ds = load(res)
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "id"}
    canon = selected(runs["dpo"])
    systems = 0
    for row in ds:
        src = canon[row["id"]]
        assert is_conversational(row)
        for col in ("prompt", "chosen", "rejected"):
            assert row[col] == plain(src[col])
        systems += row["prompt"][0]["role"] == "system"
        out = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
        assert out["chosen"].startswith(row["chosen"][0]["content"])
        assert out["rejected"].startswith(row["rejected"][0]["content"])
        assert out["prompt"].endswith("<|im_start|>assistant\n")
    assert systems == 80


def test_trl_kto_labels_default_to_unpaired_preference(runs, tok, tmp_path):
    from trl.data_utils import maybe_apply_chat_template

    res = export(runs["kto"], "trl", tmp_path / "kto")
    assert res["layout"] == "prompt_completion"
    ds = load(res)
    assert set(ds.column_names) == {"prompt", "completion", "label", "id"}
    canon = selected(runs["kto"])
    assert {row["id"]: row["label"] for row in ds} == {i: r["label"] for i, r in canon.items()}
    assert sum(ds["label"]) == 150
    out = maybe_apply_chat_template({k: ds[0][k] for k in ("prompt", "completion", "label")}, tok)
    assert out["label"] is ds[0]["label"] and out["completion"].endswith("<|im_end|>\n")
    assert any("150 exported rows are labelled undesirable" in w for w in res["warnings"])


def _train_args(cls, tmp: Path):
    return cls(output_dir=str(tmp), use_cpu=True, bf16=False, report_to="none", max_steps=1,
               per_device_train_batch_size=1, gradient_checkpointing=False, max_length=256,
               save_strategy="no", logging_steps=1, seed=0)


def test_sft_trainer_runs_a_step_on_the_export(runs, tok, tmp_path):
    import math

    from trl import SFTConfig, SFTTrainer

    from curate.models import load_causal_lm

    ds = load(export(runs["system"], "trl", tmp_path / "sft", layout="prompt_completion"))
    model = load_causal_lm("smollm2-135m", device="cpu")
    size = [sum(len(m["content"]) for m in r["prompt"] + r["completion"]) for r in ds]
    ds = ds.select(sorted(range(len(ds)), key=size.__getitem__)[:2])  # two short rows
    trainer = SFTTrainer(model=model, args=_train_args(SFTConfig, tmp_path / "t"),
                         train_dataset=ds, processing_class=tok)
    assert len(trainer.train_dataset) == 2  # none dropped for its length
    first, row = trainer.train_dataset[0], ds[0]
    # completion-only loss: the answer's tokens carry labels, the system and user turns do not
    learned = tok.decode([t for t in first["labels"] if t != -100])
    assert learned.startswith(row["completion"][0]["content"][:40])
    assert row["prompt"][0]["content"][:40] not in learned
    assert tok.decode(first["input_ids"]).startswith("<|im_start|>system\n" + row["prompt"][0]["content"][:40])
    loss = trainer.train().training_loss
    assert math.isfinite(loss) and loss > 0
    # the tool-call export (Arrow JSON messages and tools in Parquet) tokenizes too
    tools = load(export(runs["glaive"], "trl", tmp_path / "tools")).select(range(3))
    tool_trainer = SFTTrainer(model=model, args=_train_args(SFTConfig, tmp_path / "t2"),
                              train_dataset=tools, processing_class=tok)
    assert all(len(r["input_ids"]) > 20 for r in tool_trainer.train_dataset)


def test_dpo_trainer_runs_a_step_on_the_export(runs, tok, tmp_path):
    import math

    from trl import DPOConfig, DPOTrainer

    from curate.models import load_causal_lm

    ds = load(export(runs["dpo"], "trl", tmp_path / "dpo"))
    size = [sum(len(m["content"]) for c in ("prompt", "chosen", "rejected") for m in r[c])
            if r["prompt"][0]["role"] == "system" else 10**9 for r in ds]
    short = ds.select([size.index(min(size))])  # the shortest pair with a system prompt
    model = load_causal_lm("smollm2-135m", device="cpu")
    trainer = DPOTrainer(model=model, args=_train_args(DPOConfig, tmp_path / "t"),
                         train_dataset=short, processing_class=tok)
    loss = trainer.train().training_loss
    assert math.isfinite(loss) and abs(loss - math.log(2)) < 1e-3  # step 1: policy == reference


# ---------------------------------------------------------------- LLaMA-Factory

def lf_entry(res: dict) -> dict:
    info = json.loads((Path(res["output"]) / "dataset_info.json").read_text())
    assert list(info) == [res["name"]]
    entry = info[res["name"]]
    assert set(entry) <= LF_ENTRY_KEYS and set(entry["columns"]) <= LF_COLUMN_KEYS
    assert (Path(res["output"]) / entry["file_name"]).is_file()
    if entry.get("formatting") == "sharegpt":
        assert set(entry["tags"]) == LF_TAG_KEYS  # all given: a partial "tags" resets the rest
    return entry


def lf_rows(res: dict) -> list[dict]:
    return [json.loads(line) for line in Path(res["files"][0]).read_text("utf-8").splitlines()]


def lf_sharegpt_ok(turns: list[dict], tags: dict, ranking: bool) -> bool:
    """LLaMA-Factory's SharegptDatasetConverter rule: an optional first system turn, then
    user/observation at odd positions, assistant/function_call at even ones, an even
    count (odd for a ranking prompt)."""
    if turns and turns[0][tags["role_tag"]] == tags["system_tag"]:
        turns = turns[1:]
    odd = (tags["user_tag"], tags["observation_tag"])
    even = (tags["assistant_tag"], tags["function_tag"])
    for i, t in enumerate(turns):
        if t[tags["role_tag"]] not in (odd, even)[i % 2]:
            return False
    return len(turns) % 2 == (1 if ranking else 0)


def test_llamafactory_sharegpt_tool_calls_round_trip(runs, tmp_path):
    res = export(runs["glaive"], "llamafactory", tmp_path / "lf", name="glaive_demo")
    entry = lf_entry(res)
    assert entry["formatting"] == "sharegpt" and "ranking" not in entry
    assert entry["columns"] == {"messages": "messages", "tools": "tools"}
    tags = entry["tags"]
    canon = selected(runs["glaive"])
    rows = lf_rows(res)
    assert len(rows) == 300 and res["files"][0].endswith("glaive_demo.jsonl")
    for row in rows:
        src = canon[row["id"]]
        assert lf_sharegpt_ok(row["messages"], tags, ranking=False)
        # LLaMA-Factory's own demo file, turn for turn and byte for byte
        assert row["messages"] == [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                                   for t in src["conversations"]]
        assert row["tools"] == src["tools"]  # JSON text, as LLaMA-Factory reads it
        for turn in row["messages"]:
            if turn["role"] == tags["function_tag"]:
                call = json.loads(turn["content"])
                assert set(call) == {"name", "arguments"} and isinstance(call["arguments"], dict)


def test_llamafactory_preference_sharegpt_and_alpaca(runs, tmp_path):
    canon = selected(runs["dpo"])
    res = export(runs["dpo"], "llamafactory", tmp_path / "sg")
    entry = lf_entry(res)
    assert entry["ranking"] is True and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}
    for row in lf_rows(res):
        src = canon[row["id"]]
        assert lf_sharegpt_ok(row["messages"], entry["tags"], ranking=True)
        assert row["messages"] == plain(src["prompt"])  # system first, where the row has one
        assert row["chosen"] == {"role": "assistant", "content": src["chosen"][0]["content"]}
        assert row["rejected"] == {"role": "assistant", "content": src["rejected"][0]["content"]}

    res = export(runs["dpo"], "llamafactory", tmp_path / "alpaca", layout="alpaca", format="parquet")
    entry = lf_entry(res)
    assert entry["formatting"] == "alpaca" and entry["ranking"] is True
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "system": "system",
                                "history": "history", "chosen": "chosen", "rejected": "rejected"}
    systems = 0
    for row in pq.read_table(res["files"][0]).to_pylist():
        src = canon[row["id"]]
        prompt = src["prompt"]
        if prompt[0]["role"] == "system":
            systems += 1
            assert row["system"] == prompt[0]["content"]
            prompt = prompt[1:]
        else:
            assert row["system"] == ""
        assert row["instruction"] == prompt[-1]["content"] and row["input"] == ""
        assert row["history"] == [[prompt[i]["content"], prompt[i + 1]["content"]]
                                  for i in range(0, len(prompt) - 1, 2)]
        assert (row["chosen"], row["rejected"]) == (src["chosen"][0]["content"],
                                                    src["rejected"][0]["content"])
    assert systems == 80


def test_llamafactory_alpaca_multi_turn_chinese_equals_the_source(runs, tmp_path):
    res = export(runs["oaast"], "llamafactory", tmp_path / "zh", layout="alpaca")
    entry = lf_entry(res)
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "system": "system",
                                "history": "history", "response": "output"}
    canon = selected(runs["oaast"])
    raw = Path(res["files"][0]).read_bytes()
    for row in lf_rows(res):
        src = canon[row["id"]]
        assert not src["input"]  # so the source's own columns are the expected values
        assert (row["instruction"], row["output"]) == (src["instruction"], src["output"])
        assert row["history"] == src["history"]
        assert json.dumps(src["output"], ensure_ascii=False).encode() in raw


def test_llamafactory_kto_tag(runs, tmp_path):
    res = export(runs["kto"], "llamafactory", tmp_path / "kto")
    entry = lf_entry(res)
    assert entry["columns"] == {"messages": "messages", "kto_tag": "kto_tag"}
    canon = selected(runs["kto"])
    rows = lf_rows(res)
    assert {r["id"]: r["kto_tag"] for r in rows} == {i: r["label"] for i, r in canon.items()}
    assert all(lf_sharegpt_ok(r["messages"], entry["tags"], ranking=False) for r in rows)


# ---------------------------------------------------------------- Axolotl

def axolotl_config(res: dict) -> dict:
    config = yaml.safe_load((Path(res["output"]) / "axolotl.yaml").read_text())
    (entry,) = config["datasets"]
    assert Path(entry["path"]).is_absolute() and Path(entry["path"]) == Path(res["files"][0]).resolve()
    assert entry["ds_type"] == "json"
    return config


def test_axolotl_chat_template_sft_with_tools(runs, tmp_path):
    res = export(runs["glaive"], "axolotl", tmp_path / "ax")
    config = axolotl_config(res)
    (entry,) = config["datasets"]
    assert "rl" not in config
    assert entry["type"] == "chat_template" and entry["field_messages"] == "messages"
    assert entry["message_property_mappings"] == {"role": "role", "content": "content"}
    assert entry["roles_to_train"] == ["assistant"] and entry["field_tools"] == "tools"
    canon = selected(runs["glaive"])
    rows = lf_rows(res)
    assert len(rows) == 300
    for row in rows:
        src = canon[row["id"]]
        assert not nulls(row["messages"])
        assert {m["role"] for m in row["messages"]} <= {"system", "user", "assistant", "tool"}
        assert [m["content"] for m in row["messages"]] == [m["content"] for m in src["messages"]]
        assert json.loads(row["tools"]) == json.loads(src["tools"])
        for m, w in zip(row["messages"], src["messages"]):
            if w["tool_calls"]:  # arguments stay JSON text; Axolotl parses them
                assert m["tool_calls"][0]["function"] == w["tool_calls"][0]["function"]
    # the same export of a chat without tools has no field_tools
    plain_cfg = axolotl_config(export(runs["oaast"], "axolotl", tmp_path / "zh"))
    assert "field_tools" not in plain_cfg["datasets"][0]


def test_axolotl_dpo_and_rows_it_cannot_hold(runs, tmp_path):
    res = export(runs["hh"], "axolotl", tmp_path / "hh")
    config = axolotl_config(res)
    (entry,) = config["datasets"]
    assert config["rl"] == "dpo" and entry["type"] == "chat_template.default"
    assert (entry["field_messages"], entry["field_chosen"], entry["field_rejected"]) == \
        ("messages", "chosen", "rejected")
    assert entry["roles"] == {"user": ["user"], "assistant": ["assistant"], "system": ["system"]}
    canon = selected(runs["hh"])
    rows = lf_rows(res)
    # two HH-RLHF answers were parsed as two assistant messages: Axolotl takes one, so they
    # are left out and named, not merged
    two = {i for i, r in canon.items() if len(r["chosen"]) != 1 or len(r["rejected"]) != 1}
    assert len(two) == 2 and res["rows"] == len(rows) == 808
    assert {s["id"] for s in res["skipped"]} == two
    assert all("chosen has 2 messages" in s["reason"] for s in res["skipped"])
    manifest = json.loads((Path(res["output"]) / MANIFEST).read_text())
    assert manifest["skipped"] == res["skipped"] and manifest["status"] == "complete"
    for row in rows:
        src = canon[row["id"]]
        assert row["messages"] == plain(src["prompt"])
        assert row["chosen"] == {"role": "assistant", "content": src["chosen"][0]["content"]}
        assert {m["role"] for m in row["messages"]} <= {"user", "assistant", "system"}


# ---------------------------------------------------------------- canonical rows

def test_canonical_parquet_and_jsonl_keep_every_column(runs, tmp_path):
    table = open_run(runs["oaast"]).table("selected")
    res = export(runs["oaast"], "parquet", tmp_path / "pq")
    assert pq.read_table(res["files"][0]).equals(table)
    res = export(runs["oaast"], "jsonl", tmp_path / "jl")
    lines = Path(res["files"][0]).read_text("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == table.to_pylist()
    assert set(json.loads(lines[0])) == set(table.column_names)
    assert "\\u" not in lines[0]


# ---------------------------------------------------------------- bad input, atomic writes

def test_refusals_leave_nothing(runs, tmp_path):
    empty = tmp_path / "empty_run"
    read(LF / "kto_en_demo.parquet").filter("source = 'no such file'").write(
        empty, quiet=True, cache_dir=False)
    with pytest.raises(CurateError, match="no selected rows"):
        export(empty, "trl", tmp_path / "e")
    assert not (tmp_path / "e").exists()

    with pytest.raises(CurateError, match="layouts messages, prompt_completion"):
        export(runs["system"], "trl", tmp_path / "x", layout="sharegpt")
    with pytest.raises(CurateError, match="for sft runs"):
        export(runs["dpo"], "trl", tmp_path / "x", layout="prompt_completion")
    with pytest.raises(CurateError, match="inside the run"):
        export(runs["system"], "trl", runs["system"] / "export")
    # alpaca has no place for tool calls: those rows are left out and named, the others kept
    res = export(runs["glaive"], "llamafactory", tmp_path / "alp", layout="alpaca")
    assert res["rows"] + len(res["skipped"]) == 300 and res["rows"] == 147
    assert {s["reason"] for s in res["skipped"]} == {
        "it has tool calls or tool results, which alpaca cannot hold (use --layout sharegpt)"}
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_existing_output_overwrite_and_a_failed_export(runs, tmp_path, monkeypatch):
    import curate.export as mod

    out = tmp_path / "out"
    first = export(runs["system"], "trl", out)
    with pytest.raises(CurateError, match="not empty.*--overwrite"):
        export(runs["system"], "trl", out)
    # a failure while writing leaves the previous export as it was, and no temp folder
    monkeypatch.setattr(mod, "_lf_info", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export(runs["system"], "llamafactory", out, overwrite=True)
    assert sorted(os.listdir(out)) == ["curate_export.json", "train.parquet"]
    assert json.loads((out / MANIFEST).read_text())["to"] == "trl"
    monkeypatch.undo()
    res = export(runs["system"], "llamafactory", out, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(["curate_export.json", "dataset_info.json",
                                              "system_chats.jsonl"])
    assert res["rows"] == first["rows"] == 40
    # a folder that is not an export is never deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CurateError, match="refusing to delete"):
        export(runs["system"], "trl", other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_export(runs, tmp_path):
    out = tmp_path / "cli_out"
    proc = cli("export", runs["dpo"], "--to", "llamafactory", "--output", out, "--name", "my_dpo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "exported 300 of 300 selected rows" in proc.stderr and "dataset: my_dpo" in proc.stderr
    assert "my_dpo" in json.loads((out / "dataset_info.json").read_text())
    # one error line, exit 2: an existing export, an incomplete run
    proc = cli("export", runs["dpo"], "--to", "trl", "--output", out)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    manifest = runs["kto"] / "manifest.json"
    saved = manifest.read_text()
    try:
        manifest.write_text(json.dumps({**json.loads(saved), "status": "running"}))
        proc = cli("export", runs["kto"], "--to", "trl", "-o", tmp_path / "k", "-q")
        assert proc.returncode == 2 and "not complete" in proc.stderr
        assert not (tmp_path / "k").exists()
    finally:
        manifest.write_text(saved)
