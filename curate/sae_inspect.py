"""What an SAE's features mean: the rows and tokens that fire them most
(``curate sae features``)."""

from __future__ import annotations

from typing import Any

from curate.errors import CurateError


def top_features(sae_dir: str, data: str, *, top: int = 10, examples: int = 3,
                 model: str = "smollm2-135m", layer: int | None = None, max_rows: int = 1000,
                 max_length: int | None = 512, context: int = 6) -> list[dict[str, Any]]:
    """The ``top`` most active features over the rows of ``data`` (by total activation
    over all tokens), each with the ``examples`` (row id, token, its context, value)
    where it fires most, from distinct rows."""
    import torch

    from curate.activations import Residual
    from curate.ingest import ingest
    from curate.sae import check_against_model, load_sae

    if top < 1 or examples < 1:
        raise CurateError("--top and --examples must be >= 1")
    sae = load_sae(sae_dir)
    if layer is None and sae.layer is None:
        raise CurateError(f"SAE {sae_dir} does not say which layer it reads: pass --layer")
    res = Residual(model, layer if layer is not None else sae.layer, max_length=max_length)
    res.setup()
    check_against_model(sae, model, res.hidden_size, res.layer)
    sae.to(res.device)
    mass = torch.zeros(sae.d_sae)
    fires = torch.zeros(sae.d_sae, dtype=torch.long)
    best: list[tuple] = []  # (value, feature, row id, token ids, position)
    rows = 0
    for table, _, _ in ingest(data):
        if table is None:
            continue
        table = table.slice(0, max(max_rows - rows, 0))
        ids = table.column("id").to_pylist()
        toks = res.tokens(table)
        for batch, counts, acts in res.activations(toks):
            with torch.inference_mode():
                vals, idx = sae.encode_sparse(acts)
            vals, idx = vals.float().cpu(), idx.cpu()
            mass.index_add_(0, idx.flatten(), vals.flatten())
            fires.index_add_(0, idx[vals > 0], torch.ones_like(idx[vals > 0]))
            at = 0
            for i, c in zip(batch, counts):
                v, f = vals[at:at + c], idx[at:at + c]
                # per row, the strongest token of each feature
                flat_v, order = v.flatten().sort(descending=True)
                seen: set[int] = set()
                for j in order[:200].tolist():
                    feat = int(f.flatten()[j])
                    if feat in seen or float(v.flatten()[j]) <= 0:
                        continue
                    seen.add(feat)
                    pos = toks[i].keep[j // v.shape[1]]
                    best.append((float(v.flatten()[j]), feat, ids[i], toks[i].ids, pos))
                at += c
        rows += table.num_rows
        if rows >= max_rows:
            break
    if not rows:
        raise CurateError(f"{data}: no rows")
    tok = res.host._tok
    out = []
    for feat in mass.argsort(descending=True)[:top].tolist():
        if float(mass[feat]) <= 0:
            break
        ex = sorted((b for b in best if b[1] == feat), key=lambda b: -b[0])[:examples]
        out.append({"feature": feat, "total_activation": float(mass[feat]),
                    "tokens_fired": int(fires[feat]),
                    "examples": [{"id": rid, "value": val,
                                  "token": tok.decode([ids_[pos]]),
                                  "context": tok.decode(ids_[max(0, pos - context):pos])
                                  + "[[" + tok.decode([ids_[pos]]) + "]]"
                                  + tok.decode(ids_[pos + 1:pos + 1 + context])}
                                 for val, _, rid, ids_, pos in ex]})
    return out
