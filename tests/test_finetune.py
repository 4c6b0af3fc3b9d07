"""Fine-tuning (TRL + peft) and evaluation on a handful of real rows with the
embedded model: the loss goes down, the adapter reloads to the same logits, the
merged model equals base + adapter, eval equals a direct forward pass, a stopped
run resumes, and wrong inputs get one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from conftest import DATA, ROOT, cli, curate_cli
from curate import read
from curate.errors import CurateError
from curate.evaluate import evaluate
from curate.finetune import TrainConfig, finetune, training_rows
from curate.models import hf_dir, load_causal_lm, load_tokenizer, resolve

ALPACA = DATA / "llamafactory" / "alpaca_en_demo.parquet"
DPO = DATA / "llamafactory" / "dpo_en_demo.parquet"
FAST = dict(grad_accum=4, learning_rate=2e-3, max_length=160, warmup_ratio=0.0,
            lr_scheduler="constant")


def short_rows(path, n: int, tmp_path, name: str, max_chars: int = 260):
    """The ``n`` real rows of ``path`` whose text is shortest-ish (fast steps)."""
    table = pq.read_table(path)
    lengths = [len(json.dumps(r)) for r in table.to_pylist()]
    keep = [i for i, k in enumerate(lengths) if k <= max_chars * 2][:n]
    assert len(keep) == n
    out = tmp_path / f"{name}.parquet"
    pq.write_table(table.take(keep), out)
    return out


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    data = short_rows(ALPACA, 4, tmp, "alpaca")
    return read(data).write(tmp / "run", quiet=True, cache_dir=False), data


@pytest.fixture(scope="module")
def sft_model(sft_run, tmp_path_factory):
    run, _ = sft_run
    out = tmp_path_factory.mktemp("model") / "m"
    finetune(run.path, out, config=TrainConfig(max_steps=6, **FAST), merge=True, quiet=True)
    return out


def test_sft_loss_goes_down_and_the_model_dir_is_complete(sft_run, sft_model):
    run, _ = sft_run
    log = pl.read_parquet(sft_model / "train_log.parquet")
    assert log["step"].to_list() == [1, 2, 3, 4, 5, 6]
    # every step sees the same 4 rows (batch 1 x 4 accumulated): the loss must fall
    assert log["loss"][-1] < 0.8 * log["loss"][0], log["loss"].to_list()
    assert (log["tokens_per_s"] > 0).all()
    info = json.loads((sft_model / "curate_model.json").read_text())
    assert info["status"] == "complete" and info["method"] == "sft" and info["rows"] == 4
    assert info["config"]["max_steps"] == 6 and info["learning_rate"] == 2e-3
    ids = pq.read_table(sft_model / "rows.parquet")["id"].to_pylist()
    assert sorted(ids) == sorted(run.table("selected", columns=["id"])["id"].to_pylist())
    card = (sft_model / "README.md").read_text()
    assert str(run.path) in card and "| lora_r | 16 |" in card
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
              "merged/config.json"):
        assert (sft_model / f).exists(), f


def test_the_answer_is_the_completion(sft_run):
    run, data = sft_run
    rows = training_rows(run.table("selected"), "sft", "sft")
    raw = pq.read_table(data).to_pylist()
    assert {r["completion"][0]["content"] for r in rows} == {r["output"] for r in raw}
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)


def test_adapter_reloads_to_the_same_logits_and_merged_equals_base_plus_adapter(sft_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(sft_model))
    ids = torch.tensor([tok("Give three tips for staying healthy.")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(hf_dir(resolve("smollm2-135m")), dtype=torch.float32)
    with torch.inference_mode():
        plain = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, str(sft_model)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(sft_model / "merged",
                                                      dtype=torch.float32)(ids).logits
    assert (with_adapter - plain).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(merged, with_adapter, atol=1e-4)
    # curate loads a fine-tune folder as base + adapter
    info = json.loads((sft_model / "curate_model.json").read_text())
    info["merged"] = False
    (sft_model / "curate_model.json").write_text(json.dumps(info))
    try:
        with torch.inference_mode():
            loaded = load_causal_lm(str(sft_model), device="cpu", dtype="float32")(ids).logits
    finally:
        info["merged"] = True
        (sft_model / "curate_model.json").write_text(json.dumps(info))
    assert torch.allclose(loaded, with_adapter, atol=1e-4)


def test_eval_of_the_base_model_equals_a_direct_forward_pass(sft_run, tmp_path):
    _, data = sft_run
    summary = evaluate("smollm2-135m", data, tmp_path / "eval", quiet=True, cache_dir=False)
    assert summary["scored_rows"] == 4
    tok = load_tokenizer("smollm2-135m")
    lm = load_causal_lm("smollm2-135m", device="cpu", dtype="float32")
    total = n = 0.0
    for r in pq.read_table(data).to_pylist():
        user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
        full = tok.apply_chat_template([{"role": "user", "content": user},
                                        {"role": "assistant", "content": r["output"]}],
                                       tokenize=False).rstrip()
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            lp = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)
        toks = [lp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids))]
        total += -sum(toks)
        n += len(toks)
    assert summary["token_loss"] == pytest.approx(total / n, rel=1e-4)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"] == 4


def test_the_fine_tuned_model_fits_its_training_rows_better(sft_run, sft_model, tmp_path):
    _, data = sft_run
    proc = curate_cli("eval", sft_model, "--data", data, "-o", tmp_path / "tuned", "--no-cache")
    assert "reward accuracy" not in proc.stderr and "perplexity" in proc.stderr
    base = evaluate("smollm2-135m", data, tmp_path / "base", quiet=True, cache_dir=False)
    tuned = json.loads((tmp_path / "tuned" / "eval.json").read_text())
    assert tuned["token_loss"] < 0.8 * base["token_loss"]


def test_dpo_loss_goes_down_and_eval_reports_reward_accuracy(tmp_path):
    data = short_rows(DPO, 4, tmp_path, "dpo", max_chars=900)
    run = read(data).write(tmp_path / "run", quiet=True, cache_dir=False)
    out = finetune(run.path, tmp_path / "m", config=TrainConfig(
        method="dpo", max_steps=4, beta=0.5, **FAST), quiet=True)
    log = pl.read_parquet(out / "train_log.parquet")
    assert log["loss"][0] == pytest.approx(0.6931, abs=0.02)  # log 2: policy == reference
    assert log["loss"][-1] < log["loss"][0] - 0.05, log["loss"].to_list()
    s = evaluate(str(out), data, tmp_path / "eval", quiet=True, cache_dir=False)
    base = evaluate("smollm2-135m", data, tmp_path / "base", quiet=True, cache_dir=False)
    assert s["kind"] == "preference" and s["scored_rows"] == 4
    # the chosen answers gained on the rejected ones (exact 4/4 varies with the CPU)
    assert s["mean_margin"] > base["mean_margin"] + 0.05, (s, base)
    assert s["reward_accuracy"] >= max(0.75, base["reward_accuracy"])


def test_a_stopped_run_resumes_from_its_checkpoint(sft_run, tmp_path):
    run, _ = sft_run
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "curate.cli", "finetune", str(run.path), "-o", str(out),
           "--max-steps", "4", "--save-steps", "1", "--grad-accum", "2", "--max-length", "160"]
    env = {**os.environ, "CURATE_PROGRESS": "plain", "CURATE_PROGRESS_INTERVAL": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("finetune: 1/4 steps"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=600)[1]
    assert proc.returncode == 2, "".join(seen) + rest
    assert "rerun with --resume" in rest
    assert not json.loads((out / "curate_model.json").read_text())["status"] == "complete"
    stopped = pl.read_parquet(out / "train_log.parquet")["step"].to_list()
    assert stopped and max(stopped) < 4
    again = cli("finetune", run.path, "-o", out, "--max-steps", "4")
    assert again.returncode == 2 and "--resume" in again.stderr  # never clobbered by accident
    curate_cli(*cmd[3:], "--resume", env=env)
    log = pl.read_parquet(out / "train_log.parquet")["step"].to_list()
    assert log == [1, 2, 3, 4]
    assert json.loads((out / "curate_model.json").read_text())["steps"] == 4


def test_bad_training_input_gets_one_clear_error(sft_run, tmp_path):
    run, data = sft_run
    wrong = cli("finetune", run.path, "--method", "dpo", "-o", tmp_path / "m1")
    assert wrong.returncode == 2 and "use --method sft" in wrong.stderr
    nomodel = cli("finetune", run.path, "--model", "no-such-model", "-o", tmp_path / "m2")
    assert nomodel.returncode == 2 and "unknown model 'no-such-model'" in nomodel.stderr
    empty = read(data).select("random", budget=0).write(tmp_path / "empty", quiet=True,
                                                         cache_dir=False)
    with pytest.raises(CurateError, match="selected no rows"):
        finetune(empty.path, tmp_path / "m3")
    with pytest.raises(CurateError, match="unknown training option"):
        TrainConfig.from_options({"lora_rank": 8})
    text = cli("eval", "smollm2-135m", "--data", DATA / "c4_demo" / "c4_demo.parquet",
               "--kind", "text", "-o", tmp_path / "e")
    assert text.returncode == 2 and "reference answers" in text.stderr
    for m in ("m1", "m2", "m3"):
        assert not (tmp_path / m / "curate_model.json").exists()


def test_a_model_without_chat_template_trains_with_the_plain_template(sft_run, tmp_path):
    """A local model folder whose tokenizer has no chat template: one warning naming the
    template used, and training works with it."""
    run, _ = sft_run
    src = hf_dir(resolve("smollm2-135m"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in src.iterdir():
        if f.name == "model.safetensors":
            (bare / f.name).symlink_to(f)
        elif f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg.pop("chat_template", None)
            (bare / f.name).write_text(json.dumps(cfg))
        elif f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    assert not getattr(load_tokenizer(str(bare)), "chat_template", None)
    r = cli("finetune", run.path, "--model", bare, "-o", tmp_path / "m", "--max-steps", "1",
            "--grad-accum", "1", "--max-length", "160", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: model") == 1 and "no chat template" in r.stderr, r.stderr
    assert "'User: ... Assistant: ...'" in r.stderr
    info = json.loads((tmp_path / "m" / "curate_model.json").read_text())
    assert info["status"] == "complete"
