"""MinHash signatures and LSH band hashes for near-duplicate detection.

Signatures are datasketch-compatible: for the same ``num_perm``, ``seed`` and
hash function (xxh32 of each UTF-8 shingle) they equal
``datasketch.MinHash(num_perm, seed, hashfunc=xxh32).update_batch(shingles)``
(its default affine32 scheme), computed here for a whole batch at once with
numpy. The scorer writes one hash per LSH band (``bands`` x ``rows`` values of
the signature each); rows sharing any band hash are candidate duplicates.
Empty texts have no shingles and get null bands, so they never match.

It also writes ``minhash_sketch``: the lowest 8 bits of every signature value
(b-bit MinHash, ``num_perm`` bytes a row), enough to estimate the Jaccard of a
candidate pair when it is not verified against the texts (``sketch_jaccard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import xxhash

from curate.errors import CurateError
from curate.scorer import Resources, Scorer, register
from curate.text import field_texts, shingles

_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)  # MurmurHash3 finalizer, as datasketch
_BAND_MULT = np.uint64(0x9E3779B97F4A7C15)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The affine permutations datasketch draws for (num_perm, seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> np.uint32(s1))
    hv = hv * np.uint32(m1)
    hv = hv ^ (hv >> np.uint32(s2))
    hv = hv * np.uint32(m2)
    return hv ^ (hv >> np.uint32(s3))


def signatures(shingle_lists: list[list[str]], num_perm: int, seed: int,
               chunk: int = 1 << 14) -> np.ndarray:
    """MinHash signatures (uint32, docs x num_perm); rows of docs without shingles are all max."""
    a, b = permutations(num_perm, seed)
    out = np.full((len(shingle_lists), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    counts = np.array([len(sh) for sh in shingle_lists], dtype=np.int64)
    hv_all = np.fromiter((xxhash.xxh32_intdigest(s.encode("utf-8"))
                          for sh in shingle_lists for s in sh), dtype=np.uint32, count=int(counts.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)])
    docs = np.flatnonzero(counts)  # docs with at least one shingle, contiguous in hv_all
    i = 0
    with np.errstate(over="ignore"):
        mixed = _fmix32(hv_all)
        while i < len(docs):  # groups of whole docs of about `chunk` shingles
            j = int(np.searchsorted(starts[docs + 1], starts[docs[i]] + chunk, side="right"))
            j = max(j, i + 1)
            group = docs[i:j]
            lo, hi = starts[group[0]], starts[group[-1] + 1]
            if hi - lo > chunk:  # one long document: its minimum slice by slice
                for s in range(lo, hi, chunk):
                    phv = mixed[s:min(s + chunk, hi), None] * a[None, :] + b[None, :]
                    out[group[0]] = np.minimum(out[group[0]], phv.min(axis=0))
            else:
                phv = mixed[lo:hi, None] * a[None, :] + b[None, :]  # wraps mod 2^32, as datasketch
                out[group] = np.minimum.reduceat(phv, starts[group] - lo, axis=0)
            i = j
    return out


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band of ``rows`` signature values (docs x bands)."""
    part = sigs[:, :bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    h = np.zeros((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ part[:, :, j]) * _BAND_MULT
            h ^= h >> np.uint64(29)
    return h


def sketches(sigs: np.ndarray) -> np.ndarray:
    """The b-bit (b = 8) sketch of each signature: its values mod 256 (docs x num_perm)."""
    return sigs.astype(np.uint8)


def sketch_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard estimated from 8-bit sketches (rows of ``a`` against rows of ``b``): the
    share of equal bytes, less the 1/256 chance that two different minima agree in
    their lowest 8 bits (Li and Koenig, b-bit minwise hashing). Standard error about
    sqrt(J(1-J)/num_perm): 0.035 at J = 0.8 with 128 permutations."""
    equal = (a == b).mean(axis=-1)
    return np.clip((equal - 1 / 256) / (1 - 1 / 256), 0.0, 1.0)


@register
@dataclass
class MinHash(Scorer):
    """MinHash LSH band hashes of a row's text (word or character shingles)."""

    name: ClassVar[str] = "minhash"
    version: ClassVar[str] = "2"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # pure Python: one replica per core
    columns: ClassVar[dict[str, pa.DataType]] = {
        "minhash_bands": pa.list_(pa.uint64()),
        "minhash_sketch": pa.binary(),
        "minhash_shingles": pa.int32(),
        "minhash_chars": pa.int64(),
    }

    num_perm: int = 128
    bands: int = 9
    rows: int = 13
    ngram: int = 5
    shingle: str = "word"
    fields: str = "all"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise CurateError(f"minhash: bands x rows = {self.bands * self.rows} exceeds "
                              f"num_perm = {self.num_perm}")
        if self.shingle not in ("word", "char"):
            raise CurateError(f"minhash: shingle must be 'word' or 'char', got {self.shingle!r}")

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        texts = field_texts(batch, self.fields)
        sh = [shingles(t, self.ngram, self.shingle) for t in texts]
        sigs = signatures(sh, self.num_perm, self.seed)
        bands = band_hashes(sigs, self.bands, self.rows)
        sk = sketches(sigs)
        return {"minhash_bands": [list(map(int, b)) if s else None for b, s in zip(bands, sh)],
                "minhash_sketch": [k.tobytes() if s else None for k, s in zip(sk, sh)],
                "minhash_shingles": [len(s) for s in sh],
                "minhash_chars": [len(t) for t in texts]}
