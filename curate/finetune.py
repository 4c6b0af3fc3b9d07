"""Fine-tune the target model on a run's selected rows with TRL (SFT or DPO) and peft.

The rows are rendered as the perplexity scorer sees them (tool calls and tool
schemas written as text where the chat template has no place for them). SFT uses
TRL's conversational prompt/completion layout, so the loss is on the answer only
(the last assistant turn; earlier turns are context): SmolLM2's chat template has
no generation markers, so TRL's assistant-only mask does not apply to it. DPO
uses prompt/chosen/rejected; with LoRA the reference model is the base with the
adapter switched off.

MODEL_DIR after a run:
```
MODEL_DIR/adapter_model.safetensors, adapter_config.json   the LoRA adapter (or full weights)
MODEL_DIR/tokenizer files                                  the tokenizer
MODEL_DIR/merged/                                          base + adapter (with merge)
MODEL_DIR/README.md                                        model card: run, selection, rows, hyper-parameters
MODEL_DIR/rows.parquet                                     ids of the rows trained on
MODEL_DIR/train_log.parquet                                loss, learning rate, tokens/s per step
MODEL_DIR/curate_model.json                                all of it as data; "status": "complete" last
MODEL_DIR/checkpoints/                                     the trainer's checkpoints (resume)
```
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.errors import CurateError
from curate.models import DEFAULT_LM, FALLBACK_CHAT_TEMPLATE, MODEL_MARKER as MARKER, hf_dir, load_tokenizer, pick_device, resolve
from curate.progress import Log
from curate.run import open_run, write_json, write_table
from curate.schema import for_template, prompt_messages



@dataclass
class TrainConfig:
    """Hyper-parameters of a fine-tuning run (every one lands in the model card)."""

    method: str = "sft"  # sft or dpo
    lora: bool = True  # False: full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float | None = None  # default: 2e-4 with LoRA, 2e-5 full
    batch_size: int = 1  # per device; on CPU, batch 1 with accumulation beats padded batches
    grad_accum: int = 4
    max_length: int = 1024
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    beta: float = 0.1  # DPO
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on GPU, float32 on CPU; or float32 / bfloat16
    save_steps: int = 25
    device: str | None = None

    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.lora else 2e-5)

    def check(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise CurateError(f"method must be sft or dpo, got {self.method!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise CurateError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "save_steps"):
            if getattr(self, name) < 1:
                raise CurateError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise CurateError("give epochs > 0 or max_steps > 0")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrainConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise CurateError(f"unknown training option(s) {unknown}; known: {', '.join(names)}")
        return cls(**options)


# --- rows -------------------------------------------------------------------------

def training_rows(table: pa.Table, kind: str, method: str) -> list[dict[str, Any]]:
    """Selected rows in TRL's conversational layout: prompt/completion (SFT) or
    prompt/chosen/rejected (DPO), as the model's chat template will see them."""
    tools = table["tools"].to_pylist() if "tools" in table.column_names else [None] * len(table)
    rows = []
    if method == "sft":
        for msgs, t in zip(table["messages"].to_pylist(), tools):
            plain, _ = for_template(msgs, t)
            n = len(prompt_messages(msgs)) + (len(plain) - len(msgs))  # a tools note adds a turn
            rows.append({"prompt": plain[:n], "completion": plain[n:n + 1]})
        return rows
    for p, c, r, t in zip(table["prompt"].to_pylist(), table["chosen"].to_pylist(),
                          table["rejected"].to_pylist(), tools):
        prompt, _ = for_template(p, t)
        rows.append({"prompt": prompt, "chosen": for_template(c)[0],
                     "rejected": for_template(r)[0]})
    return rows


# --- the run ------------------------------------------------------------------------

def _callbacks(log: Log, total_steps: int, history: list[dict], stop: dict[str, bool]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Our progress bar (loss, tokens/s), the per-step log, and a clean stop on a signal."""

        def __init__(self) -> None:
            self.bar = None
            self.t0 = time.monotonic()
            self.tokens0 = 0

        def on_train_begin(self, args, state, control, **kw):
            self.bar = log.bar("finetune", total=total_steps, unit="steps")
            self.bar.update(state.global_step)
            self.tokens0 = state.num_input_tokens_seen or 0
            self.t0 = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs:
                return
            elapsed = max(time.monotonic() - self.t0, 1e-9)
            tokens = (state.num_input_tokens_seen or 0) - self.tokens0
            rec = {"step": state.global_step, "epoch": float(state.epoch or 0),
                   "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0)),
                   "tokens_seen": int(state.num_input_tokens_seen or 0),
                   "tokens_per_s": tokens / elapsed}
            history.append(rec)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(1)
            if stop["now"]:
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return [Progress()]


def _load_model(model: str, cfg: TrainConfig, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda")
                                                     else "float32")
    base = hf_dir(resolve(model))
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    return lm, dtype, base


def finetune(run_dir: str | Path, output: str | Path, *, model: str = DEFAULT_LM,
             config: TrainConfig | None = None, merge: bool = False, resume: bool = False,
             overwrite: bool = False, quiet: bool = False) -> Path:
    """Train ``model`` on the selected rows of ``run_dir``; returns MODEL_DIR."""
    cfg = config or TrainConfig()
    cfg.check()
    log = Log(quiet)
    run = open_run(run_dir)
    manifest = run.manifest() or {}
    kind = manifest.get("input", {}).get("kind")
    want = {"sft": "sft", "dpo": "preference"}[cfg.method]
    if kind != want:
        other = {"sft": "sft", "preference": "dpo"}.get(kind or "")
        hint = f"; use --method {other}" if other else ""
        raise CurateError(f"{cfg.method} trains on {want} rows but run {run.path} holds "
                          f"{kind} rows{hint}")
    table = run.table("selected")
    if table.num_rows == 0:
        raise CurateError(f"run {run.path} selected no rows: nothing to train on")
    out = Path(output)
    _prepare(out, resume=resume, overwrite=overwrite)
    device = pick_device(cfg.device)
    rows = training_rows(table, kind, cfg.method)
    lm, dtype, base_dir = _load_model(model, cfg, device)
    tok = load_tokenizer(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
        warnings.warn(f"model {model} has no chat template; training with plain 'User: ... "
                      "Assistant: ...' turns (the template curate's scorers use for it)",
                      stacklevel=2)
    import datasets

    datasets.disable_progress_bars()
    # TRL passes the old argument name on to transformers; nothing for the user to change
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
    dataset = datasets.Dataset.from_list(rows)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                 lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
                                 task_type="CAUSAL_LM")
    common = dict(output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
                  gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr(),
                  num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
                  warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler,
                  weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
                  logging_steps=1, save_steps=cfg.save_steps, save_total_limit=2,
                  report_to="none", disable_tqdm=True, use_cpu=not device.startswith("cuda"),
                  bf16=dtype == "bfloat16", fp16=False, gradient_checkpointing=False,
                  include_num_input_tokens_seen="all", max_length=cfg.max_length,
                  dataset_num_proc=None)
    history: list[dict] = []
    stop = {"now": False}
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=lm, args=SFTConfig(**common), train_dataset=dataset,
                             processing_class=tok, peft_config=peft_config)
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=lm, args=DPOConfig(beta=cfg.beta, **common),
                             train_dataset=dataset, processing_class=tok, peft_config=peft_config)
    total = trainer.args.max_steps if trainer.args.max_steps > 0 else None
    if total is None:
        steps_per_epoch = -(-len(dataset) // (cfg.batch_size * cfg.grad_accum))
        total = int(round(steps_per_epoch * cfg.epochs)) or 1
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our own progress reports the loss
    for cb in _callbacks(log, total, history, stop):
        trainer.add_callback(cb)
    checkpoint = _last_checkpoint(out) if resume else None
    log.info(f"finetune: {cfg.method} {'LoRA' if cfg.lora else 'full'} on {len(dataset)} rows of "
             f"{run.path}, {total} steps, {dtype} on {device}"
             + (f", resuming from {checkpoint.name}" if checkpoint else ""))
    write_json({"status": "training", "run": str(run.path), "model": model}, out / MARKER)

    def on_signal(signum, frame):  # finish the step, save a checkpoint, stop
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    seconds = time.monotonic() - t0
    _append_log(out, history)
    if stop["now"]:
        raise CurateError(f"training stopped at step {trainer.state.global_step}; a checkpoint is "
                          f"in {out / 'checkpoints'}: rerun with --resume to continue")
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    if merge:
        _merge(trainer.model, tok, out / "merged", cfg.lora)
    info = {
        "status": "complete", "format": 1, "method": cfg.method, "base_model": model,
        "base_model_path": str(base_dir), "base_fingerprint": resolve(model).fingerprint,
        "adapter": cfg.lora, "merged": merge, "run": str(run.path),
        "run_key": manifest.get("run_key"), "pipeline": manifest.get("pipeline", {}).get("name"),
        "selection": [s for s in manifest.get("pipeline", {}).get("steps", [])
                      if s.get("step") == "select"],
        "rows": len(dataset), "config": dataclasses.asdict(cfg), "learning_rate": cfg.lr(),
        "dtype": dtype, "device": device, "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss), "seconds": round(seconds, 1),
    }
    write_table(table.select(["id"]), out / "rows.parquet")
    (out / "README.md").write_text(_model_card(info), encoding="utf-8")
    write_json(info, out / MARKER)
    log.info(f"finetune: {info['steps']} steps in {seconds:.0f} s, mean loss "
             f"{info['train_loss']:.4f}; model in {out}")
    return out


def _prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    marker = out / MARKER
    if resume:
        if not marker.exists():
            raise CurateError(f"nothing to resume in {out}: no earlier fine-tuning run there")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            state = json.loads(marker.read_text()).get("status") if marker.exists() else None
            hint = ("--resume continues it, " if state == "training" else "")
            raise CurateError(f"output {out} is not empty; {hint}--overwrite replaces it")
        if not marker.exists() and not (out / "adapter_config.json").exists():
            raise CurateError(f"--overwrite refuses {out}: it does not look like a curate model "
                              "folder; choose another --output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _last_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return ckpts[-1] if ckpts else None


def _append_log(out: Path, history: list[dict]) -> None:
    """Add this session's steps to train_log.parquet (a resumed run keeps the first part)."""
    import pyarrow.parquet as pq

    path = out / "train_log.parquet"
    old = pq.read_table(path).to_pylist() if path.exists() else []
    steps = {r["step"] for r in history}
    rows = [r for r in old if r["step"] not in steps] + history
    schema = pa.schema([("step", pa.int64()), ("epoch", pa.float64()), ("loss", pa.float64()),
                        ("learning_rate", pa.float64()), ("tokens_seen", pa.int64()),
                        ("tokens_per_s", pa.float64())])
    write_table(pa.Table.from_pylist(sorted(rows, key=lambda r: r["step"]), schema=schema), path)


def _merge(model, tok, folder: Path, lora: bool) -> None:
    merged = model.merge_and_unload() if lora else model
    folder.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def _model_card(info: dict[str, Any]) -> str:
    cfg = info["config"]
    lines = [
        f"# {info['method'].upper()} fine-tune of {info['base_model']}", "",
        f"Trained by curate on the {info['rows']} rows selected in run `{info['run']}` "
        f"(pipeline `{info['pipeline']}`; the ids are in `rows.parquet`, so "
        "`curate sql` can join them).", "",
        "Selection: " + (json.dumps(info["selection"]) if info["selection"] else "none (every row)"),
        "",
        f"{info['steps']} optimisation steps, {info['seconds']} s, mean training loss "
        f"{info['train_loss']:.4f}, {info['dtype']} on {info['device']}; loss per step in "
        "`train_log.parquet`.", "",
        "| hyper-parameter | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in {**cfg, "learning_rate": info["learning_rate"]}.items()]
    return "\n".join(lines) + "\n"




