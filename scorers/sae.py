"""SAE features of the target model's residual stream, and similarity to a target task.

Per row, the residual stream after the SAE's layer (``curate.activations``: chat
template, content tokens) is encoded by the SAE token by token and mean-pooled over
the tokens (summing favours long rows), giving a non-negative feature vector ``v``:

- ``sae_feature_ids`` / ``sae_feature_values``: the ``top`` largest entries of ``v``
  (the compact form; the full vector never goes to disk);
- ``sae_active``: how many features fire on at least one token of the row;
- ``sae_target_similarity``: generalised Jaccard similarity
  ``sum(min(v, t)) / sum(max(v, t))`` between ``v`` and the target prototype ``t``
  (the mean of the target rows' vectors), as in "Task-Specific Data Selection for
  Instruction Tuning via Monosemantic Neuronal Activations"; null without ``target``.

Scores are cached by the SAE's fingerprint (its config and weights), the model's and
the target set's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.models import pick_device, resolve
from curate.readers import existing_path, path_fingerprint
from curate.scorer import Resources, Scorer, register

COLUMNS = {"sae_feature_ids": pa.list_(pa.int32()), "sae_feature_values": pa.list_(pa.float32()),
           "sae_active": pa.int32(), "sae_target_similarity": pa.float64()}


@register
@dataclass
class SAEFeatures(Scorer):
    """Mean-pooled SAE features of a row under the target model (top ``top`` kept),
    the number of active features, and the generalised Jaccard similarity to the
    prototype of a target set (``target=FILE``)."""

    name: ClassVar[str] = "sae"
    version: ClassVar[str] = "1"
    columns: ClassVar[dict[str, pa.DataType]] = COLUMNS

    sae: str = ""
    target: str | None = None
    model: str = "smollm2-135m"
    layer: int | None = None  # None: the SAE's layer
    top: int = 64
    max_length: int | None = 1024
    max_batch_tokens: int = 8192
    dtype: str | None = None
    device: str | None = None

    _sae = None
    _res = None
    _proto = None

    def __post_init__(self) -> None:
        from curate.sae import load_sae

        if not self.sae:
            raise CurateError("sae needs sae=SAE_DIR (train one with `curate sae train`)")
        if self.top < 1:
            raise CurateError(f"sae: top must be >= 1, got {self.top}")
        self._sae = load_sae(self.sae)  # a clear error now for a bad folder
        if self.layer is None and self._sae.layer is None:
            raise CurateError(f"SAE {self.sae} does not say which layer it reads: pass layer=")
        if self.target:
            self.target = existing_path(self.target, "target set")
            if not _target_rows(self.target):
                raise CurateError(f"target set {self.target} has no rows")

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        """A GPU when it runs on one, else this machine's cores (torch threads)."""
        return Resources(gpus=1.0 if pick_device(self.device).startswith("cuda") else 0.0)

    @property
    def read_layer(self) -> int:
        return self.layer if self.layer is not None else int(self._sae.layer)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.read_layer, "top": self.top,
                "max_length": self.max_length, "dtype": self.dtype}

    def model_fingerprint(self) -> str:
        target = path_fingerprint(self.target) if self.target else ""
        return f"{resolve(self.model).fingerprint};sae={self._sae.fingerprint};target={target}"

    def setup(self) -> None:
        if self._res is not None:
            return
        from curate.activations import Residual
        from curate.sae import check_against_model

        res = Residual(self.model, self.read_layer, max_length=self.max_length,
                       max_batch_tokens=self.max_batch_tokens, device=self.device, dtype=self.dtype)
        res.setup()
        check_against_model(self._sae, self.model, res.hidden_size, self.read_layer)
        self._sae.to(res.device)
        self._res = res
        if self.target:
            self._proto = self._prototype()

    def unload(self) -> None:
        self._res = None  # the LM; the SAE itself is small and checked at construction

    def describe(self) -> dict[str, Any]:
        return {**self._sae.describe(), "read_layer": self.read_layer,
                "device": self._res.device if self._res else None}

    def _prototype(self):
        import torch

        from curate.ingest import ingest

        total, n = None, 0
        for table, _, _ in ingest(self.target):
            if table is None:
                continue
            pooled, _ = self.pool(table)
            rows = [p for p in pooled if p is not None]
            if rows:
                s = torch.stack(rows).sum(0)
                total = s if total is None else total + s
                n += len(rows)
        if not n:
            raise CurateError(f"target set {self.target} has no rows with tokens to encode")
        return total / n

    def pool(self, batch: pa.RecordBatch | pa.Table) -> tuple[list, list[int]]:
        """Per row: the mean-pooled feature vector (None: no tokens) and the number of
        features active on at least one token."""
        import torch

        self.setup()
        toks = self._res.tokens(batch)
        pooled: list = [None] * len(toks)
        active = [0] * len(toks)
        for rows, counts, acts in self._res.activations(toks):
            means, fired = pool_codes(self._sae, acts, counts)
            for r, i in enumerate(rows):
                pooled[i] = means[r]
                active[i] = int(fired[r])
        return pooled, active

    def score(self, batch: pa.RecordBatch) -> dict[str, list]:
        pooled, active = self.pool(batch)
        out: dict[str, list] = {c: [] for c in COLUMNS}
        proto = self._proto.cpu() if self._proto is not None else None
        for v, a in zip(pooled, active):
            if v is None:
                out["sae_feature_ids"].append([])
                out["sae_feature_values"].append([])
                out["sae_active"].append(0)
                out["sae_target_similarity"].append(None)
                continue
            k = min(self.top, int((v > 0).sum()))
            vals, idx = v.topk(k)
            out["sae_feature_ids"].append(idx.tolist())
            out["sae_feature_values"].append(vals.tolist())
            out["sae_active"].append(a)
            out["sae_target_similarity"].append(jaccard(v, proto) if proto is not None else None)
        return out


def pool_codes(sae, acts, counts: list[int]):
    """Encode the tokens ``acts`` (rows' tokens concatenated, ``counts`` per row) and
    mean-pool per row: (rows x d_sae means on the CPU, features active per row)."""
    import torch

    with torch.inference_mode():
        vals, idx = sae.encode_sparse(acts)
        owner = torch.repeat_interleave(torch.arange(len(counts), device=acts.device),
                                        torch.tensor(counts, device=acts.device))
        owner = owner[:, None].expand_as(idx)
        sums = torch.zeros(len(counts), sae.d_sae, device=acts.device)
        sums.index_put_((owner, idx), vals, accumulate=True)
        fired = torch.zeros_like(sums, dtype=torch.bool)
        fired[owner[vals > 0], idx[vals > 0]] = True
        means = sums / torch.tensor(counts, device=acts.device, dtype=sums.dtype)[:, None]
    return means.float().cpu(), fired.sum(1).cpu()


def jaccard(v, proto) -> float | None:
    """Generalised Jaccard similarity of two non-negative vectors."""
    import torch

    den = float(torch.maximum(v, proto).sum())
    return float(torch.minimum(v, proto).sum()) / den if den > 0 else None


def _target_rows(path: str) -> int:
    """Rows of the target set; its read errors name it as the target set."""
    from curate.errors import InputError
    from curate.ingest import ingest

    try:
        return sum(t.num_rows for t, _, _ in ingest(path) if t is not None)
    except InputError as err:
        if str(err).endswith("the input has no rows"):
            return 0
        raise CurateError(f"target set {path}: {err}") from err
