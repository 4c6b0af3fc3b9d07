"""MinHash signatures and LSH band hashes for near-duplicate detection.

Two signature schemes (option ``hash``), both over the same shingles:

- ``oph`` (default): one-permutation hashing with optimal densification (Shrivastava,
  ICML 2017). Each shingle's 64-bit hash (``curate.text.shingle_hashes``, columnar)
  falls in one of ``num_perm`` bins and the bin keeps its smallest value; an empty
  bin borrows the value of the first non-empty bin in its own fixed random order of
  bins. Two texts agree in a bin with probability their Jaccard, as with MinHash,
  at O(1) per shingle instead of O(num_perm).
- ``datasketch``: classic MinHash, equal to
  ``datasketch.MinHash(num_perm, seed, hashfunc=xxh32).update_batch(shingles)``
  (its default affine32 scheme), computed with numpy for a whole batch at once:
  O(num_perm) per shingle and a Python call per shingle, about 5x slower.

The scorer writes one hash per LSH band (``bands`` x ``rows`` values of the
signature each); rows sharing any band hash are candidate duplicates.
Empty texts have no shingles and get null bands, so they never match.

With ``sets`` (dedup turns it on when it verifies) it writes
``minhash_set``: the row's distinct 32-bit shingle hashes, ascending
(``curate.text.shingle_sets``), from which verification counts the exact Jaccard of
a candidate pair without reading or shingling the texts again.

Without ``sets`` it writes ``minhash_sketch`` instead: the lowest 8 bits of every
signature value (b-bit MinHash, ``num_perm`` bytes a row), enough to estimate the
Jaccard of a candidate pair that is not verified (``sketch_jaccard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curate.errors import CurateError
from curate.scorer import Resources, Scorer, register
from curate.text import field_array, fmix64, shingle_hashes, shingle_sets, shingles

HASHES = ("oph", "datasketch")
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


def oph_signatures(hashes: np.ndarray, counts: np.ndarray, num_perm: int, seed: int,
                   passes: int = 8) -> np.ndarray:
    """One-permutation-hashing signatures (uint32, docs x num_perm) of the docs whose
    shingle hashes (uint64, doc after doc) number ``counts``; rows of docs without
    shingles are all max. Empty bins are densified (see the module docstring)."""
    docs, k = len(counts), num_perm
    gen = np.random.RandomState(seed)
    salt = np.uint64(gen.randint(0, 1 << 62, dtype=np.int64))
    order = np.argsort(gen.rand(k, k), axis=1)  # per bin: the bins it borrows from, in turn
    with np.errstate(over="ignore"):
        h = fmix64(hashes ^ salt)
        cell = np.repeat(np.arange(docs, dtype=np.int64) * k, counts) + \
            ((h >> np.uint64(32)) * np.uint64(k) >> np.uint64(32)).astype(np.int64)
    sig = np.full(docs * k, np.iinfo(np.uint32).max, dtype=np.uint32)
    np.minimum.at(sig, cell, h.astype(np.uint32))
    filled = np.zeros(docs * k, dtype=bool)
    filled[cell] = True
    empty = np.flatnonzero(~filled.reshape(docs, k)[counts > 0].ravel())
    base = np.flatnonzero(counts > 0)[empty // k] * k  # first cell of the empty cell's doc
    want, empty = empty % k, base + empty % k
    for t in range(passes):  # most empty bins find a non-empty one within a few tries
        src = base + order[want, t]
        ok = filled[src]
        sig[empty[ok]] = sig[src[ok]]
        empty, base, want = empty[~ok], base[~ok], want[~ok]
    for lo in range(0, len(empty), 4096):  # the rest (docs with few shingles): the first
        part = slice(lo, lo + 4096)         # hit in the whole order, a slice at a time
        tries = base[part, None] + order[want[part]]
        sig[empty[part]] = sig[tries[np.arange(len(tries)), filled[tries].argmax(axis=1)]]
    return sig.reshape(docs, k)


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
    version: ClassVar[str] = "4"
    resources: ClassVar[Resources] = Resources(cpus=1.0)  # one thread: one replica per core
    columns: ClassVar[dict[str, pa.DataType]] = {
        "minhash_bands": pa.list_(pa.uint64()),
        "minhash_sketch": pa.binary(),
        "minhash_shingles": pa.int32(),
        "minhash_chars": pa.int64(),
        "minhash_set": pa.list_(pa.uint32()),
    }
    working_columns: ClassVar[tuple[str, ...]] = ("minhash_set",)

    num_perm: int = 128
    bands: int = 9
    rows: int = 13
    ngram: int = 5
    shingle: str = "word"
    fields: str = "all"
    seed: int = 1
    hash: str = "oph"
    sets: bool = False

    def __post_init__(self) -> None:
        if self.hash not in HASHES:
            raise CurateError(f"minhash: hash must be one of {', '.join(HASHES)}, got {self.hash!r}")
        if self.bands * self.rows > self.num_perm:
            raise CurateError(f"minhash: bands x rows = {self.bands * self.rows} exceeds "
                              f"num_perm = {self.num_perm}")
        if self.shingle not in ("word", "char"):
            raise CurateError(f"minhash: shingle must be 'word' or 'char', got {self.shingle!r}")

    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        texts = field_array(batch, self.fields)
        if self.hash == "datasketch":
            sh = [shingles(t, self.ngram, self.shingle) for t in texts.to_pylist()]
            counts = np.array([len(x) for x in sh], dtype=np.int64)
            sigs = signatures(sh, self.num_perm, self.seed)
            if self.sets:  # the same shingles, hashed by the columnar kernel
                hashes, set_counts = shingle_hashes(texts, self.ngram, self.shingle)
        else:
            hashes, counts = shingle_hashes(texts, self.ngram, self.shingle)
            set_counts = counts
            sigs = oph_signatures(hashes, counts, self.num_perm, self.seed)
        has = pa.array(counts > 0)
        bands = band_hashes(sigs, self.bands, self.rows)
        band_list = pa.FixedSizeListArray.from_arrays(pa.array(bands.ravel()), self.bands)
        null = pa.nulls(len(sigs))
        if self.sets:  # the shingle sets verification counts from; no sketch
            values, sizes = shingle_sets(hashes, set_counts)
            offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
            np.cumsum(sizes, out=offsets[1:])
            sets = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(sizes == 0))
            sketch = pa.nulls(len(sigs), pa.binary())
        else:  # the sketch an unverified pair's Jaccard is estimated from; no sets
            sets = pa.nulls(len(sigs), pa.list_(pa.uint32()))
            sketch = pc.if_else(has, pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(self.num_perm), len(sigs),
                [None, pa.py_buffer(sketches(sigs).tobytes())]).cast(pa.binary()), null)
        return {"minhash_bands": pc.if_else(has, band_list.cast(pa.list_(pa.uint64())), null),
                "minhash_sketch": sketch,
                "minhash_shingles": pa.array(counts, pa.int32()),
                "minhash_chars": pc.utf8_length(texts).cast(pa.int64()),
                "minhash_set": sets}
