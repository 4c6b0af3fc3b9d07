"""Text helpers shared by scorers and decision steps: the texts of a row, normalisation, shingles."""

from __future__ import annotations

import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.schema import full_texts, kind_of, prompt_texts, response_texts

#: Which text of a row a scorer reads: the whole conversation, the prompt or the response.
FIELDS = {"all": full_texts, "prompt": prompt_texts, "response": response_texts}
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize(text: str, *, punctuation: bool = True) -> str:
    """NFKC, lower-case, whitespace collapsed; ``punctuation=False`` also drops punctuation."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    if not punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def shingles(text: str, n: int = 5, kind: str = "word") -> list[str]:
    """Shingles of the normalised text: word ``n``-grams (a text of fewer than ``n``
    words is one shingle) or character ``n``-grams (for scripts without spaces).
    Empty text has none. A shingle that occurs twice is listed twice."""
    norm = normalize(text)
    if not norm:
        return []
    if kind == "char":
        if len(norm) <= n:
            return [norm]
        return [norm[i:i + n] for i in range(len(norm) - n + 1)]
    if kind != "word":
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    words = norm.split(" ")
    if len(words) <= n:
        return [norm]
    return list(map(" ".join, zip(*(words[i:] for i in range(n)))))


def field_texts(batch: pa.RecordBatch | pa.Table, fields: str) -> list[str]:
    """One text per row: ``all`` (whole conversation), ``prompt`` or ``response``."""
    if fields not in FIELDS:
        raise CurateError(f"fields must be one of {', '.join(FIELDS)}, got {fields!r}")
    return FIELDS[fields](batch)


def field_array(batch: pa.RecordBatch | pa.Table, fields: str) -> pa.Array:
    """``field_texts`` as a string array; text rows' own column as is (nulls as "")."""
    if fields in ("all", "response") and kind_of(batch.schema) == "text":
        col = batch.column("text")
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return col.fill_null("").cast(pa.string())
    return pa.array(field_texts(batch, fields), pa.string())


# --- columnar: whole batches at once -------------------------------------------------

#: Non-ASCII characters Python's ``str.split()`` splits on that NFKC leaves alone (NFKC
#: turns the others, such as U+00A0 and U+3000, into a plain space).
_OTHER_SPACES = "[\u0085\u1680\u2028\u2029]"
#: ``[^\w\s]`` of Python's ``re`` in RE2 (Arrow's regex), whose ``\w`` and ``\s`` are ASCII.
_NOT_WORD = r"[^\pL\pN_\s\x0b\x1c-\x1f\x{85}\x{1680}\x{2028}\x{2029}]"
_POLY = 0x100000001B3 * 2 + 1  # odd: invertible modulo 2^64


def utf8_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets int64 from 0) of a large_string array without nulls."""
    arr = arr.cast(pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw[offsets[0]:offsets[-1]], offsets - offsets[0]


def _fold_table() -> np.ndarray:
    """Byte -> byte: ASCII A-Z to a-z, and the ASCII whitespace ``str.split()`` splits
    on (\\t \\n \\v \\f \\r, U+001C..U+001F, space) to a space; every other byte,
    including all of a UTF-8 sequence (>= 0x80), unchanged."""
    table = np.arange(256, dtype=np.uint8)
    table[65:91] += 32
    table[[9, 10, 11, 12, 13, 28, 29, 30, 31]] = 32
    return table


_FOLD = _fold_table().tobytes()  # for bytes.translate: 2.5x numpy's table lookup


def _collapse(raw: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of spaces -> one space, none at either end of a text (bytes level; other
    whitespace is already a space, see ``_fold_table``)."""
    space = raw == 32
    if not space.any():
        return raw, offsets
    full = np.diff(offsets) > 0
    starts, ends = offsets[:-1][full], offsets[1:][full] - 1  # first and last byte of texts
    drop = space.copy()
    drop[1:] &= space[:-1]  # a space after a space
    drop[starts] = space[starts]  # a space that starts a text
    gone = np.flatnonzero(drop)
    counts = np.diff(offsets) - np.diff(np.searchsorted(gone, offsets))  # kept per text
    # a text ending in spaces keeps the first of them so far: it goes too, unless the
    # text is all spaces (then none is kept)
    tail = np.flatnonzero(space[ends])
    if len(tail):
        last = ends[tail]
        first = last.copy()  # the first byte of the run of dropped bytes that ends there
        run = np.ones(len(gone), dtype=bool)
        run[1:] = gone[1:] != gone[:-1] + 1
        run_start = gone[np.maximum.accumulate(np.where(run, np.arange(len(gone)), 0))]
        was = drop[last]
        first[was] = run_start[np.searchsorted(gone, last[was])]
        kept = np.where(was, first - 1, last)
        real = kept >= starts[tail]
        drop[kept[real]] = True
        counts[np.flatnonzero(full)[tail[real]]] -= 1
    return raw[~drop], np.concatenate([[0], np.cumsum(counts)])


def normalize_bytes(texts: pa.Array | pa.ChunkedArray | list[str], *, punctuation: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``normalize`` of every text at once, as (UTF-8 bytes, offsets): numpy on the
    bytes for ASCII case and whitespace, Arrow string kernels for NFKC and Unicode case
    on the rows that are not pure ASCII; NFKC only on those that it changes (most are
    already in NFKC: 140 of 3,291 non-ASCII rows of the dedup benchmark's corpus), as
    Python's ``unicodedata.is_normalized`` tells. A null text normalises to "". (Arrow,
    not polars: this runs in forked scorer workers, where polars' thread pool would
    hang.)"""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    arr = (texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())).fill_null("")
    mask = pc.invert(pc.string_is_ascii(arr))  # rows with a non-ASCII character
    if pc.any(mask).as_py():  # Unicode work only where there is Unicode
        wide = arr.filter(mask)
        change = pa.array([not unicodedata.is_normalized("NFKC", t) for t in wide.to_pylist()])
        if pc.any(change).as_py():
            wide = pc.replace_with_mask(wide, change,
                                        pc.utf8_normalize(wide.filter(change), "NFKC"))
        fixed = pc.replace_substring_regex(wide, _OTHER_SPACES, " ")
        arr = pc.replace_with_mask(arr, mask, pc.utf8_lower(fixed).cast(arr.type))
    if not punctuation:
        arr = pc.replace_substring_regex(arr, _NOT_WORD, " ")
    raw, offsets = utf8_bytes(arr)
    folded = np.frombuffer(raw.tobytes().translate(_FOLD), np.uint8)  # ASCII case, whitespace
    return _collapse(folded, offsets)


def normalize_array(texts: pa.Array | pa.ChunkedArray | list[str], *,
                    punctuation: bool = True) -> pa.Array:
    """``normalize`` of every text at once (see ``normalize_bytes``), as a string array."""
    raw, offsets = normalize_bytes(texts, punctuation=punctuation)
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets),
                                            pa.py_buffer(raw)).cast(pa.string())


_POWER_CACHE: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) modulo 2^64 (by doubling; the first 2^22 are kept)."""
    have = _POWER_CACHE.get(base)
    if have is not None and len(have) >= n:
        return have[:n]
    out = np.empty(max(n, 1), dtype=np.uint64)
    out[0], m = 1, 1
    while m < n:
        k = min(m, n - m)
        np.multiply(out[:k], np.uint64(pow(base, m, 1 << 64)), out=out[m:m + k])
        m += k
    if n <= 1 << 22:
        _POWER_CACHE[base] = out
    return out[:n]


def fmix64(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shingle_hashes(texts: pa.Array | pa.ChunkedArray | list[str], n: int = 5,
                   kind: str = "word", *, chunk: int = 1024, threads: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every text's ``shingles`` (the same shingles, computed on whole
    batches, with no Python per row or shingle) and the number of shingles of each text.

    A shingle is a substring of the normalised text, hashed by a polynomial over its
    UTF-8 bytes modulo 2^64 (from prefix sums, so each shingle costs O(1)), then mixed
    (MurmurHash3's finaliser). Equal shingles get equal hashes in any text.
    Lower-casing is Arrow's (utf8proc, one character to one), which differs from
    ``str.lower`` only on a few characters (final sigma, dotted capital I).
    Works through ``chunk`` texts at a time, on ``threads`` threads.
    Returns (hashes uint64 in text order, counts int64)."""
    if kind not in ("word", "char"):
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.string())
    if len(texts) <= chunk:
        return _shingle_hashes(texts, n, kind)
    pieces = [texts.slice(i, chunk) for i in range(0, len(texts), chunk)]  # cache-sized
    if threads > 1:  # numpy and Arrow let go of the GIL
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda p: _shingle_hashes(p, n, kind), pieces))
    else:
        parts = [_shingle_hashes(p, n, kind) for p in pieces]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _shingle_hashes(texts: pa.Array, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    raw, offsets = normalize_bytes(texts)
    lengths = np.diff(offsets)
    if kind == "word":  # units are words: the normalised text has single spaces
        word = raw != 32
        edge = np.zeros(len(raw) + 1, dtype=bool)
        edge[offsets] = True  # text boundaries
        begin = np.flatnonzero(word & (edge[:-1] | np.concatenate([[True], ~word[:-1]])))
        end = np.flatnonzero(word & (edge[1:] | np.concatenate([~word[1:], [True]]))) + 1
    else:  # units are code points: bytes that do not continue a UTF-8 sequence
        begin = np.flatnonzero((raw & 0xC0) != 0x80)
        end = np.append(begin[1:], len(raw))
    doc = np.searchsorted(offsets, begin, side="right") - 1
    units = np.bincount(doc, minlength=len(lengths)).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(units)])[:-1]
    # a text of at most n units is one shingle (the whole text); a longer one units - n + 1
    counts = np.where(units > n, units - n + 1, np.minimum(units, 1))
    sdoc = np.repeat(np.arange(len(lengths)), counts)
    k = np.arange(len(sdoc)) - np.repeat(np.cumsum(counts) - counts, counts) + first[sdoc]
    whole = units[sdoc] <= n
    lo = np.where(whole, offsets[sdoc], begin[np.minimum(k, len(begin) - 1)] if len(begin) else 0)
    hi = np.where(whole, offsets[sdoc + 1],
                  end[np.minimum(k + n - 1, len(end) - 1)] if len(end) else 0)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(raw) + 1, dtype=np.uint64)
        step = raw.astype(np.uint64)
        step += np.uint64(1)
        step *= _powers(_POLY, len(raw))
        np.cumsum(step, out=prefix[1:])
        del step
        inverse = _powers(pow(_POLY, -1, 1 << 64), len(raw) + 1)
        poly = (prefix[hi] - prefix[lo]) * inverse[lo]
        hashes = fmix64(poly ^ (hi - lo).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return hashes, counts


def shingle_sets(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each text's set of shingles from ``shingle_hashes``: its distinct 32-bit shingle
    hashes (the high half of the 64-bit ones), ascending, text after text, and the
    size of each set. Two different shingles share a 32-bit hash with probability
    2^-32, so the Jaccard of two sets is that of the shingles but for a chance of
    about |A| x |B| / 2^32 (5e-6 for two texts of 150 words). One sort, no Python
    per text. Returns (values uint32, sizes int64)."""
    doc = np.repeat(np.arange(len(counts), dtype=np.uint64), counts)
    key = (doc << np.uint64(32)) | (np.asarray(hashes, dtype=np.uint64) >> np.uint64(32))
    del doc
    key.sort(kind="stable")  # numpy's radix-like stable sort: 2x its quicksort on these keys
    new = np.ones(len(key), dtype=bool)
    np.not_equal(key[1:], key[:-1], out=new[1:])
    key = key[new]
    sizes = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(counts))
    return key.astype(np.uint32), sizes.astype(np.int64)
