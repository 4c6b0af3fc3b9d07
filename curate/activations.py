"""The residual stream after one decoder layer of a causal LM, over each row's tokens.

Rows are rendered as the perplexity scorer renders them (the model's chat template;
preference rows as prompt + chosen; text rows as raw text), and the model loading,
truncation and length-sorted token-budget batching are the perplexity scorer's. The
forward pass stops at the chosen layer (a hook captures its output and ends the pass),
so the layers above it and the LM head cost nothing. Activations are kept only for the
tokens of the messages' contents (the template's scaffolding, e.g. a default system
prompt every row shares, and the first token are left out).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from curate.errors import CurateError
from curate.schema import kind_of, message_text


@dataclass
class Tokens:
    """A row's token ids and the positions whose activations count."""

    ids: list[int]
    keep: list[int]


class _Stop(Exception):
    """Raised by the capture hook: nothing above the layer needs computing."""


def decoder_layers(lm):
    """The model's list of decoder blocks (llama/mistral/qwen ``model.layers``, gpt2
    ``transformer.h``, neox ``gpt_neox.layers``, ...)."""
    import torch

    n = getattr(lm.config, "num_hidden_layers", None)
    for _, mod in lm.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise CurateError(f"cannot find the {n} decoder layers of model {type(lm).__name__}")


class Residual:
    """Captures the residual stream after ``layer`` of ``model`` (see the module doc)."""

    def __init__(self, model: str = "smollm2-135m", layer: int | list[int] = 0,
                 max_length: int | None = 1024,
                 max_batch_tokens: int = 8192, device: str | None = None,
                 dtype: str | None = None):
        from curate.models import pick_device
        from scorers.perplexity import Perplexity

        if dtype is None:  # float32 on any CPU: SAEs read activations at full precision
            dtype = "bfloat16" if pick_device(device).startswith("cuda") else "float32"
        self.model = model
        self.layers = [layer] if isinstance(layer, int) else list(layer)
        self.layer = self.layers[0]
        self._many = not isinstance(layer, int)
        self.host = Perplexity(model=model, dtype=dtype, max_length=max_length,
                               max_batch_tokens=max_batch_tokens, device=device)
        self._layers = None

    def setup(self) -> None:
        if self._layers is not None:
            return
        self.host.setup()
        layers = decoder_layers(self.host._lm)
        for layer in self.layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
                raise CurateError(f"layer {layer} is out of range: model {self.model!r} has "
                                  f"{len(layers)} layers (0 to {len(layers) - 1})")
        self._layers = layers

    @property
    def hidden_size(self) -> int:
        self.setup()
        return int(self.host._lm.config.hidden_size)

    @property
    def num_layers(self) -> int:
        self.setup()
        return len(self._layers)

    @property
    def device(self) -> str:
        self.setup()
        return str(self.host._lm.device)

    # --- tokens ---------------------------------------------------------------------------

    def tokens(self, batch: pa.RecordBatch | pa.Table) -> list[Tokens | None]:
        """Per row: token ids (truncated to the context length) and content positions."""
        self.setup()
        kind = kind_of(batch.schema)
        if kind == "text":
            return [self._plain(t or "") for t in batch.column("text").to_pylist()]
        tools = (batch.column("tools").to_pylist() if "tools" in batch.schema.names
                 else [None] * batch.num_rows)
        if kind == "sft":
            convs = batch.column("messages").to_pylist()
        else:
            convs = [p + c for p, c in zip(batch.column("prompt").to_pylist(),
                                           batch.column("chosen").to_pylist())]
        return [self._conversation(c, t) for c, t in zip(convs, tools)]

    def _conversation(self, messages: list[dict], tools: str | None) -> Tokens | None:
        full = self.host.render(messages, tools=tools)
        spans, cursor = [], 0
        for m in messages:
            text = message_text(m)
            pos = full.find(text, cursor) if text else -1
            if pos >= 0:
                spans.append((pos, pos + len(text)))
                cursor = pos + len(text)
        enc = self.host._tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        keep = [t for t, (a, b) in enumerate(offsets)
                if t >= 1 and b > a and any(s <= a < e for s, e in spans)]
        return self._fit(Tokens(ids, keep))

    def _plain(self, text: str) -> Tokens | None:
        ids = self.host._tok(text, add_special_tokens=True)["input_ids"]
        return self._fit(Tokens(ids, list(range(1, len(ids)))))

    def _fit(self, t: Tokens) -> Tokens | None:
        limit = self.host.context_length()
        keep = [p for p in t.keep if p < limit]
        return Tokens(t.ids[:limit], keep) if keep else None

    # --- activations ----------------------------------------------------------------------

    def activations(self, toks: list[Tokens | None]) -> Iterator[tuple[list[int], list, object]]:
        """Yield (row indices, their kept-token counts, activations (tokens, hidden) on the
        model's device, rows' tokens concatenated in that order), one forward pass at a
        time, rows sorted by length and packed up to ``max_batch_tokens`` padded tokens.
        Built with a list of layers: a {layer: activations} dict instead."""
        import torch

        from scorers.perplexity import _token_batches, padded_batch

        self.setup()
        lm, tok = self.host._lm, self.host._tok
        todo = sorted((i for i, t in enumerate(toks) if t is not None), key=lambda i: len(toks[i].ids))
        lengths = [len(t.ids) if t else 0 for t in toks]
        captured: dict[int, object] = {}
        last = max(self.layers)

        def hook_for(layer: int):
            def hook(_mod, _inp, out):
                captured[layer] = out[0] if isinstance(out, tuple) else out
                if layer == last:
                    raise _Stop
            return hook

        handles = [self._layers[la].register_forward_hook(hook_for(la)) for la in set(self.layers)]
        try:
            for batch in _token_batches(todo, lengths, self.host.max_batch_tokens):
                ids, mask, r_t, c_t = padded_batch(tok, [toks[i].ids for i in batch],
                                                   [toks[i].keep for i in batch])
                with torch.inference_mode():
                    try:
                        lm(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
                    except _Stop:
                        pass
                    r_t, c_t = r_t.to(lm.device), c_t.to(lm.device)
                    acts = {la: captured.pop(la)[r_t, c_t].float() for la in self.layers}
                counts = [len(toks[i].keep) for i in batch]
                yield batch, counts, (acts if self._many else acts[self.layer])
        finally:
            for handle in handles:
                handle.remove()
