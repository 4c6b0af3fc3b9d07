"""Sparse autoencoders (SAEs) on a causal LM's residual stream: the model, its files.

An SAE maps an activation ``x`` (width ``d_in``, the model's hidden size) to a wide,
sparse code ``z`` (``d_sae`` features) and back: ``pre = (x - b_dec) @ W_enc + b_enc``;
TopK keeps the ``k`` largest of ``pre`` (ReLU'd), ``x_hat = z @ W_dec + b_dec``.

Files: curate writes the layout SAELens uses (``cfg.json`` + ``sae_weights.safetensors``
holding ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc``, ``b_dec``), with the
SAELens 6 keys (``architecture: "topk"``, ``k``, ``metadata.hook_name``,
``metadata.model_name``) and the older top-level ``hook_name`` / ``model_name`` too, plus
a ``curate`` section (layer, FVU, dead share, training facts). It reads SAELens (5 and 6:
``standard``, ``topk``, ``jumprelu``) and EleutherAI sparsify folders (``cfg.json`` +
``sae.safetensors``, ``encoder.weight`` = ``W_enc`` transposed, ``W_dec``, ``b_dec``;
the hookpoint is the folder's name, e.g. ``layers.6``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from curate.errors import CurateError

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"


def hook_name(layer: int) -> str:
    """The SAELens (TransformerLens) name of the residual stream after ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def layer_of(hook: str | None) -> int | None:
    """The layer index in a hook name (``blocks.6.hook_resid_post``, ``layers.6``,
    ``model.layers.6``), or None."""
    m = re.search(r"(?:blocks|layers|h)\.(\d+)\b", hook or "")
    return int(m[1]) if m else None


@dataclass
class SAE:
    """A loaded SAE (weights as torch tensors, in the model's raw activation space)."""

    W_enc: Any  # (d_in, d_sae)
    W_dec: Any  # (d_sae, d_in)
    b_enc: Any  # (d_sae,)
    b_dec: Any  # (d_in,)
    architecture: str = "topk"  # topk | standard | jumprelu
    k: int | None = None
    threshold: Any = None  # jumprelu
    apply_b_dec_to_input: bool = True
    model_name: str | None = None
    hook_name: str | None = None
    layer: int | None = None
    layout: str = "saelens"
    path: str | None = None
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # the cfg's curate section

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, device: str) -> SAE:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, v.to(device))
        return self

    def pre_acts(self, x):
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode_sparse(self, x, keep: int | None = None):
        """(values, indices), each (n, kk): the active features per token (values 0 are
        inactive). TopK keeps ``k``; other architectures keep the ``keep`` largest (all
        non-zero features when None)."""
        import torch

        pre = self.pre_acts(x)
        if self.architecture == "jumprelu":
            pre = pre * (pre > self.threshold)
        pre = torch.relu(pre)
        kk = self.k if self.architecture == "topk" and self.k else (keep or pre.shape[1])
        vals, idx = pre.topk(min(kk, pre.shape[1]), dim=1)
        return vals, idx

    def encode(self, x):
        """The dense code (n, d_sae)."""
        import torch

        vals, idx = self.encode_sparse(x)
        z = torch.zeros(x.shape[0], self.d_sae, dtype=vals.dtype, device=vals.device)
        return z.scatter_(1, idx, vals)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec

    def describe(self) -> dict[str, Any]:
        """Shape, model, layer, k and the training figures (for ``sae info``, manifests)."""
        return {"path": self.path, "layout": self.layout, "architecture": self.architecture,
                "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k, "model": self.model_name,
                "hook_name": self.hook_name, "layer": self.layer,
                "fvu": self.info.get("fvu"), "dead_share": self.info.get("dead_share"),
                "fingerprint": self.fingerprint}


# --- files -----------------------------------------------------------------------------

def _fingerprint(cfg: Path, weights: Path) -> str:
    h = xxhash.xxh3_64()
    h.update(cfg.read_bytes())
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_sae(path: str | Path, device: str = "cpu") -> SAE:
    """Load an SAE folder (curate/SAELens or sparsify layout); CurateError when the folder,
    its config or its weights are missing or unreadable."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise CurateError(f"SAE folder {p} does not exist (train one with `curate sae train`)")
    cfg_file = p / CONFIG
    weights = next((p / w for w in (SAELENS_WEIGHTS, SPARSIFY_WEIGHTS) if (p / w).is_file()), None)
    if weights is None:
        subs = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / CONFIG).exists())
        hint = f"; it has SAE subfolders {', '.join(subs)}: pass one of them" if subs else ""
        raise CurateError(f"SAE folder {p} has no weights ({SAELENS_WEIGHTS} or "
                          f"{SPARSIFY_WEIGHTS}){hint}")
    if not cfg_file.is_file():
        raise CurateError(f"SAE folder {p} has no {CONFIG} (the SAE's config)")
    try:
        cfg = json.loads(cfg_file.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise CurateError(f"SAE config {cfg_file} is not readable JSON ({err})") from err
    try:
        t = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types
        raise CurateError(f"SAE weights {weights} are not readable safetensors ({err})") from err
    fp = _fingerprint(cfg_file, weights)
    try:
        sae = (_from_sparsify(cfg, t, p) if weights.name == SPARSIFY_WEIGHTS
               else _from_saelens(cfg, t))
    except KeyError as err:
        raise CurateError(f"SAE weights {weights} lack tensor {err}") from err
    sae.path, sae.fingerprint = str(p.resolve()), fp
    _check_shapes(sae, weights)
    return sae.to(device)


def _from_saelens(cfg: dict, t: dict) -> SAE:
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture") or ("topk" if cfg.get("activation_fn_str") == "topk"
                                       else "standard")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    hook = meta.get("hook_name") or cfg.get("hook_name")
    cur = cfg.get("curate") or {}
    layer = cur.get("layer")
    if layer is None:
        layer = cfg.get("hook_layer") if cfg.get("hook_layer") is not None else layer_of(hook)
    if arch not in ("topk", "standard", "jumprelu"):
        raise CurateError(f"SAE architecture {arch!r} is not supported (topk, standard, jumprelu)")
    if arch == "topk" and not k:
        raise CurateError("SAE config says architecture 'topk' but gives no k")
    return SAE(t["W_enc"].float(), t["W_dec"].float(), t["b_enc"].float(), t["b_dec"].float(),
               architecture=arch, k=int(k) if k else None,
               threshold=t["threshold"].float() if arch == "jumprelu" else None,
               apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
               model_name=meta.get("model_name") or cfg.get("model_name"), hook_name=hook,
               layer=layer, layout="saelens", info=cur)


def _from_sparsify(cfg: dict, t: dict, p: Path) -> SAE:
    import torch

    w_enc = t["encoder.weight"].float().T.contiguous()  # sparsify: (d_sae, d_in)
    b_enc = t.get("encoder.bias")
    b_enc = b_enc.float() if b_enc is not None else torch.zeros(w_enc.shape[1])
    k = cfg.get("k")
    return SAE(w_enc, t["W_dec"].float(), b_enc, t["b_dec"].float(), architecture="topk",
               k=int(k) if k else 32, model_name=cfg.get("model") or cfg.get("model_name"),
               hook_name=p.name, layer=layer_of(p.name), layout="sparsify",
               info=cfg.get("curate") or {})


def _check_shapes(sae: SAE, weights: Path) -> None:
    d_in, d_sae = sae.W_enc.shape
    want = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, shape in want.items():
        if tuple(getattr(sae, name).shape) != shape:
            raise CurateError(f"SAE weights {weights}: {name} has shape "
                              f"{tuple(getattr(sae, name).shape)}, expected {shape} "
                              f"(W_enc is {(d_in, d_sae)})")
    if sae.k is not None and not 0 < sae.k <= d_sae:
        raise CurateError(f"SAE k={sae.k} is not in 1..{d_sae}")


def save_sae(sae: SAE, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` as a SAELens-layout folder (atomically: a temp folder, then rename)."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    curate = {**sae.info, "layer": sae.layer, **(extra or {})}
    cfg = {"architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": sae.apply_b_dec_to_input,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"model_name": sae.model_name, "hook_name": sae.hook_name,
                        "hook_head_index": None, "prepend_bos": True,
                        "context_size": curate.get("max_length")},
           # SAELens 5 readers look for these at the top level
           "model_name": sae.model_name, "hook_name": sae.hook_name, "hook_layer": sae.layer,
           "activation_fn_str": sae.architecture if sae.architecture == "topk" else "relu",
           "activation_fn_kwargs": {"k": sae.k} if sae.k else {},
           "curate": curate}
    tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
              str(tmp / SAELENS_WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(cfg, indent=2))
    os.chmod(tmp, 0o755)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


def check_against_model(sae: SAE, model: str, hidden_size: int, layer: int | None = None) -> None:
    """CurateError when the SAE cannot read this model's activations (input width);
    a warning naming both when it was trained on another model."""
    if sae.d_in != hidden_size:
        raise CurateError(f"SAE {sae.path} reads activations of width {sae.d_in}, but model "
                          f"{model!r} has hidden size {hidden_size}: use an SAE trained on "
                          f"this model (curate sae train --model {model} ...)")
    if sae.model_name and not _same_model(sae.model_name, model):
        warnings.warn(f"SAE {sae.path} was trained on model {sae.model_name!r}, but the "
                      f"activations come from model {model!r}", stacklevel=2)
    if layer is not None and sae.layer is not None and layer != sae.layer:
        warnings.warn(f"SAE {sae.path} was trained on layer {sae.layer}, reading layer {layer}",
                      stacklevel=2)


def _same_model(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s
    return norm(a) == norm(b)
