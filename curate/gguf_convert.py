"""A llama-architecture GGUF file (the embedded SmolLM2 among them) to a transformers
folder, in one read of the file.

transformers can load GGUF itself, but it parses the file once for the config, once for
the tokenizer and once for the weights (about 2 s each here, most of it the 49k-entry
vocabulary) and then builds a float32 model to save: about 24 s for the 135M model on 2
cores, all of it in a new user's first run. This reads the file once, dequantises with
the ``gguf`` package, names the tensors with its name map and writes the weights in the
dtype they will be used in (about 4 s). Other architectures and tokenizers return False,
and the caller falls back to transformers' own conversion. ``tests/test_models.py``
checks that both give the same tokens and the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# GGUF llama metadata -> LlamaConfig fields
CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
}
# tokenizer special token -> its GGUF id key (the config's field is the name + "_id")
SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
               "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}
CONTROL, USER_DEFINED = 3, 4  # token types: added as special / as plain added tokens
BIG_FIELDS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def convert_gguf(path: Path, out: Path, dtype: str) -> bool:
    """Write config, tokenizer and ``dtype`` weights of the GGUF file ``path`` into the
    folder ``out``; False (nothing written) when the file is not a llama model with a
    byte-level BPE tokenizer."""
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    reader = gguf.GGUFReader(str(path))
    meta = {name: field.contents() for name, field in reader.fields.items()
            if name not in BIG_FIELDS}
    if (meta.get("general.architecture") != "llama" or meta.get("tokenizer.ggml.model") != "gpt2"
            or meta.get("tokenizer.ggml.add_bos_token")):
        return False
    lists = {name: reader.fields[name].contents() for name in BIG_FIELDS}
    alphabet = set(ByteLevel.alphabet())  # byte-level BPE spells every token in it
    if not all(set(t) <= alphabet for t in lists["tokenizer.ggml.tokens"]):
        return False
    tensors = {t.name: t for t in reader.tensors}
    config = _config(meta, len(lists["tokenizer.ggml.tokens"]), tied="output.weight" not in tensors)
    state = _weights(config, tensors, dtype)
    if state is None:
        return False
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer(lists, meta).save_pretrained(out)
    return True


def _config(meta: dict[str, Any], vocab_size: int, tied: bool):
    from transformers import LlamaConfig

    kwargs = {hf: meta[f"llama.{key}"] for key, hf in CONFIG_KEYS.items() if f"llama.{key}" in meta}
    kwargs["vocab_size"] = meta.get("llama.vocab_size", vocab_size)
    for name, key in SPECIAL_IDS.items():  # bos_token -> bos_token_id, ...
        if f"tokenizer.ggml.{key}" in meta:
            kwargs[f"{name}_id"] = meta[f"tokenizer.ggml.{key}"]
    return LlamaConfig(tie_word_embeddings=tied, architectures=["LlamaForCausalLM"], **kwargs)


def _weights(config, tensors: dict, dtype: str) -> dict | None:
    """HF name -> tensor in ``dtype`` for every parameter of the model (None: a name the
    GGUF file does not have)."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        names = list(LlamaForCausalLM(config).state_dict())
    names_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = {}
    for name in names:
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        src = names_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if src not in tensors:
            return None
        t = tensors[src]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        if ".attn_q." in src:
            w = _unpermute(w, config.num_attention_heads)
        elif ".attn_k." in src:
            w = _unpermute(w, config.num_key_value_heads)
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32)).to(
            getattr(torch, dtype)).contiguous()
    return state


def _unpermute(w, heads: int):
    """Undo the rotary row order llama.cpp gives q and k projections."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _tokenizer(fields: dict[str, list], meta: dict[str, Any]):
    """The byte-level BPE tokenizer of the file, as transformers' GGUF reader builds it
    (GPT-2 split, same ids and offsets): control tokens special, user-defined ones added,
    and the file's special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk_id] if unk_id is not None else None,
                     fuse_unk=False, byte_fallback=False)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel(add_prefix_space=True)
    tk.post_processor = processors.TemplateProcessing(single="$A", pair="$A:0 $B:1")
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True)
                           for t, kind in zip(tokens, types) if kind == CONTROL])
    tk.add_tokens([AddedToken(t, normalized=False, special=False)
                   for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    special = {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in SPECIAL_IDS.items()
               if f"tokenizer.ggml.{key}" in meta}
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, **special)
    if "tokenizer.chat_template" in meta:
        fast.chat_template = meta["tokenizer.chat_template"]
    return fast
