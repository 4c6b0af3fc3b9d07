"""What a user gives curate comes back whole: tool calls, tools, labels, system
prompts and every other column, on real data; layouts decided per file; bad lines
rejected alone; compressed inputs read; skipped files named."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import DATA, cli, curate_cli
from curate import read
from curate.run import open_run

GLAIVE = DATA / "llamafactory" / "glaive_toolcall_en_demo.parquet"
KTO = DATA / "llamafactory" / "kto_en_demo.parquet"
ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
OAAST_SFT = DATA / "llamafactory" / "oaast_sft_zh.parquet"
OAAST_RM = DATA / "llamafactory" / "oaast_rm_zh.parquet"
DPO = DATA / "llamafactory" / "dpo_en_demo.parquet"
HH = DATA / "hh_rlhf" / "harmless_base_test.parquet"
ANNOTATIONS = DATA / "alpaca_eval" / "annotations.parquet"
GSM8K = DATA / "gsm8k" / "test.parquet"
C4 = DATA / "c4_demo" / "c4_demo.parquet"
MT_BENCH = DATA / "mt_bench" / "question.parquet"
MSRP = DATA / "paraphrase" / "msrp_train.parquet"
SEED = DATA / "self_instruct" / "seed_tasks.parquet"


def ingest(path: Path, out: Path, **kw):
    return read(path, **kw).write(out, quiet=True, cache_dir=False)


def no_nulls(value):
    """``value`` with null fields of objects dropped (what JSON wrote never had them)."""
    if isinstance(value, dict):
        return {k: no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [no_nulls(v) for v in value]
    return value


def head(path: Path, n: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    pq.write_table(pq.read_table(path).slice(0, n), out)
    return out


# --- 1: tool calls and tools ---------------------------------------------------------

def openai_tool_rows(n: int) -> list[dict]:
    """Real glaive function-calling rows in OpenAI's chat layout: assistant turns with
    ``tool_calls`` (arguments as JSON text), ``tool`` turns tied by ``tool_call_id``,
    user content as a list of text parts, and the row's ``tools`` as a list."""
    out = []
    for i, r in enumerate(pq.read_table(GLAIVE).to_pylist()):
        if not any(m["from"] == "function_call" for m in r["conversations"]):
            continue
        msgs, call_id = [], None
        for m in r["conversations"]:
            if m["from"] == "human":
                msgs.append({"role": "user", "content": [{"type": "text", "text": m["value"]}]})
            elif m["from"] == "gpt":
                msgs.append({"role": "assistant", "content": m["value"]})
            elif m["from"] == "function_call":
                call = json.loads(m["value"])
                call_id = f"call_{i}_{len(msgs)}"
                msgs.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": call["name"],
                                  "arguments": json.dumps(call["arguments"])}}]})
            else:
                msgs.append({"role": "tool", "tool_call_id": call_id, "content": m["value"]})
        tools = [{"type": "function", "function": t} for t in json.loads(r["tools"])]
        out.append({"messages": msgs, "tools": tools, "source_index": i})
        if len(out) == n:
            return out
    return out


def test_openai_tool_calls_and_tools_are_kept_and_written_back(tmp_path):
    rows = openai_tool_rows(20)
    # a real conversation cut right after its tool call: a valid row with no answer text
    first_call = next(j for j, m in enumerate(rows[0]["messages"]) if m.get("tool_calls"))
    ends_on_call = copy.deepcopy(dict(rows[0], messages=rows[0]["messages"][:first_call + 1]))
    rows.append(ends_on_call)
    f = tmp_path / "tools.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run = ingest(f, tmp_path / "run")
    m = run.manifest()
    assert m["input"]["adapters"] == {"tools.jsonl": "openai"}
    assert m["counts"] == {"input": 21, "ingest_rejected": 0, "selected": 21, "rejected": 0}
    sel = sorted(run.table("selected").to_pylist(), key=lambda r: r["source_row"])
    calls = 0
    for got, src in zip(sel, rows):
        # canonical: every tool call, id and argument text, byte for byte
        for gm, sm in zip(got["messages"], src["messages"]):
            if sm.get("tool_calls"):
                calls += 1
                assert gm["role"] == "assistant" and gm["content"] == ""
                assert gm["tool_calls"] == sm["tool_calls"]
            elif sm["role"] == "tool":
                assert gm["tool_call_id"] == sm["tool_call_id"] and gm["content"] == sm["content"]
            elif isinstance(sm["content"], list):  # text parts become one string
                assert gm["content"] == sm["content"][0]["text"]
        assert json.loads(got["tools"]) == src["tools"]
        # the originals, unchanged, beside the canonical columns; content that mixes
        # text and lists of parts has no single Arrow type, so it is kept as JSON text
        assert json.loads(got["raw_messages"]) == src["messages"]
        assert no_nulls(got["raw_tools"]) == src["tools"]
        assert got["source_index"] == src["source_index"]
    assert calls == sum(1 for r in rows for m in r["messages"] if m.get("tool_calls")) >= 21
    last = sel[-1]["messages"][-1]
    assert last["content"] == "" and last["tool_calls"][0]["function"]["name"]


def test_tool_calls_and_tools_reach_the_model(tmp_path):
    """The target model sees the tool schemas and the calls (as text, since the
    embedded model's chat template has no place for them) and scores a turn that only
    calls a tool."""
    from curate.scorer import get_scorer

    rows = openai_tool_rows(3)
    first_call = next(j for j, m in enumerate(rows[0]["messages"]) if m.get("tool_calls"))
    rows[0]["messages"] = rows[0]["messages"][:first_call + 1]
    f = tmp_path / "tools.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = ingest(f, tmp_path / "run").table("selected").sort_by("source_row")
    ppl = get_scorer("perplexity")
    ppl.setup()
    r = table.slice(0, 1).to_pylist()[0]
    call = r["messages"][-1]["tool_calls"][0]["function"]
    text = ppl.render(r["messages"], tools=r["tools"])
    assert f'"name": "{call["name"]}"' in text and "<tool_call>" in text
    assert json.loads(r["tools"])[0]["function"]["name"] in text  # the schema, in the prompt
    scores = ppl.score(table.select(["id", "messages", "tools"]).to_batches()[0])
    assert all(n and n > 5 for n in scores["response_tokens"])
    assert all(p is not None and 1 < p < 1000 for p in scores["ppl_conditional"])


def test_sharegpt_function_calls_are_tool_calls_and_the_tools_column_is_canonical(tmp_path):
    run = ingest(GLAIVE, tmp_path / "run")
    data = run.table("selected").to_pylist()
    raw = pq.read_table(GLAIVE).to_pylist()
    n_calls = 0
    for r in data:
        src = raw[r["source_row"]]
        assert r["tools"] == src["tools"] and r["conversations"] == src["conversations"]
        for m, s in zip(r["messages"], src["conversations"]):
            if s["from"] == "function_call":
                n_calls += 1
                assert m["tool_calls"][0]["function"]["name"] == json.loads(s["value"])["name"]
    assert n_calls >= 150


# --- 2: KTO-style labels ---------------------------------------------------------------

def test_kto_labels_are_kept_and_the_sft_pipeline_never_selects_false(tmp_path):
    table = pq.read_table(KTO)
    labels = table["label"].to_pylist()
    take = [i for i, v in enumerate(labels) if v][:15] + [i for i, v in enumerate(labels) if not v][:15]
    f = tmp_path / "kto" / "kto.parquet"
    f.parent.mkdir()
    pq.write_table(table.take(take), f)
    out = tmp_path / "run"
    curate_cli("run", "pipelines/sft_select.py", "-i", f, "-o", out, "-q", "--cache-dir",
               tmp_path / "cache", "--set", "use_ifd=false")
    run = open_run(out)
    sel = run.table("selected", columns=["label"])["label"].to_pylist()
    rej = pl.from_arrow(run.table("rejected"))
    assert sel and all(sel)  # only desirable answers
    assert rej.filter(pl.col("stage") == "filter").filter(
        pl.col("reason") == "labelled undesirable (KTO label false)").height == 15
    # told to, it keeps them
    out2 = tmp_path / "run2"
    curate_cli("run", "pipelines/sft_select.py", "-i", f, "-o", out2, "-q", "--cache-dir",
               tmp_path / "cache", "--set", "use_ifd=false", "--set", "keep_undesirable=true")
    assert False in open_run(out2).table("selected", columns=["label"])["label"].to_pylist()


def test_kto_pairs_a_desirable_with_an_undesirable_answer(tmp_path):
    run = ingest(KTO, tmp_path / "run")
    data = run.table("data", columns=["label"])["label"].to_pylist()
    assert data.count(True) == 150 and data.count(False) == 150
    out = tmp_path / "pairs.parquet"
    proc = curate_cli("pairs", tmp_path / "run", "--by", "label", "-o", out)
    pairs = pq.read_table(out).to_pylist()
    # kto_en_demo has one prompt answered both well and badly
    assert len(pairs) == 1, proc.stderr
    ids = pl.from_arrow(run.table("data", columns=["id", "label"]))
    label = dict(zip(ids["id"], ids["label"]))
    assert label[pairs[0]["chosen_id"]] is True and label[pairs[0]["rejected_id"]] is False
    assert pairs[0]["pair_reason"].startswith("label true vs false")


# --- 3: the layout is decided per file ---------------------------------------------------

def test_a_file_mixing_layouts_takes_the_majority_and_names_the_misfits(tmp_path):
    alpaca = pq.read_table(ALPACA).slice(0, 6).to_pylist()
    kto = pq.read_table(KTO).slice(0, 3).to_pylist()
    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in kto[:1] + alpaca + kto[1:]))
    run = ingest(f, tmp_path / "run")
    assert run.manifest()["input"]["adapters"] == {"mixed.jsonl": "alpaca"}
    rej = run.table("rejected").to_pylist()
    assert len(rej) == 3
    assert {r["reason"] for r in rej} == {"row has no instruction; the file's layout is alpaca"}
    assert sorted(r["detail"] for r in rej) == ["mixed.jsonl row 0", "mixed.jsonl row 7",
                                                "mixed.jsonl row 8"]
    assert run.manifest()["counts"]["selected"] == 6


# --- 4: unknown layouts: --kind text and column mapping ------------------------------------

def test_kind_text_takes_every_string_and_list_of_strings_column(tmp_path):
    run = ingest(MT_BENCH, tmp_path / "run", kind="text")
    raw = pq.read_table(MT_BENCH).to_pylist()
    sel = sorted(run.table("selected").to_pylist(), key=lambda r: r["source_row"])
    assert len(sel) == 80 and run.manifest()["input"]["adapters"] == {"question.parquet": "any_text"}
    for r in sel:
        src = raw[r["source_row"]]
        for turn in src["turns"] + (src["reference"] or []):
            assert turn in r["text"]
        assert r["turns"] == src["turns"]


def test_column_mapping_reads_an_unknown_layout(tmp_path):
    f = head(MSRP, 50, tmp_path / "in")
    proc = cli("ingest", f, "-o", tmp_path / "nomap", "-q")
    assert proc.returncode == 2 and "--map" in proc.stderr
    curate_cli("ingest", f, "-o", tmp_path / "run", "-q", "--map", "prompt=s1", "--map", "response=s2")
    run = open_run(tmp_path / "run")
    raw = pq.read_table(f).to_pylist()
    sel = run.table("selected").to_pylist()
    assert len(sel) == 50
    for r in sel:
        src = raw[r["source_row"]]
        assert [(m["role"], m["content"]) for m in r["messages"]] == [("user", src["s1"]),
                                                                      ("assistant", src["s2"])]
        assert r["s1"] == src["s1"] and r["raw_label"] == src["label"]  # originals kept
    # the same from Python, and a mapped column that is not there is a clear error
    assert ingest(f, tmp_path / "py", columns={"prompt": "s1", "response": "s2"}).manifest()[
        "counts"]["selected"] == 50
    bad = cli("ingest", f, "-o", tmp_path / "bad", "-q", "--map", "prompt=question")
    assert bad.returncode == 2 and "'question'" in bad.stderr and "s1" in bad.stderr


# --- 8: bad rows do not kill files -----------------------------------------------------------

def test_bad_lines_in_jsonl_and_csv_are_rejected_alone(tmp_path):
    rows = pq.read_table(ALPACA).slice(0, 8).to_pylist()
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps(r).encode() for r in rows]
    lines.insert(3, b'{"instruction": "caf\xe9", "input": "", "output": "latin-1 bytes"}')
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    csv = folder / "b.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), csv)
    header, body = csv.read_bytes().split(b"\n", 1)  # answers hold newlines: add rows at the ends
    csv.write_bytes(header + b'\n"one field too many",x,y,z\n' + body
                    + b'"na\xefve",,"bytes that are not UTF-8"\n')
    out = tmp_path / "run"
    curate_cli("ingest", folder, "-o", out, "-q")
    run = open_run(out)
    m = run.manifest()
    assert m["status"] == "complete"
    assert m["counts"] == {"input": 19, "ingest_rejected": 3, "selected": 16, "rejected": 3}
    rej = sorted(r["detail"] for r in run.table("rejected").to_pylist())
    assert rej[0].startswith("a.jsonl line 4: not UTF-8")
    assert any(d.startswith("b.csv") and "ragged CSV row: 4 fields, the header has 3" in d
               for d in rej)
    assert any(d.startswith("b.csv record") and "not UTF-8 in column 'instruction'" in d
               for d in rej)
    # a file where no row parses is still an error
    (folder / "c.jsonl").write_bytes(b"{broken\n\xff\xfe\n")
    proc = cli("ingest", folder, "-o", tmp_path / "run2", "-q")
    assert proc.returncode == 2 and "c.jsonl: all 2 rows are bad" in proc.stderr


# --- 9: compressed files, skipped files ---------------------------------------------------------

def test_compressed_inputs_are_read_and_skipped_files_are_named(tmp_path):
    rows = pq.read_table(ALPACA).slice(0, 30).to_pylist()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps(r) + "\n" for r in rows[:10]).encode()))
    with pa.CompressedOutputStream(str(folder / "b.csv.zst"), "zstd") as out:
        pacsv.write_csv(pa.Table.from_pylist(rows[10:20]), out)
    (folder / "c.json.gz").write_bytes(gzip.compress(json.dumps(rows[20:]).encode()))
    (folder / "notes.txt").write_text("not data")
    (folder / "d.parquet.gz").write_bytes(gzip.compress(b"parquet is compressed inside"))
    run = ingest(folder, tmp_path / "run")
    m = run.manifest()
    assert m["counts"]["selected"] == 30
    assert sorted(m["input"]["files"]) == ["a.jsonl.gz", "b.csv.zst", "c.json.gz"]
    skipped = {s["file"]: s["why"] for s in m["input"]["skipped"]}
    assert set(skipped) == {"notes.txt", "d.parquet.gz"}
    assert "unknown file type" in skipped["notes.txt"]
    # same rows, same ids as the plain Parquet
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(ALPACA).slice(0, 30), plain)
    ids = set(ingest(plain, tmp_path / "plainrun").table("selected", columns=["id"])["id"].to_pylist())
    assert set(run.table("selected", columns=["id"])["id"].to_pylist()) == ids


# --- every field of every input row comes back -----------------------------------------------------

ROUND_TRIP = [
    ("openai", KTO, None),
    ("sharegpt", GLAIVE, None),
    ("sharegpt", DPO, None),
    ("alpaca", OAAST_SFT, None),  # system-less Chinese rows with multi-turn history
    ("alpaca", SEED, None),  # an `id` column of the user's own
    ("hh_rlhf", HH, None),
    ("ranked", OAAST_RM, None),
    ("pairwise", ANNOTATIONS, None),
    ("prompt_completion", GSM8K, None),
    ("prompt_pair", ANNOTATIONS, {"prompt": "instruction", "chosen": "output_1",
                                  "rejected": "output_2"}),
    ("text", C4, None),
]


@pytest.mark.parametrize("adapter, path, columns", ROUND_TRIP,
                         ids=[f"{a}-{p.stem}" for a, p, _ in ROUND_TRIP])
def test_every_input_field_is_in_selected_byte_for_byte(tmp_path, adapter, path, columns):
    src = pq.read_table(head(path, 300, tmp_path / "in"))
    run = ingest(tmp_path / "in" / path.name, tmp_path / "run", columns=columns)
    assert run.manifest()["input"]["adapters"] == {path.name: adapter}
    sel = run.table("selected")
    assert sel.num_rows >= src.num_rows - 5
    rows = pa.array(sel["source_row"].to_pylist(), pa.int64())
    for name in src.column_names:
        want = src[name].take(rows)
        found = [c for c in (name, f"raw_{name}") if c in sel.column_names
                 and sel[c].type == want.type and sel[c].equals(want)]
        if not found and name in sel.column_names:  # kept once, as its canonical twin
            found = [name] if sel[name].cast(want.type).equals(want) else []
        assert found, f"input column {name!r} is not in selected/ unchanged"
