"""Perplexity of the answers under the target model, and the ratios built on it.

Each row is rendered with the target model's own chat template (the text a
trainer sees) and only assistant tokens count (each assistant turn's content
and its end-of-turn token). Per row:

- ``ppl_conditional``: perplexity of the assistant turns given the preceding turns;
- ``ppl_unconditional``: perplexity of the assistant turns alone (rendered as a
  conversation of only those turns);
- ``ifd``: instruction-following difficulty (Cherry LLM / Superfiltering):
  mean token loss given the instruction / mean token loss alone. Values are
  written as computed; IFD >= 1 means the instruction does not help predict
  the answer (often a misaligned or generic answer), and pipelines that use it
  drop those rows (``ifd < 1``) before ranking by it;
- ``logprob_conditional`` / ``logprob_unconditional``: mean log-probability per
  answer token (natural log), and ``response_tokens``.

Preference rows get the same columns for ``chosen_*`` and ``rejected_*`` plus
``logprob_margin`` = chosen minus rejected mean conditional log-probability.
Text rows get ``ppl``, ``logprob`` and ``tokens`` of the raw text (no template).

A row longer than ``max_length`` tokens is cut there: scores cover the tokens
that fit and ``ppl_truncated`` is true. A row with no answer tokens to score gets
null scores and ``ppl_null_reason``; no NaN is ever written.

Speed: on a GPU the sequences of a batch are sorted by length and packed into
forward passes of at most ``max_batch_tokens`` padded tokens; on a CPU each
sequence is its own forward pass (padding and masks cost more there than batching
gains), and the passes run one per core in threads that share the model (1.2x over
one pass at a time on all cores, at the memory of one model); the tokens every sequence
starts with (a template's default system prompt: 22 of SmolLM2's) run once, and each
pass reuses their keys and values (about 6% faster on real rows). The LM head runs only
on the positions whose next token is scored; ``torch.inference_mode``; the model
loads once per worker. The default dtype is
bfloat16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), float32
elsewhere; the dtype is part of the cache key. On such a CPU bf16 scores 1.6-2x
faster than float32 with perplexities within 0.4% (median) of float32.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from curate.lanes import run_lanes
from curate.models import default_dtype, load_causal_lm, load_tokenizer, pick_device, resolve
from curate.schema import for_template, kind_of, message_text
from curate.scorer import Resources, Scorer, register

log = logging.getLogger("curate.perplexity")

PER_ANSWER = {
    "ppl_conditional": pa.float64(),
    "ppl_unconditional": pa.float64(),
    "ifd": pa.float64(),
    "logprob_conditional": pa.float64(),
    "logprob_unconditional": pa.float64(),
    "response_tokens": pa.int32(),
}
FLAGS = {"ppl_truncated": pa.bool_(), "ppl_null_reason": pa.string()}
COLUMNS = {
    "sft": {**PER_ANSWER, **FLAGS},
    "preference": {**{f"chosen_{k}": v for k, v in PER_ANSWER.items()},
                   **{f"rejected_{k}": v for k, v in PER_ANSWER.items()},
                   "logprob_margin": pa.float64(), **FLAGS},
    "text": {"ppl": pa.float64(), "logprob": pa.float64(), "tokens": pa.int32(), **FLAGS},
}

FALLBACK_TEMPLATE = "plain User:/Assistant: (the tokenizer has no chat template)"


@dataclass
class Sequence:
    """Token ids and the positions whose token is scored."""

    ids: list[int]
    targets: list[int]  # positions t >= 1: score P(ids[t] | ids[:t])
    truncated: bool = False


@register
@dataclass
class Perplexity(Scorer):
    """Conditional / unconditional perplexity, IFD and log-probabilities of the
    answers under a causal LM (embedded ``smollm2-135m`` or a local model folder)."""

    name: ClassVar[str] = "perplexity"
    version: ClassVar[str] = "2"  # 2: a shared prefix's keys and values computed once
    columns: ClassVar[dict[str, pa.DataType]] = COLUMNS["sft"]
    token_columns: ClassVar[tuple[str, ...]] = ("response_tokens", "chosen_response_tokens",
                                                "rejected_response_tokens", "tokens")

    model: str = "smollm2-135m"
    dtype: str | None = None  # None: bfloat16 on CUDA and native-bf16 CPUs, else float32
    max_length: int | None = None  # None: the model's context length
    max_batch_tokens: int | None = None  # padded tokens per pass (None: 8192 on GPU, 1 row on CPU)
    device: str | None = field(default=None)  # None: cuda if available, else cpu

    _tok = None  # loaded in setup(); plain class attributes, not config fields
    _lm = None
    _template = ""
    _native_tools = False  # the chat template renders tool calls and tool schemas itself
    _replicas: ClassVar[list] = []
    _prefix_kv: ClassVar[dict] = {}

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        """A GPU when it runs on one, else this machine's cores (torch threads)."""
        return Resources(gpus=1.0 if pick_device(self.device).startswith("cuda") else 0.0)

    # --- protocol ------------------------------------------------------------------

    def columns_for(self, kind: str) -> dict[str, pa.DataType]:
        return COLUMNS[kind]

    def config(self) -> dict[str, Any]:
        # device does not change the scores; the effective dtype does
        return {"model": self.model, "dtype": self.effective_dtype(),
                "max_length": self.max_length}

    def effective_dtype(self) -> str:
        return self.dtype or default_dtype(pick_device(self.device))

    @property
    def batch_rows(self) -> int | None:  # type: ignore[override]
        """On a CPU 8 rows per batch (progress every few seconds; each sequence is its
        own forward pass there anyway); on a GPU the engine's batches."""
        return 8 if self.on_cpu else None

    @property
    def on_cpu(self) -> bool:
        return pick_device(self.device) == "cpu"

    def model_fingerprint(self) -> str:
        return resolve(self.model).fingerprint

    def setup(self) -> None:
        if self._lm is not None:
            return
        self._tok = load_tokenizer(self.model)
        self._lm = load_causal_lm(self.model, device=self.device, dtype=self.effective_dtype())
        self._replicas, self._prefix_kv = [self._lm], {}
        if (self.device in (None, "cuda") and str(self._lm.device).startswith("cuda")):
            import torch

            for k in range(1, torch.cuda.device_count()):  # data parallel: one replica per GPU
                self._replicas.append(load_causal_lm(self.model, device=f"cuda:{k}",
                                                     dtype=self.effective_dtype()))
        template = getattr(self._tok, "chat_template", None)
        if template:
            self._template = "chat template of the tokenizer"
            self._native_tools = "tool_calls" in str(template)
        else:
            self._template = FALLBACK_TEMPLATE
            log.warning("model %s has no chat template; using a plain User:/Assistant: template",
                        self.model)

    def unload(self) -> None:
        self._lm, self._replicas, self._prefix_kv = None, [], {}

    def describe(self) -> dict[str, Any]:
        return {"template": self._template,
                "devices": [str(m.device) for m in self._replicas] if self._lm else None,
                "dtype": self.effective_dtype(), "max_length": self.context_length()}

    def context_length(self) -> int:
        cfg = self._lm.config
        ctx = getattr(cfg, "max_position_embeddings", None) or 2048
        return min(self.max_length or ctx, ctx)

    # --- rendering -------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               tools: str | None = None) -> str:
        """The conversation as the trainer sees it (chat template or the fallback), tool
        calls and tool schemas included (as text where the template has no place for them)."""
        messages, schemas = for_template(messages, tools, native_tools=self._native_tools)
        if self._template != FALLBACK_TEMPLATE:
            extra = {"tools": schemas} if schemas else {}
            return self._tok.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **extra)
        names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
        eos = self._tok.eos_token or ""
        text = "".join(f"{names[m['role']]}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n\n"
                       for m in messages)
        return text + ("Assistant: " if add_generation_prompt else "")

    def _scorable(self, content: str) -> bool:
        for special in self._tok.all_special_tokens:
            content = content.replace(special, "")
        return bool(content.strip())

    def conversation(self, messages: list[dict], tools: str | None = None) -> Sequence | None:
        """Token ids of ``messages`` with every assistant turn (text and tool calls) as
        targets (None: nothing to score)."""
        if not any(m["role"] == "assistant" and self._scorable(message_text(m)) for m in messages):
            return None
        full = self.render(messages, tools=tools)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = (len(self.render(messages[:i], add_generation_prompt=True, tools=tools))
                     if i else 0)
            if i == 0:  # an answer with no turn before it: find where its content starts
                text = message_text(m)
                start = full.find(text) if text else len(self.render([], tools=tools))
            through = self.render(messages[:i + 1], tools=tools).rstrip()
            if not full.startswith(through):
                raise ValueError("chat template does not render turns as prefixes")
            spans.append((start, len(through)))
        enc = self._tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        targets = [t for t, (a, b) in enumerate(offsets)
                   if t >= 1 and b > a and any(s <= a < e for s, e in spans)]
        return Sequence(ids, targets)

    def answers_alone(self, messages: list[dict]) -> Sequence | None:
        answers = [m for m in messages if m["role"] == "assistant"]
        try:
            return self.conversation(answers)
        except Exception:  # templates that insist on a user turn first: plain answer text
            return self.plain("\n".join(message_text(m) for m in answers))

    def plain(self, text: str) -> Sequence | None:
        """Raw text (no template): every token after the first is a target."""
        ids = self._tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) < 2 or not self._scorable(text):
            return None
        return Sequence(ids, list(range(1, len(ids))))

    # --- model -----------------------------------------------------------------------

    def _truncate(self, seq: Sequence) -> Sequence:
        limit = self.context_length()
        if len(seq.ids) <= limit:
            return seq
        return Sequence(seq.ids[:limit], [t for t in seq.targets if t < limit], True)

    def logprobs(self, seqs: list[Sequence | None]) -> list[tuple[float, int] | None]:
        """(sum of target log-probs, number of targets) per sequence, batched by length.

        The batches go, longest first, to one lane per GPU replica (``device="cuda"``
        with several visible GPUs) or, on a CPU, to ``cpu_lanes`` threads that share the
        model, each running its passes on its own cores."""
        out: list[tuple[float, int] | None] = [None] * len(seqs)
        todo = [i for i, s in enumerate(seqs) if s is not None and s.targets]
        todo.sort(key=lambda i: len(seqs[i].ids))
        budget = self.max_batch_tokens  # 0: one sequence per pass
        if budget is None:
            budget = 0 if self.on_cpu else 8192
        batches = _token_batches(todo, [len(s.ids) if s else 0 for s in seqs], budget)[::-1]
        models = self._replicas or [self._lm]
        prefix = shared_prefix([seqs[i] for i in todo]) if budget == 0 else []
        caches = {id(m): self._prefix_cache(m, prefix) for m in models} if prefix else {}
        run_lanes(batches, lambda lm, batch: self._run_batch(lm, seqs, batch, out,
                                                             caches.get(id(lm))),
                  models, on_cpu=self.on_cpu)
        return out

    def _prefix_cache(self, lm, prefix: list[int]):
        """The keys and values of ``prefix`` under ``lm`` (computed once per model)."""
        import torch

        key = (id(lm), tuple(prefix))
        if key not in self._prefix_kv:
            if len(self._prefix_kv) >= 8:  # rows with their own system prompts: keep few
                self._prefix_kv.clear()
            with torch.inference_mode():
                ids = torch.tensor([prefix], device=lm.device)
                base = getattr(lm, lm.base_model_prefix, lm)
                # (hidden states, cache): the cache's field name differs across versions
                self._prefix_kv[key] = base(input_ids=ids, use_cache=True, return_dict=False)[1]
        return self._prefix_kv[key]

    def _run_batch(self, lm, seqs: list[Sequence | None], batch: list[int],
                   out: list[tuple[float, int] | None], prefix=None) -> None:
        """One forward pass over ``batch`` (indices into ``seqs``); fills ``out``.
        ``prefix``: the cached keys and values of the first tokens every sequence of a
        one-sequence ``batch`` starts with (see ``shared_prefix``)."""
        import copy

        import torch

        base = getattr(lm, lm.base_model_prefix, None)
        head = lm.get_output_embeddings()
        device = lm.device
        # On a CPU every new input shape makes the math library build (and keep) new
        # kernels: memory grew by ~2 MB per distinct length. A lone sequence is padded at
        # its end to one of 8 lengths per doubling (``shape_step``): causal attention keeps
        # the padding from reaching the real tokens, about 3% more tokens are computed,
        # and the shapes stay few (memory flat).
        skip = prefix.get_seq_length() if prefix is not None and len(batch) == 1 else 0
        step = shape_step(len(seqs[batch[0]].ids) - skip) if device.type == "cpu" and len(batch) == 1 else 1
        ids, mask, rows_t, cols_t = padded_batch(
            self._tok, [seqs[i].ids[skip:] for i in batch],
            [[t - skip for t in seqs[i].targets] for i in batch], step)
        past = {_cache_arg(base or lm): copy.deepcopy(prefix), "use_cache": True} if skip else {
            "use_cache": False}
        with torch.inference_mode():
            # one sequence needs no mask (a causal pass over all of it)
            ids_d, mask_d = ids.to(device), (mask.to(device) if len(batch) > 1 else None)
            rows_d, cols_d = rows_t.to(device), cols_t.to(device)
            if base is not None and head is not None:  # the LM head only where scored
                hidden = base(input_ids=ids_d, attention_mask=mask_d, **past).last_hidden_state
                at = hidden[rows_d, cols_d - 1]
            else:
                head = None
                at = lm(input_ids=ids_d, attention_mask=mask_d, **past).logits[rows_d, cols_d - 1]
            # on a CPU 64 positions at a time: with two lanes that was 3% faster and held
            # 170 MB less than 256 (the logits of a chunk are 49k floats a position)
            tok_lp = _target_logprobs(at, head, ids_d[rows_d, cols_d],
                                      chunk=64 if device.type == "cpu" else 256)
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, rows_d, tok_lp)
        for r, i in enumerate(batch):
            out[i] = (float(sums[r]), len(seqs[i].targets))

    # --- scoring ---------------------------------------------------------------------

    def score(self, batch: pa.RecordBatch) -> dict[str, list]:
        self.setup()
        kind = kind_of(batch.schema)
        if kind == "text":
            return self._score_text(batch)
        tools = (batch.column("tools").to_pylist() if "tools" in batch.schema.names
                 else [None] * batch.num_rows)
        if kind == "sft":
            convs = batch.column("messages").to_pylist()
            res = self._score_answers([(c, c) for c in convs], tools)
            return {**{k: [r[k] for r in res] for k in PER_ANSWER}, **_flags(res)}
        prompts = batch.column("prompt").to_pylist()
        chosen = batch.column("chosen").to_pylist()
        rejected = batch.column("rejected").to_pylist()
        rc = self._score_answers([(p + c, c) for p, c in zip(prompts, chosen)], tools)
        rr = self._score_answers([(p + r, r) for p, r in zip(prompts, rejected)], tools)
        out = {f"chosen_{k}": [r[k] for r in rc] for k in PER_ANSWER}
        out.update({f"rejected_{k}": [r[k] for r in rr] for k in PER_ANSWER})
        out["logprob_margin"] = [None if a["logprob_conditional"] is None or b["logprob_conditional"] is None
                                 else a["logprob_conditional"] - b["logprob_conditional"]
                                 for a, b in zip(rc, rr)]
        merged = [{"truncated": a["truncated"] or b["truncated"],
                   "reason": a["reason"] or (f"rejected: {b['reason']}" if b["reason"] else None)}
                  for a, b in zip(rc, rr)]
        out.update(_flags(merged))
        return out

    def _score_answers(self, rows: list[tuple[list[dict], list[dict]]],
                       tools: list[str | None]) -> list[dict]:
        """rows: (conversation, its answer turns); tools: each row's tool schemas.
        Returns one result dict per row."""
        cond, alone = [], []
        for (conv, answers), row_tools in zip(rows, tools):
            c = self.conversation(conv, row_tools)
            a = self.answers_alone([m for m in answers if m["role"] == "assistant"]) if c else None
            cond.append(self._truncate(c) if c else None)
            alone.append(self._truncate(a) if a else None)
        both = self.logprobs(cond + alone)  # one call: the passes spread over the lanes
        lp_c, lp_a = both[:len(cond)], both[len(cond):]
        results = []
        for c, a, x, y in zip(cond, alone, lp_c, lp_a):
            r = {k: None for k in PER_ANSWER}
            r["truncated"] = bool((c and c.truncated) or (a and a.truncated))
            r["reason"] = None
            if c is None:
                r["reason"] = "no answer tokens to score"
            elif x is None:
                r["reason"] = "answer starts beyond the context length"
            else:
                mean_c = x[0] / x[1]
                r.update(logprob_conditional=mean_c, ppl_conditional=_exp(-mean_c),
                         response_tokens=x[1])
                if y is not None:
                    mean_a = y[0] / y[1]
                    r.update(logprob_unconditional=mean_a, ppl_unconditional=_exp(-mean_a),
                             ifd=(mean_c / mean_a) if mean_a != 0 else None)
                for k in ("ppl_conditional", "ppl_unconditional", "ifd"):
                    if r[k] is not None and not math.isfinite(r[k]):
                        r[k] = None
                        r["reason"] = f"non-finite {k}"
            results.append(r)
        return results

    def _score_text(self, batch: pa.RecordBatch) -> dict[str, list]:
        texts = [t or "" for t in batch.column("text").to_pylist()]
        seqs = [self.plain(t) for t in texts]
        seqs = [self._truncate(s) if s else None for s in seqs]
        lps = self.logprobs(seqs)
        out = {"ppl": [], "logprob": [], "tokens": [], "ppl_truncated": [], "ppl_null_reason": []}
        for s, lp in zip(seqs, lps):
            mean = lp[0] / lp[1] if lp else None
            ppl = _exp(-mean) if mean is not None else None
            ppl = ppl if ppl is not None and math.isfinite(ppl) else None
            out["ppl"].append(ppl)
            out["logprob"].append(mean)
            out["tokens"].append(lp[1] if lp else None)
            out["ppl_truncated"].append(bool(s and s.truncated))
            out["ppl_null_reason"].append(None if ppl is not None else "no tokens to score")
        return out


def _exp(x: float) -> float | None:
    try:
        return math.exp(x)
    except OverflowError:
        return None


def _flags(results: list[dict]) -> dict[str, list]:
    return {"ppl_truncated": [r["truncated"] for r in results],
            "ppl_null_reason": [r["reason"] for r in results]}


def _target_logprobs(at, head, targets, chunk: int):
    """log p(target) at each scored position: ``at`` holds the positions' hidden states
    (projected by ``head``) or, with ``head`` None, their logits. Done ``chunk``
    positions at a time, so the float32 vocabulary-wide logits of a long answer never
    exist at once (49k x 4 bytes a position for SmolLM2)."""
    import torch

    out = torch.empty(len(targets), dtype=torch.float64, device=targets.device)
    for s in range(0, len(targets), chunk):
        logits = (head(at[s:s + chunk]) if head is not None else at[s:s + chunk]).float()
        picked = logits.gather(1, targets[s:s + chunk, None])[:, 0]
        out[s:s + chunk] = (picked - torch.logsumexp(logits, dim=-1)).double()
    return out


MIN_PREFIX = 8  # shorter shared prefixes are not worth a cached pass


def _cache_arg(model) -> str:
    """The name ``model.forward`` takes a key/value cache under (``cache`` from
    transformers 5.x, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def shared_prefix(seqs: list[Sequence]) -> list[int]:
    """The token ids every sequence starts with, up to the first scored position's
    context (empty when shorter than ``MIN_PREFIX``): a chat template's default system
    prompt, computed once instead of in every pass."""
    if not seqs:
        return []
    first = seqs[0].ids
    n = min(min(s.targets) for s in seqs) - 1
    for s in seqs[1:]:
        n = next((k for k in range(min(n, len(s.ids))) if s.ids[k] != first[k]), min(n, len(s.ids)))
    return first[:n] if n >= MIN_PREFIX else []


def shape_step(n: int) -> int:
    """Round ``n`` tokens up to a multiple of this: 8 sizes per doubling (n/16 to n/8)."""
    return max(8, 1 << max(0, n.bit_length() - 4))


def padded_batch(tok, id_lists: list[list[int]], positions: list[list[int]], multiple: int = 1):
    """One forward pass's input: (ids right-padded with the tokenizer's pad id to a
    ``multiple`` of tokens, the attention mask, and the row and column tensors of each
    sequence's ``positions``)."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = -(-max(map(len, id_lists)) // multiple) * multiple
    ids = torch.full((len(id_lists), width), pad, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    rows, cols = [], []
    for r, (seq, pos) in enumerate(zip(id_lists, positions)):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        rows += [r] * len(pos)
        cols += pos
    return ids, mask, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def _token_batches(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group indices (already sorted by length) so that rows x longest <= max_tokens."""
    batches, cur, longest = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and max(longest, n) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    return batches
