"""Bad input: every mistake a user can make gives one clear error line, never a
traceback and never a run that looks complete; bad ROWS are set aside with a
reason while the run goes on. Also: the input adapters on real data, the four
file formats, and the stability of row ids.

Everything runs on real files (tests/data, copies of /work/shared/data) through
the real CLI (a subprocess) and the Python API. No model-based scorer is used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import DATA, ROOT, cli
from conftest import curate_cli as ok

from curate import CurateError, read
from curate.schema import ROLES

if not (DATA / "llamafactory").is_dir():  # fall back to the shared copy
    DATA = Path("/work/shared/data")
LF = DATA / "llamafactory"
ALPACA = LF / "alpaca_en_demo.parquet"
KTO = LF / "kto_en_demo.parquet"
DPO = LF / "dpo_en_demo.parquet"
GLAIVE = LF / "glaive_toolcall_en_demo.parquet"
OAAST_RM = LF / "oaast_rm_zh.parquet"
HH = DATA / "hh_rlhf" / "harmless_base_test.parquet"
ANNOTATIONS = DATA / "alpaca_eval" / "annotations.parquet"
GSM8K = DATA / "gsm8k" / "train.parquet"
GSM8K_TEST = DATA / "gsm8k" / "test.parquet"
C4 = DATA / "c4_demo" / "c4_demo.parquet"
MSRP = DATA / "paraphrase" / "msrp_train.parquet"
SAMPLE_SFT = ROOT / "sample_data" / "sft"
SAMPLE_PREF = ROOT / "sample_data" / "preference"
SFT_PIPELINE = ROOT / "pipelines" / "sft_select.py"


# --- helpers ------------------------------------------------------------------

def manifest(run_dir: Path) -> dict | None:
    p = Path(run_dir) / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


def looks_complete(run_dir: Path) -> bool:
    m = manifest(run_dir)
    return bool(m) and m.get("status") == "complete"


def user_error(proc: subprocess.CompletedProcess, *names: str, out: Path | None = None) -> str:
    """Assert the one-line ``error:`` contract and return the line. The commands
    run with --quiet, so stderr holds nothing but the error."""
    assert proc.returncode != 0, f"expected a failure, got exit 0; stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in re.split(r"[\r\n]+", proc.stderr) if ln.strip()]
    assert len(lines) == 1, f"expected ONE line on stderr, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("error:"), line
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    if out is not None:
        assert not looks_complete(out), f"{out} has a complete manifest after a failed run"
    return line


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path: Path, n: int | None = None) -> list[dict]:
    t = pq.read_table(path)
    return (t if n is None else t.slice(0, n)).to_pylist()


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _plain(value):
    """Messages without their null fields (tool calls, tool ids, names of plain turns)."""
    if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
        return [{k: v for k, v in m.items() if v is not None} for m in value]
    return value


def selected_rows(run) -> list[dict]:
    rows = [{k: _plain(v) for k, v in r.items()} for r in run.table("selected").to_pylist()]
    return sorted(rows, key=lambda r: (r["source"], r["source_row"]))


def ids_in_order(run, name: str = "data") -> list[str]:
    t = run.table(name, columns=["id", "source", "source_row"]).to_pylist()
    return [r["id"] for r in sorted(t, key=lambda r: (r["source"], r["source_row"]))]


# --- 1-6: whole-input errors ----------------------------------------------------

COMMANDS = {
    "ingest": lambda inp, out: ("ingest", inp, "-o", out, "-q"),
    "score": lambda inp, out: ("score", inp, "--scorer", "quality", "-o", out, "-q"),
    "run": lambda inp, out: ("run", SFT_PIPELINE, "--input", inp, "-o", out, "-q"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_input_path(tmp_path, command):
    missing = tmp_path / "no" / "such_dir"
    out = tmp_path / "out"
    user_error(cli(*COMMANDS[command](missing, out)), str(missing), "does not exist", out=out)
    assert not out.exists()


def test_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no data here\n")  # not a data file
    out = tmp_path / "out"
    user_error(cli("ingest", empty, "-o", out, "-q"), str(empty), "empty", out=out)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_parquet_among_good_ones(tmp_path, damage):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(ALPACA, inp / "a_good.parquet")
    shutil.copy(GSM8K_TEST, inp / "c_good.parquet")
    bad = inp / "b_bad.parquet"
    real = ALPACA.read_bytes()
    bad.write_bytes(real[: len(real) // 2] if damage == "truncated" else b"PAR1" + os.urandom(5000))
    out = tmp_path / "out"
    line = user_error(cli("ingest", inp, "-o", out, "-q"), str(bad), out=out)
    assert "a_good" not in line and "c_good" not in line
    m = manifest(out)
    assert m is None or m["status"] == "failed"


def _one_rejected_line(out: Path, where: str) -> dict:
    rej = read_run(out).table("rejected").to_pylist()
    assert len(rej) == 1, rej
    assert rej[0]["stage"] == "ingest" and rej[0]["reason"] == "row does not parse"
    assert where in rej[0]["detail"], rej[0]["detail"]
    return rej[0]


def test_jsonl_with_a_line_that_is_not_json(tmp_path):
    """One broken line rejects that line (with file, line and the parser's message);
    the other rows are read."""
    good = rows(ALPACA, 4)
    lines = [json.dumps(r) for r in good]
    lines.insert(2, '{"instruction": "Name a colour", "output": "red"')  # line 3: no closing brace
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    ok("ingest", f, "-o", out, "-q")
    rej = _one_rejected_line(out, "train.jsonl line 3: not valid JSON")
    assert "delimiter" in rej["detail"] or "Expecting" in rej["detail"]
    assert manifest(out)["counts"] == {"input": 5, "ingest_rejected": 1, "selected": 4,
                                       "rejected": 1}


def test_json_file_holding_json_lines_names_the_bad_line(tmp_path):
    """A .json file may hold JSON lines; a broken line is still named by number."""
    lines = [json.dumps(r) for r in rows(ALPACA, 6)]
    lines[4] = lines[4][:-10]  # line 5 cut short
    f = tmp_path / "train.json"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    ok("ingest", f, "-o", out, "-q")
    _one_rejected_line(out, "train.json line 5: not valid JSON")
    assert manifest(out)["counts"]["selected"] == 5


def test_truncated_json_array(tmp_path):
    f = tmp_path / "train.json"
    f.write_text(json.dumps(rows(ALPACA, 5), indent=1)[:-200])
    out = tmp_path / "out"
    user_error(cli("ingest", f, "-o", out, "-q"), str(f), "not valid JSON", out=out)


def test_unknown_layout_lists_the_columns(tmp_path):
    out = tmp_path / "out"
    line = user_error(cli("ingest", MSRP, "-o", out, "-q"), str(MSRP), "--adapter", out=out)
    for col in ("label", "s1", "s2", "id1", "id2"):
        assert repr(col) in line


def test_unknown_model_name(tmp_path):
    out = tmp_path / "out"
    user_error(cli("score", SAMPLE_SFT, "--scorer", "text_stats", "--option",
                   "tokenizer=no-such-model", "-o", out, "-q"), "no-such-model", out=out)
    with pytest.raises(CurateError, match="no-such-model"):
        read(SAMPLE_SFT).score("text_stats", tokenizer="no-such-model").write(
            tmp_path / "api", quiet=True, cache_dir=False)
    assert not looks_complete(tmp_path / "api")


# --- 7: output directory that holds another run ---------------------------------

def test_output_directory_holding_a_different_run(tmp_path):
    out = tmp_path / "run"
    # the Python API writes the same run as `curate ingest SAMPLE_SFT -o out`
    read(str(SAMPLE_SFT)).write(out, quiet=True)
    assert looks_complete(out)
    first_ids = ids_in_order(read_run(out))
    before = tree_hashes(out)

    # another input, and another pipeline over the same input: both refused
    for args in (("ingest", SAMPLE_PREF, "-o", out, "-q"),
                 ("score", SAMPLE_SFT, "--scorer", "quality", "-o", out, "-q")):
        user_error(cli(*args), str(out), "--overwrite")
        assert tree_hashes(out) == before, "a refused run changed the old run's files"

    # the same command again is allowed (resume / recompute) and gives the same run
    ok("ingest", SAMPLE_SFT, "-o", out, "-q")
    assert looks_complete(out)
    assert ids_in_order(read_run(out)) == first_ids

    # --overwrite replaces it
    ok("ingest", SAMPLE_PREF, "-o", out, "-q", "--overwrite")
    m = manifest(out)
    assert m["status"] == "complete" and m["input"]["kind"] == "preference"
    assert m["counts"]["input"] == pq.read_metadata(SAMPLE_PREF / "dpo_en_demo.parquet").num_rows
    assert set(ids_in_order(read_run(out))).isdisjoint(first_ids)


def read_run(path: Path):
    from curate import open_run
    return open_run(path)


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    out = tmp_path / "my_notes"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    proc = cli("ingest", SAMPLE_SFT, "-o", out, "-q", "--overwrite")
    assert (out / "notes.txt").exists(), "--overwrite deleted a folder that was not a curate run"
    user_error(proc, str(out))


def test_overwrite_never_deletes_the_input(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(ALPACA, folder / "train.parquet")
    proc = cli("ingest", folder / "train.parquet", "-o", folder, "-q", "--overwrite")
    assert (folder / "train.parquet").exists(), "--overwrite deleted the input file"
    user_error(proc, str(folder))


def test_run_written_inside_its_input_folder_is_not_read_as_input(tmp_path):
    """`curate ingest data -o data/run` twice: the second time the run's own Parquet
    must not become input (else the input fingerprint changes and the same command
    is refused as 'a different run')."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(ALPACA, folder / "train.parquet")
    out = folder / "run"
    ok("ingest", folder, "-o", out, "-q")
    ok("ingest", folder, "-o", out, "-q")
    m = manifest(out)
    assert m["input"]["files"] == ["train.parquet"]
    assert m["counts"]["input"] == pq.read_metadata(ALPACA).num_rows
    # a run directory itself is not a dataset
    user_error(cli("ingest", out, "-o", tmp_path / "other", "-q"), str(out), "selected")


# --- 8: bad rows are rejected, the run goes on -------------------------------------

def bad_rows_input(folder: Path) -> tuple[Path, dict[tuple[str, int], str]]:
    """Real alpaca rows and real OpenAI-messages rows, each file followed by broken
    rows; returns the folder and {(file, row): expected reason fragment}."""
    alpaca, kto = rows(ALPACA, 8), rows(KTO, 8)
    bad_alpaca = [(dict(alpaca[0], output=None), "row has no output; the file's layout is alpaca"),
                  (dict(alpaca[1], output="  \n "), "empty response"),
                  (dict(alpaca[2], output=42), "not a string"),
                  (dict(alpaca[3], instruction=["a", "list"]), "not a string")]
    user, answer = kto[0]["messages"][0], kto[0]["messages"][1]
    bad_kto = [({"messages": None, "label": True}, "row has no messages; the file's layout is openai"),
               ({"messages": [user, dict(answer, content="")], "label": True}, "empty response"),
               ({"messages": [dict(user, content=7), answer], "label": False}, "non-string content"),
               ({"messages": [dict(user, content=[{"type": "image_url", "image_url": {
                   "url": "https://example.com/cat.png"}}]), answer], "label": False},
                "content part of type 'image_url'"),
               ({"messages": [dict(user, role="wizard"), answer], "label": True}, "unknown role"),
               ({"messages": [], "label": True}, "empty messages")]
    expected = {}
    a = alpaca[4:] + [r for r, _ in bad_alpaca]
    k = kto[4:] + [r for r, _ in bad_kto]
    for i, (_, why) in enumerate(bad_alpaca):
        expected[("alpaca.jsonl", 4 + i)] = why
    for i, (_, why) in enumerate(bad_kto):
        expected[("messages.jsonl", 4 + i)] = why
    write_jsonl(folder / "alpaca.jsonl", a)
    write_jsonl(folder / "messages.jsonl", k)
    return folder, expected


def test_bad_rows_are_rejected_and_the_run_completes(tmp_path):
    inp, expected = bad_rows_input(tmp_path / "in")
    n_input = 4 + 4 + 4 + 6
    out = tmp_path / "out"
    ok("ingest", inp, "-o", out, "-q")
    m = manifest(out)
    assert m["status"] == "complete"
    assert m["input"]["adapters"] == {"alpaca.jsonl": "alpaca", "messages.jsonl": "openai"}
    run = read_run(out)
    sel, rej = run.table("selected").to_pylist(), run.table("rejected").to_pylist()
    assert len(sel) == 8 and len(rej) == len(expected) == 10
    assert len(sel) + len(rej) == n_input == m["counts"]["input"]
    assert len({r["id"] for r in sel} | {r["id"] for r in rej}) == n_input
    got = {}
    for r in rej:
        assert r["stage"] == "ingest" and r["reason"]
        file, _, row = r["detail"].rpartition(" row ")
        got[(file, int(row))] = r["reason"]
    assert set(got) == set(expected)
    for key, why in expected.items():
        assert why in got[key], (key, got[key])
    # the good rows are exactly the real ones, in the canonical layout
    assert sorted((r["source"], r["source_row"]) for r in sel) == \
        [("alpaca.jsonl", i) for i in range(4)] + [("messages.jsonl", i) for i in range(4)]
    assert all(r["messages"][-1]["role"] == "assistant" for r in sel)


def test_a_file_whose_rows_are_all_bad_is_an_error(tmp_path):
    inp, _ = bad_rows_input(tmp_path / "in")
    lines = (inp / "alpaca.jsonl").read_text().splitlines()[4:]  # only the broken rows
    (inp / "alpaca.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    user_error(cli("ingest", inp, "-o", out, "-q"), str(inp / "alpaca.jsonl"), "all 4 rows", out=out)


# --- 9: wrong options ------------------------------------------------------------

@pytest.mark.parametrize("inp, kind, other", [(SAMPLE_SFT, "preference", "sft"),
                                              (SAMPLE_PREF, "sft", "preference")])
def test_kind_mismatch(tmp_path, inp, kind, other):
    out = tmp_path / "out"
    f = next(inp.glob("*.parquet"))
    user_error(cli("ingest", inp, "--kind", kind, "-o", out, "-q"), str(f), kind, other, out=out)


def test_unknown_kind_value(tmp_path):
    proc = cli("ingest", SAMPLE_SFT, "--kind", "chat", "-o", tmp_path / "out", "-q")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "'chat'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_adapter(tmp_path):
    out = tmp_path / "out"
    line = user_error(cli("ingest", SAMPLE_SFT, "--adapter", "llama", "-o", out, "-q"),
                      "'llama'", out=out)
    for name in ("openai", "sharegpt", "alpaca", "hh_rlhf"):
        assert name in line


def test_forced_adapter_that_does_not_fit(tmp_path):
    out = tmp_path / "out"
    f = next(SAMPLE_SFT.glob("*.parquet"))
    user_error(cli("ingest", SAMPLE_SFT, "--adapter", "hh_rlhf", "-o", out, "-q"),
               str(f), "rows are bad", out=out)


def test_unknown_scorer(tmp_path):
    out = tmp_path / "out"
    user_error(cli("score", SAMPLE_SFT, "--scorer", "perplexityy", "-o", out, "-q"),
               "'perplexityy'", "quality", out=out)
    user_error(cli("score", SAMPLE_SFT, "--scorer", "quality", "--option", "colour=red",
                   "-o", out, "-q"), "colour", out=out)


def test_unknown_pipeline_parameter(tmp_path):
    out = tmp_path / "out"
    user_error(cli("run", SFT_PIPELINE, "--input", SAMPLE_SFT, "--set", "nosuchparam=1",
                   "-o", out, "-q"), "nosuchparam", "budget", out=out)
    user_error(cli("run", SFT_PIPELINE, "--input", SAMPLE_SFT, "--set", "budget=lots",
                   "-o", out, "-q"), "budget", out=out)


def test_filter_over_an_unknown_column(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CurateError, match="nope") as info:
        read(SAMPLE_SFT).score("quality").filter("nope > 1").write(out, quiet=True, cache_dir=False)
    assert "quality_refusal" in str(info.value)  # lists what is available
    assert not looks_complete(out)


# --- adapters on real data ----------------------------------------------------------

def ingest_api(path: Path, out: Path, **kw):
    return read(path, **kw).write(out, quiet=True, cache_dir=False)


def check_alpaca(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    for r in sel:
        src = raw[r["source_row"]]
        user = src["instruction"] + (f"\n\n{src['input']}" if src["input"].strip() else "")
        assert r["messages"] == [{"role": "user", "content": user},
                                 {"role": "assistant", "content": src["output"]}]
        assert r["instruction"] == src["instruction"]  # original columns kept


def check_sharegpt_sft(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    roles = {"human": "user", "gpt": "assistant", "function_call": "assistant",
             "observation": "tool", "system": "system"}
    n_tool = 0
    for r in sel:
        src = raw[r["source_row"]]
        assert [m["role"] for m in r["messages"]] == [roles[m["from"]] for m in src["conversations"]]
        for m, s in zip(r["messages"], src["conversations"]):
            if s["from"] == "function_call":  # a tool call, not text
                call = json.loads(s["value"])
                assert m["content"] == "" and len(m["tool_calls"]) == 1
                fn = m["tool_calls"][0]["function"]
                assert fn["name"] == call["name"]
                assert json.loads(fn["arguments"]) == call["arguments"]
            else:
                assert m["content"] == s["value"]
        assert r["tools"] == src["tools"]
        assert r["conversations"] == src["conversations"]  # the original, unchanged
        n_tool += any(m["role"] == "tool" for m in r["messages"])
    assert n_tool >= 50, "the glaive tool-call rows must keep their tool turns"


def check_sharegpt_preference(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    for r in sel:
        src = raw[r["source_row"]]
        assert r["prompt"] == [{"role": roles[m["from"]], "content": m["value"]}
                               for m in src["conversations"]]
        assert r["prompt"][-1]["role"] == "user"
        assert r["chosen"] == [{"role": "assistant", "content": src["chosen"]["value"]}]
        assert r["rejected"] == [{"role": "assistant", "content": src["rejected"]["value"]}]


def check_openai(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    for r in sel:
        src = raw[r["source_row"]]
        assert r["messages"] == [{"role": m["role"], "content": m["content"]}
                                 for m in src["messages"]]
        assert r["label"] == src["label"]


def check_hh(run, raw):
    sel = selected_rows(run)
    rej = run.table("rejected").to_pylist()
    assert len(sel) + len(rej) == len(raw) and len(rej) <= 5
    single = 0
    for r in sel:
        assert r["prompt"][-1]["role"] == "user"
        assert {m["role"] for m in r["prompt"]} <= {"user", "assistant"}
        assert all(m["role"] == "assistant" for m in r["chosen"] + r["rejected"])
        assert r["chosen"] != r["rejected"]
        src = raw[r["source_row"]]
        assert r["raw_chosen"] == src["chosen"]
        # the whole transcript is prompt + answer, turn by turn
        text = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                       for m in r["prompt"] + r["chosen"])
        assert text.replace(" ", "") == src["chosen"].replace(" ", "")
        single += len(r["chosen"]) == 1 and len(r["rejected"]) == 1
    assert single >= len(sel) - 5


def check_ranked(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    for r in sel:
        src = raw[r["source_row"]]
        assert r["chosen"] == [{"role": "assistant", "content": src["output"][0]}]
        assert len(r["rejected"]) == 1 and r["rejected"][0]["role"] == "assistant"
        assert r["rejected"][0]["content"] in src["output"][1:]
        assert r["rejected"][0]["content"] == src["output"][-1]  # best vs worst
        assert r["prompt"][-1]["role"] == "user"
        assert r["prompt"][-1]["content"].startswith(src["instruction"])
        assert len(r["prompt"]) == 1 + 2 * len(src["history"] or [])


def check_pairwise(run, raw):
    sel = selected_rows(run)
    rej = run.table("rejected").to_pylist()
    ties = sum(1 for r in raw if r["preference"] == 1.5)
    assert ties > 0 and len(rej) == ties and all(r["reason"] == "tied preference" for r in rej)
    assert len(sel) == len(raw) - ties
    for r in sel:
        src = raw[r["source_row"]]
        win, lose = ("output_1", "output_2") if src["preference"] < 1.5 else ("output_2", "output_1")
        assert r["chosen"][0]["content"] == src[win]
        assert r["rejected"][0]["content"] == src[lose]


def check_prompt_completion(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    for r in sel[:500]:
        src = raw[r["source_row"]]
        assert r["messages"] == [{"role": "user", "content": src["question"]},
                                 {"role": "assistant", "content": src["answer"]}]


def check_text(run, raw):
    sel = selected_rows(run)
    assert len(sel) == len(raw)
    assert [r["text"] for r in sel] == [r["text"] for r in raw]


LAYOUTS = [
    ("alpaca", ALPACA, "sft", check_alpaca),
    ("sharegpt", GLAIVE, "sft", check_sharegpt_sft),
    ("sharegpt", DPO, "preference", check_sharegpt_preference),
    ("openai", KTO, "sft", check_openai),
    ("hh_rlhf", HH, "preference", check_hh),
    ("ranked", OAAST_RM, "preference", check_ranked),
    ("pairwise", ANNOTATIONS, "preference", check_pairwise),
    ("prompt_completion", GSM8K, "sft", check_prompt_completion),
    ("text", C4, "text", check_text),
]


@pytest.mark.parametrize("adapter, path, kind, check", LAYOUTS,
                         ids=[f"{a}-{p.stem}" for a, p, _, _ in LAYOUTS])
def test_adapter_on_real_data(tmp_path, adapter, path, kind, check):
    run = ingest_api(path, tmp_path / "run")
    m = run.manifest()
    assert m["input"]["adapters"] == {path.name: adapter}
    assert m["input"]["kind"] == kind
    raw = rows(path)
    assert m["counts"]["input"] == len(raw)
    ids = run.table("data", columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids))
    for r in run.table("selected").slice(0, 200).to_pylist():
        for col in ("messages", "prompt", "chosen", "rejected"):
            for msg in r.get(col) or []:
                assert msg["role"] in ROLES
    check(run, raw)


def test_ranked_pairs_best_with_worst(tmp_path):
    """LLaMA-Factory ranking rows list answers best first: the pair is the first
    against the last (best vs worst), as the README says."""
    raw = rows(OAAST_RM)
    run = ingest_api(OAAST_RM, tmp_path / "run")
    longer = [r for r in selected_rows(run) if len(raw[r["source_row"]]["output"]) > 2]
    assert len(longer) == 341
    for r in longer:
        out = raw[r["source_row"]]["output"]
        assert r["chosen"][0]["content"] == out[0]
        assert r["rejected"][0]["content"] == out[-1]
    assert sum(r["rejected"][0]["content"] != raw[r["source_row"]]["output"][1] for r in longer) > 300


# --- formats and ids ----------------------------------------------------------------

def write_formats(folder: Path, table: pa.Table, csv_ok: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True)
    records = table.to_pylist()
    out = {"parquet": folder / "rows.parquet", "json": folder / "rows.json",
           "jsonl": folder / "rows.jsonl"}
    pq.write_table(table, out["parquet"])
    out["json"].write_text(json.dumps(records, ensure_ascii=False, indent=1))
    write_jsonl(out["jsonl"], records)
    if csv_ok:  # with the stdlib csv module, as a spreadsheet would write it
        out["csv"] = folder / "rows.csv"
        with open(out["csv"], "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=table.column_names)
            w.writeheader()
            w.writerows(records)
    return out


def test_formats_give_the_same_ids_as_parquet(tmp_path):
    """JSON array, JSONL and CSV of the same real rows give the Parquet ids; the
    rows include answers that are numbers ("3", "0.5") and an input that is a number
    ("210"), which CSV type inference must not turn into ints (bad rows)."""
    t = pq.read_table(ALPACA)
    numeric = [35, 37, 441]  # output "3", output "0.5", input "210"
    assert t.take(numeric).column("output").to_pylist()[:2] == ["3", "0.5"]
    table = pa.concat_tables([t.slice(0, 30), t.take(numeric)])
    files = write_formats(tmp_path / "in", table)
    ids = {}
    for fmt, f in files.items():
        run = ingest_api(f, tmp_path / f"run_{fmt}")
        assert run.manifest()["counts"]["ingest_rejected"] == 0, fmt
        ids[fmt] = ids_in_order(run)
    assert len(ids["parquet"]) == 33
    for fmt in ("json", "jsonl", "csv"):
        assert ids[fmt] == ids["parquet"], fmt


def test_csv_columns_of_numbers_stay_text(tmp_path):
    """A CSV of classification rows whose answers are all numbers ("3", "0.5"):
    read as text, the rows are good and get the Parquet ids (type inference would
    read floats and reject every row as 'output is not a string')."""
    table = pq.read_table(ALPACA).take([35, 37])
    files = write_formats(tmp_path / "in", table)
    run = ingest_api(files["csv"], tmp_path / "run_csv")
    assert run.manifest()["counts"]["selected"] == 2
    assert [r["messages"][-1]["content"] for r in selected_rows(run)] == ["3", "0.5"]
    assert ids_in_order(run) == ids_in_order(ingest_api(files["parquet"], tmp_path / "run_pq"))


def test_nested_formats_give_the_same_ids_as_parquet(tmp_path):
    """OpenAI-messages rows (nested) as JSON and JSONL give the Parquet ids."""
    files = write_formats(tmp_path / "in", pq.read_table(KTO).slice(0, 40), csv_ok=False)
    ids = {fmt: ids_in_order(ingest_api(f, tmp_path / f"run_{fmt}")) for fmt, f in files.items()}
    assert len(ids["parquet"]) == 40
    assert ids["json"] == ids["parquet"] and ids["jsonl"] == ids["parquet"]


def test_large_csv_with_multiline_values(tmp_path):
    """A CSV larger than the reader's 4 MiB block whose answers span lines (gsm8k):
    every row is read, with the ids of the Parquet rows."""
    table = pa.concat_tables([pq.read_table(GSM8K), pq.read_table(GSM8K_TEST)])
    f = tmp_path / "gsm8k.csv"
    pacsv.write_csv(table, f)
    assert f.stat().st_size > 4 << 20
    pq.write_table(table, tmp_path / "gsm8k.parquet")
    run_csv = ingest_api(f, tmp_path / "run_csv")
    run_pq = ingest_api(tmp_path / "gsm8k.parquet", tmp_path / "run_pq")
    assert run_csv.manifest()["counts"]["input"] == table.num_rows
    assert ids_in_order(run_csv) == ids_in_order(run_pq)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_utf8_byte_order_mark_is_not_data(tmp_path, fmt):
    table = pq.read_table(ALPACA).slice(0, 10)
    files = write_formats(tmp_path / "in", table)
    f = files[fmt]
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    run = ingest_api(f, tmp_path / "run")
    ref = ingest_api(files["parquet"], tmp_path / "ref")
    assert ids_in_order(run) == ids_in_order(ref)
    assert "instruction" in run.table("data").column_names


def test_ids_are_stable_unique_and_repeats_differ(tmp_path):
    records = rows(ALPACA, 20)
    f = write_jsonl(tmp_path / "in" / "rows.jsonl", records + [records[3], records[3]])
    ok("ingest", f, "-o", tmp_path / "r1", "-q")
    ok("ingest", f, "-o", tmp_path / "r2", "-q")
    a, b = ids_in_order(read_run(tmp_path / "r1")), ids_in_order(read_run(tmp_path / "r2"))
    assert a == b and len(a) == 22
    assert len(set(a)) == 22, "ids must be unique, exact repeats included"
    assert a[20] != a[3] and a[21] != a[3] and a[20] != a[21]
    # the first copy keeps the id it has without the repeats
    g = write_jsonl(tmp_path / "in2" / "rows.jsonl", records)
    ok("ingest", g, "-o", tmp_path / "r3", "-q")
    assert ids_in_order(read_run(tmp_path / "r3")) == a[:20]
    # ids are content hashes: 16 hex digits
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in a)


def test_original_columns_are_kept(tmp_path):
    out = tmp_path / "run"
    ok("ingest", ALPACA, "-o", out, "-q")
    proc = ok("sql", out, "select instruction, input, output, source, source_row from data "
              "where source_row = 5", "--format", "json")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    src = rows(ALPACA, 6)[5]
    assert got == {"instruction": src["instruction"], "input": src["input"],
                   "output": src["output"], "source": "alpaca_en_demo.parquet", "source_row": 5}


def test_original_column_whose_type_changes_between_chunks(tmp_path):
    records = [dict(r, meta=i if i < 5 else f"note {i}") for i, r in enumerate(rows(ALPACA, 10))]
    f = write_jsonl(tmp_path / "rows.jsonl", records)
    run = read(f).write(tmp_path / "run", quiet=True, cache_dir=False, chunk_rows=5)
    assert run.manifest()["counts"]["selected"] == 10
