"""Train a TopK SAE on a causal LM's residual stream (``curate sae train``).

Activations are computed in batches of rows (``curate.activations``) into a bounded
in-memory buffer (``max_tokens`` tokens, float16; per-token activations never go to
disk); every tenth row is held out to measure the fraction of variance unexplained
(FVU) after training. Training (OpenAI's TopK recipe, Gao et al. 2024):

- input normalisation: activations scaled by one constant so their mean squared norm
  is ``d_in`` (undone in the saved weights, which read raw activations);
- ``b_dec`` starts at the mean activation, ``W_enc`` starts as ``W_dec`` transposed,
  decoder rows are renormalised to unit norm after every step;
- loss: reconstruction error over the variance (the FVU of the batch) plus an AuxK
  term (weight 1/32): the ``aux_k`` largest pre-activations of the dead features
  (no activation for ``dead_tokens`` tokens) must reconstruct the residual error,
  which brings dead features back;
- the dead share reported is the share of features that fire on no training token
  after training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.sae import SAE, hook_name, save_sae

DEFAULT_LAYER = 21  # measured on real data (bench/sae_layers.py): see README "SAE selection"


@dataclass
class TrainConfig:
    """Options of ``curate sae train``."""

    model: str = "smollm2-135m"
    layer: int = DEFAULT_LAYER
    expansion: int = 8  # width = expansion x hidden size, unless width is given
    width: int | None = None
    k: int = 32
    steps: int = 2000
    batch_size: int = 1024  # tokens per step
    lr: float | None = None  # None: 2e-4 / sqrt(width / 16384) (Gao et al.), capped at 1e-3
    aux_k: int | None = None  # None: hidden size // 2
    dead_tokens: int = 200_000  # tokens without firing after which a feature counts as dead
    max_rows: int | None = None
    max_tokens: int = 500_000  # activations held in memory at most (float16)
    max_length: int | None = 512  # tokens per row
    max_batch_tokens: int = 8192
    seed: int = 0
    device: str | None = None


def collect(res, path: str, cfg: TrainConfig, log=None) -> tuple[Any, Any, int]:
    """(training activations, held-out activations, rows read) from the data at ``path``."""
    import torch

    from curate.ingest import ingest

    train, held, rows, n_tok = [], [], 0, 0
    bar = log.bar("activations", unit="tokens") if log else None
    for table, _, _ in ingest(path, chunk_rows=64):
        if table is None:
            continue
        if cfg.max_rows is not None:
            table = table.slice(0, max(cfg.max_rows - rows, 0))
        toks = res.tokens(table)
        for batch, counts, acts in res.activations(toks):
            acts = acts.to("cpu", torch.float16)
            at = 0
            for i, c in zip(batch, counts):
                (held if (rows + i) % 10 == 9 else train).append(acts[at:at + c])
                at += c
            n_tok += int(acts.shape[0])
            if bar:
                bar.update(int(acts.shape[0]))
        rows += table.num_rows
        if n_tok >= cfg.max_tokens * 10 / 9 or (cfg.max_rows is not None and rows >= cfg.max_rows):
            break
    if bar:
        bar.close()
    if not train:
        raise CurateError(f"{path}: no rows with tokens to train an SAE on")
    x = torch.cat(train)[:cfg.max_tokens]
    h = torch.cat(held) if held else x[-max(1, len(x) // 10):]
    return x, h, rows


def fvu(sae: SAE, x, chunk: int = 4096) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    import torch

    x = x.float()
    mean = x.mean(0)
    err = tot = 0.0
    with torch.inference_mode():
        for a in range(0, len(x), chunk):
            xb = x[a:a + chunk].to(sae.W_enc.device)
            err += float(((sae.decode(sae.encode(xb)) - xb) ** 2).sum())
            tot += float(((xb - mean.to(xb.device)) ** 2).sum())
    return err / tot if tot else float("nan")


def fire_counts(sae: SAE, x, chunk: int = 4096):
    """How many tokens of ``x`` each feature fires on."""
    import torch

    counts = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_enc.device)
    with torch.inference_mode():
        for a in range(0, len(x), chunk):
            vals, idx = sae.encode_sparse(x[a:a + chunk].to(sae.W_enc.device).float())
            counts.index_add_(0, idx[vals > 0].flatten(), torch.ones_like(idx[vals > 0].flatten()))
    return counts.cpu()


def _decode(w_dec, vals, idx):
    """The decoder on a sparse code (values, indices), without the bias."""
    import torch

    z = torch.zeros(vals.shape[0], w_dec.shape[0], dtype=vals.dtype, device=vals.device)
    return z.scatter(1, idx, vals) @ w_dec


def train_topk(x, cfg: TrainConfig, log=None) -> tuple[SAE, dict[str, Any]]:
    """Train a TopK SAE on activations ``x`` (tokens, d_in); returns it (raw-space weights)
    and training facts."""
    import torch

    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = int(x.shape[1])
    width = cfg.width or cfg.expansion * d
    if not 0 < cfg.k <= width:
        raise CurateError(f"k={cfg.k} must be between 1 and the width {width}")
    lr = cfg.lr or min(1e-3, 2e-4 / math.sqrt(width / 16384))
    aux_k = cfg.aux_k or d // 2
    xf = x.float()
    scale = math.sqrt(d / float((xf ** 2).sum(1).mean()))  # input normalisation
    data = (xf * scale).to(device)
    w_dec = torch.randn(width, d, device=device)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(w_dec)
    W_enc = torch.nn.Parameter(w_dec.T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(width, device=device))
    b_dec = torch.nn.Parameter(data.mean(0).clone())
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr, betas=(0.9, 0.999), eps=6.25e-10)
    since = torch.zeros(width, dtype=torch.long, device=device)  # tokens since each feature fired
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n, bs = len(data), min(cfg.batch_size, len(data))
    dead_after = min(cfg.dead_tokens, max(n // 2, bs))
    bar = log.bar("sae train", total=cfg.steps, unit="steps") if log else None
    recent = []
    for step in range(cfg.steps):
        xb = data[torch.randint(0, n, (bs,), generator=gen).to(device)]
        pre = (xb - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(cfg.k, dim=1)
        vals = torch.relu(vals)
        x_hat = _decode(W_dec, vals, idx) + b_dec
        var = ((xb - xb.mean(0)) ** 2).sum()
        err = xb - x_hat
        loss = (err ** 2).sum() / var
        fired = torch.zeros(width, dtype=torch.bool, device=device)
        fired[idx[vals > 0]] = True
        since += bs
        since[fired] = 0
        dead = since > dead_after
        aux = torch.zeros((), device=device)
        if int(dead.sum()):
            kk = min(aux_k, int(dead.sum()))
            dpre = pre.masked_fill(~dead, float("-inf"))
            avals, aidx = dpre.topk(kk, dim=1)
            e = err.detach()
            aux = ((_decode(W_dec, torch.relu(avals), aidx) - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum().clamp_min(1e-9)
            aux = torch.nan_to_num(aux, nan=0.0)
        total = loss + aux / 32
        opt.zero_grad(set_to_none=True)
        total.backward()
        with torch.no_grad():  # keep only the gradient that does not change row norms
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        recent.append(float(loss.detach()))
        if bar:
            bar.update(1)
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix(fvu=f"{sum(recent[-50:]) / len(recent[-50:]):.3f}",
                                dead=f"{float(dead.float().mean()):.1%}")
    if bar:
        bar.close()
    with torch.no_grad():  # back to raw activations: z_raw = z / scale, decoder stays unit-norm
        sae = SAE(W_enc.detach().clone(), W_dec.detach().clone(), (b_enc / scale).detach().clone(),
                  (b_dec / scale).detach().clone(), architecture="topk", k=cfg.k,
                  model_name=cfg.model, hook_name=hook_name(cfg.layer), layer=cfg.layer)
    facts = {"activation_scale": scale, "lr": lr, "aux_k": aux_k, "width": width,
             "train_fvu_last50": sum(recent[-50:]) / max(1, len(recent[-50:])),
             "dead_during_training": float(dead.float().mean())}
    return sae, facts


def train(input_path: str, output: str | Path, cfg: TrainConfig, log=None) -> dict[str, Any]:
    """Capture activations of ``cfg.model`` at ``cfg.layer`` over ``input_path``, train,
    measure FVU on held-out tokens and the dead share, and save the SAE folder."""
    from curate.activations import Residual
    from curate.models import resolve

    if cfg.k < 1 or cfg.steps < 1 or cfg.batch_size < 1:
        raise CurateError("k, steps and batch size must be >= 1")
    res = Residual(cfg.model, cfg.layer, max_length=cfg.max_length,
                   max_batch_tokens=cfg.max_batch_tokens, device=cfg.device)
    res.setup()
    x, held, rows = collect(res, input_path, cfg, log)
    sae, facts = train_topk(x, cfg, log)
    sae.to("cpu")
    held_fvu = fvu(sae, held)
    counts = fire_counts(sae, x)
    dead_share = float((counts == 0).float().mean())
    info = {"layer": cfg.layer, "fvu": held_fvu, "dead_share": dead_share,
            "heldout_tokens": int(len(held)), "train_tokens": int(len(x)), "rows": rows,
            "input": str(Path(input_path).resolve()), "steps": cfg.steps,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "max_length": cfg.max_length,
            "model_fingerprint": resolve(cfg.model).fingerprint,
            "hidden_size": int(x.shape[1]), "num_layers": res.num_layers, **facts}
    sae.info = info
    path = save_sae(sae, output)
    return {"output": str(path), **sae.describe(), **info}
