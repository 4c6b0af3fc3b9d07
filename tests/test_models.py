"""The embedded models load offline and behave like the models they are."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from _data import ALPACA, MSRP, read_rows

from curate.errors import ModelError
from curate.models import list_models, load_causal_lm, load_sentence_model, load_tokenizer, resolve


@pytest.fixture(scope="module")
def offline():
    """No network: the hub libraries must find everything locally."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def lm(offline):
    return load_causal_lm("smollm2-135m", device="cpu"), load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def embedder(offline):
    return load_sentence_model("minilm", device="cpu")


def perplexity(lm, text: str) -> float:
    import torch

    model, tok = lm
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss
    return float(torch.exp(loss))


def shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def test_lm_prefers_real_sentences_to_shuffled_words(lm):
    # the first five sentences of 8+ words in real alpaca answers
    sentences = [s for r in read_rows(ALPACA, 20) for s in re.split(r"(?<=[.!?])\s+|\n+", r["output"])
                 if len(s.split()) >= 8 and s[-1] in ".!?"][:5]
    assert len(sentences) == 5
    for s in sentences:
        real, shuf = perplexity(lm, s), perplexity(lm, shuffled(s))
        assert 5 * real < shuf, (s, real, shuf)  # measured 26x to 116x


def test_lm_is_a_float_causal_lm(lm):
    model, tok = lm
    assert model.config.model_type == "llama"
    assert next(model.parameters()).dtype.is_floating_point
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.decode(tok.encode("Hello world", add_special_tokens=False)) == "Hello world"


def test_minilm_paraphrases_are_closer_than_unrelated_pairs(embedder):
    import numpy as np

    pairs = [r for r in read_rows(MSRP, 200) if r["label"] == 1][:20]
    assert len(pairs) == 20
    s1 = embedder.encode([p["s1"] for p in pairs], normalize_embeddings=True)
    s2 = embedder.encode([p["s2"] for p in pairs], normalize_embeddings=True)
    assert s1.shape == (20, 384)
    matched = (s1 * s2).sum(axis=1)  # cosine of each paraphrase pair
    unrelated = (s1 * np.roll(s2, 1, axis=0)).sum(axis=1)  # s1 of one pair vs s2 of another
    assert (matched > unrelated).all()
    assert matched.mean() > 0.7 > 0.3 > unrelated.mean()  # measured 0.78 and 0.04


def test_resolve_unknown_model_raises():
    with pytest.raises(ModelError, match="no-such-model"):
        resolve("no-such-model")


def test_resolve_local_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    ref = resolve(str(tmp_path))
    assert ref.path == tmp_path.resolve() and not ref.embedded
    assert ref.fingerprint != ""


def test_list_models_lists_embedded_weights():
    rows = {r["name"]: r for r in list_models()}
    assert {"smollm2-135m", "minilm"} <= set(rows)
    assert rows["smollm2-135m"]["weights"].endswith(".gguf")
    for name in ("smollm2-135m", "minilm"):
        assert Path(rows[name]["weights"]).exists(), rows[name]
    assert rows["smollm2-135m"]["task"] == "causal_lm"
    assert rows["minilm"]["task"] == "sentence"
    assert resolve("smollm2-135m").fingerprint == rows["smollm2-135m"]["package"]


def test_one_read_gguf_conversion_equals_transformers_own(tmp_path, offline):
    """The embedded GGUF converted by curate's one-read path and by transformers' GGUF
    loader: the same weights bit for bit, the same config, and the same token ids and
    offsets on every string of 40 rows of each real test data file (English, Chinese,
    code, tool calls, numbers)."""
    import json

    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from curate.gguf_convert import convert_gguf
    from curate.models import _convert_with_transformers

    ref = resolve("smollm2-135m")
    assert convert_gguf(ref.path / ref.gguf_file, tmp_path / "fast", "float32")
    _convert_with_transformers(ref, tmp_path / "slow", "float32")

    fast, slow = (load_file(tmp_path / d / "model.safetensors") for d in ("fast", "slow"))
    assert sorted(fast) == sorted(slow) and len(fast) == 272
    assert all(torch.equal(fast[k], slow[k]) for k in fast)
    del fast, slow
    cfg_fast, cfg_slow = (json.loads((tmp_path / d / "config.json").read_text())
                          for d in ("fast", "slow"))
    for k in ("_model_name_or_path", "dtype"):  # the GGUF's display name; float32 in both
        cfg_fast.pop(k, None), cfg_slow.pop(k, None)
    assert cfg_fast == cfg_slow

    a, b = (AutoTokenizer.from_pretrained(tmp_path / d) for d in ("fast", "slow"))
    for attr in ("all_special_tokens", "bos_token_id", "eos_token_id", "pad_token_id",
                 "unk_token_id", "chat_template"):
        assert getattr(a, attr) == getattr(b, attr), attr
    texts = [v for f in sorted(Path(__file__).parent.glob("data/*/*.parquet"))
             for row in pq.read_table(f).slice(0, 40).to_pylist()
             for v in [json.dumps(row, ensure_ascii=False, default=str), *row.values()]
             if isinstance(v, str)]
    assert len(texts) > 2000
    enc_a = a(texts, return_offsets_mapping=True, add_special_tokens=False)
    enc_b = b(texts, return_offsets_mapping=True, add_special_tokens=False)
    assert enc_a["input_ids"] == enc_b["input_ids"]
    assert enc_a["offset_mapping"] == enc_b["offset_mapping"]
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert a.apply_chat_template(chat, tokenize=False) == b.apply_chat_template(chat, tokenize=False)


def test_gguf_of_another_architecture_is_left_to_transformers(tmp_path):
    import gguf

    from curate.gguf_convert import convert_gguf

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tokenizer_model("gpt2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert convert_gguf(path, tmp_path / "out", "float32") is False
    assert not (tmp_path / "out").exists()


def test_empty_curate_home_is_the_default_not_the_current_folder(monkeypatch, tmp_path):
    from curate.models import cache_home

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CURATE_HOME", "")
    assert cache_home() == tmp_path / ".cache" / "curate"
    monkeypatch.setenv("CURATE_HOME", str(tmp_path / "h"))
    assert cache_home() == tmp_path / "h"
