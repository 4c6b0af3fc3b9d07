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
