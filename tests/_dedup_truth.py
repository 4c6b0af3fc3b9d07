"""Ground truth for near-duplicate detection, built from real text.

A corpus is made of REAL texts from ``tests/data`` (the *originals*, kept only
when they have at least 40 words and no other original shares Jaccard >= 0.5
with them, so that families are independent) plus near-duplicate *variants*
made by realistic edits: words inserted, deleted, substituted or mistyped,
punctuation changed, adjacent sentences swapped, whitespace and letter case
changed. Each variant is edited from its parent (the original, or another
variant of the same family) until the exact Jaccard of shingles to the parent
reaches a target drawn uniformly from [0.5, 1.0], so that duplicates spread on
both sides of a threshold of 0.8. Everything is deterministic for a seed.

Labels are doc-level and exact: a doc is a true duplicate when some OTHER doc
has exact Jaccard >= threshold with it. Within a family that is computed by
brute force over every pair. Across families it is assumed to be below the
threshold; :func:`cross_family_pairs` checks that assumption exactly with a
prefix-filtered similarity join over the whole corpus (the tests run it, and
``true_duplicates(..., across=True)`` folds any such pair into the labels).

Shingles are those of ``curate.text.shingles`` (and of the dedup peers in
``bench/dedup.py``): NFKC, lower-case, whitespace collapsed, punctuation kept;
word ``n``-grams joined by a space (a text of fewer than ``n`` words is one
shingle) or character ``n``-grams; an empty text has none.

Importable by the tests and by ``bench/dedup.py`` (which puts ``tests/`` on
``sys.path``); it depends only on numpy, polars and the standard library.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl

DATA = Path(__file__).resolve().parent / "data"

_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"(\S+)(\s*)")
_TRAIL = re.compile(r"[.,;:!?]+$")


# --- shingles and Jaccard ------------------------------------------------------------

def normalize(text: str) -> str:
    """NFKC, lower-case, whitespace collapsed and stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text or "").lower()).strip()


def shingles(text: str, n: int = 5, kind: str = "word") -> set[str]:
    """Word ``n``-grams (joined by a space) or character ``n``-grams of the normalised
    text; a text shorter than ``n`` units is one shingle; an empty text has none."""
    norm = normalize(text)
    if not norm:
        return set()
    if kind == "char":
        if len(norm) <= n:
            return {norm}
        return {norm[i:i + n] for i in range(len(norm) - n + 1)}
    if kind != "word":
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    words = norm.split(" ")
    if len(words) <= n:
        return {norm}
    return set(map(" ".join, zip(*(words[i:] for i in range(n)))))


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets score 0 (empty texts are never duplicates)."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# --- real texts ----------------------------------------------------------------------

def _join(*cols: str) -> pl.Expr:
    return pl.concat_str([pl.col(c).fill_null("") for c in cols], separator="\n").str.strip_chars()


def real_texts(data: Path = DATA) -> list[str]:
    """Real English texts from ``tests/data``, in a fixed order: Alpaca-layout SFT rows
    (instruction, input and output joined; alpaca_en_demo and GPTeacher role-play),
    GSM8K question + answer, C4 web pages, AlpacaEval model answers, HH-RLHF transcripts
    and self-instruct answers. (GPTeacher Toolformer is left out: its rows are one tool
    description template plus a dozen words, near-duplicates of each other.)"""
    def rd(rel: str) -> pl.DataFrame:
        return pl.read_parquet(data / rel)

    parts = [
        rd("llamafactory/alpaca_en_demo.parquet").select(_join("instruction", "input", "output")),
        rd("gpteacher/roleplay_rest.parquet").select(_join("instruction", "input", "output")),
        rd("gsm8k/train.parquet").select(_join("question", "answer")),
        rd("gsm8k/test.parquet").select(_join("question", "answer")),
        rd("c4_demo/c4_demo.parquet").select(pl.col("text")),
        rd("alpaca_eval/annotations.parquet").select(pl.concat([pl.col("output_1"), pl.col("output_2")])),
        rd("alpaca_eval/eval_set.parquet").select(pl.col("output")),
        rd("hh_rlhf/harmless_base_test.parquet").select(pl.col("chosen")),
        rd("self_instruct/human_eval_predictions.parquet").select(pl.col("output")),
    ]
    out: list[str] = []
    for p in parts:
        out.extend(t for t in p.to_series().to_list() if t)
    return out


# --- exact similarity join (prefix filtering) ------------------------------------------

def candidate_pairs(sets: Sequence[set], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b) that include every pair with Jaccard >= ``threshold``:
    under a global token order (rarest first), two sets with Jaccard >= t share a token
    among the first |x| - ceil(t |x|) + 1 tokens of each (prefix filtering, Chaudhuri
    et al. 2006), and their sizes are within a factor t (length filter)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    lens = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
    empty = np.zeros(0, dtype=np.int64)
    if lens.sum() == 0:
        return empty, empty
    toks = pl.Series("s", list(chain.from_iterable(sets)), dtype=pl.String)
    df = pl.DataFrame({"doc": np.repeat(np.arange(len(sets), dtype=np.int64), lens),
                       "tok": toks.hash(seed=0)})
    df = df.with_columns(freq=pl.len().over("tok"))
    prefix = lens - np.ceil(threshold * lens - 1e-9).astype(np.int64) + 1
    limit = pl.DataFrame({"doc": np.arange(len(sets), dtype=np.int64), "limit": prefix, "n": lens})
    df = (df.sort(["doc", "freq", "tok"])
          .with_columns(pos=pl.int_range(pl.len()).over("doc"))
          .join(limit, on="doc")
          .filter((pl.col("pos") < pl.col("limit")) & (pl.col("freq") > 1))
          .select("doc", "tok", "pos", "n"))
    # positional filter (PPJoin, Xiao et al. 2008): with c shared prefix tokens, the last
    # at positions i and j, the overlap is at most c + min(|x| - i - 1, |y| - j - 1)
    cand = (df.join(df, on="tok", suffix="_r").filter(pl.col("doc") < pl.col("doc_r"))
            .group_by("doc", "doc_r").agg(c=pl.len(), i=pl.col("pos").max(), j=pl.col("pos_r").max(),
                                          lx=pl.col("n").first(), ly=pl.col("n_r").first())
            .filter(pl.min_horizontal("lx", "ly") >= threshold * pl.max_horizontal("lx", "ly") - 1e-9)
            .filter(pl.col("c") + pl.min_horizontal(pl.col("lx") - pl.col("i"), pl.col("ly") - pl.col("j")) - 1
                    >= (threshold / (1 + threshold) * (pl.col("lx") + pl.col("ly")) - 1e-9).ceil())
            .select("doc", "doc_r").sort("doc", "doc_r"))
    return cand["doc"].to_numpy(), cand["doc_r"].to_numpy()


def _at_least(x: set, y: set, threshold: float) -> float | None:
    inter = len(x & y)
    union = len(x) + len(y) - inter
    return inter / union if inter and inter >= threshold * union - 1e-9 else None


def similar_pairs(sets: Sequence[set], threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) with exact Jaccard >= ``threshold`` (prefix-filtered
    candidates, each verified exactly), sorted."""
    a, b = candidate_pairs(sets, threshold)
    out = []
    for i, j in zip(a.tolist(), b.tolist()):
        s = _at_least(sets[i], sets[j], threshold)
        if s is not None:
            out.append((i, j, s))
    return out


_INDEPENDENT: dict[tuple, list[int]] = {}


def independent(texts: Sequence[str], below: float = 0.5, n: int = 5,
                kind: str = "word") -> list[int]:
    """Indexes of texts kept greedily in input order so that no two kept texts have
    Jaccard >= ``below`` (exact duplicates included; empty texts dropped)."""
    key = (hash(tuple(texts)), len(texts), below, n, kind)
    if key in _INDEPENDENT:
        return list(_INDEPENDENT[key])
    drop = np.zeros(len(texts), dtype=bool)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):  # exact repeats first: cheap, and they are most pairs
        k = normalize(t)
        if not k or k in first:
            drop[i] = True
        else:
            first[k] = i
    alive = np.flatnonzero(~drop)
    sets = [shingles(texts[i], n, kind) for i in alive]
    a, b = candidate_pairs(sets, below)
    gone = np.zeros(len(alive), dtype=bool)
    for i, j in zip(a.tolist(), b.tolist()):  # sorted by i: i is kept unless gone already
        if not gone[i] and not gone[j] and _at_least(sets[i], sets[j], below) is not None:
            gone[j] = True
    out = alive[~gone].tolist()
    _INDEPENDENT[key] = out
    return list(out)


# --- realistic edits -------------------------------------------------------------------

class _Doc:
    """A text as words and the whitespace after each, so edits keep the layout."""

    __slots__ = ("lead", "words", "seps")

    def __init__(self, text: str | None = None):
        if text is None:
            return
        self.lead = text[:len(text) - len(text.lstrip())]
        pairs = _TOKEN.findall(text)
        self.words = [w for w, _ in pairs]
        self.seps = [s for _, s in pairs]

    def copy(self) -> _Doc:
        d = _Doc()
        d.lead, d.words, d.seps = self.lead, self.words[:], self.seps[:]
        return d

    def render(self) -> str:
        return self.lead + "".join(chain.from_iterable(zip(self.words, self.seps)))

    def quick_shingles(self, n: int, kind: str) -> set[str]:
        """The shingles of ``render()`` without NFKC (used only to steer the edits)."""
        if kind != "word":
            return shingles(self.render(), n, kind)
        low = " ".join(self.words).lower().split(" ")
        if len(low) <= n:
            return {" ".join(low)} if self.words else set()
        return set(map(" ".join, zip(*(low[i:] for i in range(n)))))


_CLOSE = frozenset(".!?\"')]")


def _ends_sentence(word: str) -> bool:
    return word[-1] in _CLOSE and word.rstrip("\"')]").endswith((".", "!", "?"))


def _edit_once(doc: _Doc, rng: random.Random, vocab: Sequence[str]) -> None:
    """One edit that changes shingles: delete, insert or substitute 1-3 words, a typo,
    a punctuation change, or two adjacent sentences swapped."""
    words, seps = doc.words, doc.seps
    n = len(words)
    op = rng.choices(("delete", "insert", "substitute", "typo", "punct", "reorder"),
                     weights=(20, 20, 15, 15, 15, 15))[0]
    i = rng.randrange(n)
    if op == "reorder":
        ends = [j for j, w in enumerate(words[:-1]) if w[-1] in _CLOSE and _ends_sentence(w)]
        if not ends:
            op = "substitute"
        else:  # swap the sentence ending at ends[s] with the one after it
            s = rng.randrange(len(ends))
            a = ends[s - 1] + 1 if s else 0
            b = ends[s] + 1
            c = ends[s + 1] + 1 if s + 1 < len(ends) else n
            sep_ab, sep_c = seps[b - 1], seps[c - 1]
            words[a:c] = words[b:c] + words[a:b]
            seps[a:c] = seps[b:c - 1] + [sep_ab] + seps[a:b - 1] + [sep_c]
            return
    if op == "delete" and n > 12:
        k = min(rng.randint(1, 3), n - 12, n - i)
        last = seps[i + k - 1]
        del words[i:i + k], seps[i:i + k]
        if i > 0:
            seps[i - 1] = last
    elif op in ("insert", "delete"):
        k = rng.randint(1, 3)
        words[i + 1:i + 1] = [rng.choice(vocab) for _ in range(k)]
        seps[i + 1:i + 1] = [" "] * (k - 1) + [seps[i]]
        seps[i] = " "
    elif op == "substitute":
        m = _TRAIL.search(words[i])
        words[i] = rng.choice(vocab) + (m.group() if m else "")
    elif op == "typo":
        w = words[i]
        if len(w) >= 4:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.6 else w[:j] + w[j + 1:]
        else:
            words[i] = w + rng.choice("aeiost")
    else:  # punctuation
        w = words[i]
        m = _TRAIL.search(w)
        if m and m.start() > 0:
            repl = rng.choice(["", ",", "!", ";", "...", ":"])
            words[i] = w[:m.start()] + (repl if repl != m.group() else "")
        else:
            words[i] = w + rng.choice([",", ",", ".", ";"])


def _cosmetic(doc: _Doc, rng: random.Random) -> None:
    """Edits that leave shingles unchanged: whitespace and letter case."""
    words, seps = doc.words, doc.seps
    for _ in range(rng.randint(0, 4)):
        i = rng.randrange(len(words))
        if seps[i]:
            seps[i] = rng.choice(["  ", "\n", " \t", "\n\n", "   "])
    r = rng.random()
    if r < 0.05:
        doc.words = [w.upper() for w in words]
    elif r < 0.4:
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(words))
            words[i] = words[i].capitalize() if rng.random() < 0.7 else words[i].lower()
    if rng.random() < 0.2:
        doc.lead = rng.choice([" ", "\n", "  "])
    if rng.random() < 0.2:
        seps[-1] = rng.choice([" ", "\n", "\n\n"])


def edit(text: str | _Doc, target: float, rng: random.Random, vocab: Sequence[str],
         n: int = 5, kind: str = "word", base: set | None = None) -> tuple[str, float]:
    """A variant of ``text`` whose Jaccard to ``text`` is close to ``target``: shingle-changing
    edits in rounds sized from the drop seen so far (a round that overshoots is undone and
    retried smaller), then whitespace and case edits. ``base``: the text's
    ``_Doc.quick_shingles``. Returns the variant and its (quick) Jaccard to ``text``."""
    cur = text.copy() if isinstance(text, _Doc) else _Doc(text)
    if not cur.words:
        return cur.render(), 1.0
    base = cur.quick_shingles(n, kind) if base is None else base
    per = 1.6 * n / max(len(base), 1)  # first guess of the drop in J per edit
    sim = 1.0
    for _ in range(16):
        if sim <= target + 0.01:
            break
        k = max(1, int((sim - target) / per * 0.7))
        trial = cur.copy()
        for _ in range(k):
            _edit_once(trial, rng, vocab)
        s = jaccard(base, trial.quick_shingles(n, kind))
        if s < target - 0.03:
            if k == 1:  # one edit already overshoots: keep the closer of the two
                if target - s < sim - target:
                    cur, sim = trial, s
                break
            per = max(per, (sim - s) / k)
            continue
        if s < sim:
            per = (sim - s) / k
        cur, sim = trial, s
    source = text.render() if isinstance(text, _Doc) else text
    _cosmetic(cur, rng)
    out = cur.render()
    if out == source:  # no edit landed: at least change the whitespace (an exact repeat
        cur.seps[rng.randrange(len(cur.seps))] += " "  # after normalisation)
        out = cur.render()
    return out, sim


# --- the corpus ------------------------------------------------------------------------

def make_corpus(texts: list[str], n_docs: int, dup_fraction: float, seed: int,
                threshold: float = 0.8, *, n: int = 5, kind: str = "word",
                min_words: int = 40, independence: float = 0.5, chain_prob: float = 0.3,
                target_range: tuple[float, float] = (0.5, 1.0), return_info: bool = False):
    """A shuffled corpus of ``n_docs`` docs: ``round(n_docs * (1 - dup_fraction))``
    independent real originals plus edited variants, each of a family picked uniformly
    at random, edited from the original or (with ``chain_prob``) from an earlier variant
    of the same family, to an exact Jaccard drawn uniformly from ``target_range``.

    Returns ``(docs, families)``; with ``return_info`` also a dict with per-doc
    ``parent`` (doc index edited from, -1 for originals), ``original`` (index of the
    family's original) and ``jaccard_parent`` (exact Jaccard to the parent).
    ``threshold`` is only recorded: labels come from :func:`true_duplicates`.
    """
    if not 0 <= dup_fraction < 1:
        raise ValueError(f"dup_fraction must be in [0, 1), got {dup_fraction!r}")
    rng = random.Random(seed)
    pool = [t for t in texts if len(normalize(t).split(" ")) >= min_words]
    keep = independent(pool, independence, n, kind)
    n_var = int(round(n_docs * dup_fraction))
    n_orig = n_docs - n_var
    if n_orig > len(keep):
        raise ValueError(f"{n_docs} docs at dup_fraction {dup_fraction} need {n_orig} independent "
                         f"originals; the texts give {len(keep)} (>= {min_words} words, pairwise "
                         f"Jaccard < {independence}); raise dup_fraction to at least "
                         f"{1 - len(keep) / n_docs:.3f}")
    chosen = rng.sample(keep, n_orig)
    originals = [pool[i] for i in chosen]
    vocab = [w for t in originals[:2000] for w in normalize(t).split(" ") if w.isalpha()]
    docs = list(originals)
    family = list(range(n_orig))
    parent = [-1] * n_orig
    members: list[list[int]] = [[i] for i in range(n_orig)]
    base_cache: dict[int, tuple[_Doc, set]] = {}
    lo, hi = target_range
    for _ in range(n_var):
        f = rng.randrange(n_orig)
        p = rng.choice(members[f][1:]) if len(members[f]) > 1 and rng.random() < chain_prob else f
        if p not in base_cache:
            d = _Doc(docs[p])
            base_cache[p] = (d, d.quick_shingles(n, kind))
        d, base = base_cache[p]
        text, _ = edit(d, rng.uniform(lo, hi), rng, vocab, n, kind, base)
        members[f].append(len(docs))
        docs.append(text)
        family.append(f)
        parent.append(p)
    order = list(range(len(docs)))
    rng.shuffle(order)
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    out_docs = [docs[i] for i in order]
    out_fam = [family[i] for i in order]
    if not return_info:
        return out_docs, out_fam
    sets = [shingles(d, n, kind) for d in docs]
    exact = [jaccard(sets[i], sets[parent[i]]) if parent[i] >= 0 else 1.0 for i in range(len(docs))]
    info = {"parent": [int(pos[parent[i]]) if parent[i] >= 0 else -1 for i in order],
            "original": [int(pos[family[i]]) for i in order],
            "jaccard_parent": [exact[i] for i in order],
            "threshold": threshold}
    return out_docs, out_fam, info


# --- labels and scoring ----------------------------------------------------------------

def family_pairs(docs: Sequence[str], families: Sequence[int], threshold: float, n: int = 5,
                 kind: str = "word", sets: Sequence[set] | None = None) -> list[tuple[int, int, float]]:
    """Every within-family pair (i < j) with exact Jaccard >= threshold (brute force)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        groups[f].append(i)
    out = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        fs = [sets[i] for i in idx] if sets is not None else [shingles(docs[i], n, kind) for i in idx]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                s = jaccard(fs[a], fs[b])
                if s >= threshold:
                    out.append((min(idx[a], idx[b]), max(idx[a], idx[b]), s))
    return sorted(out)


def best_family_jaccard(docs: Sequence[str], families: Sequence[int], n: int = 5,
                        kind: str = "word", sets: Sequence[set] | None = None) -> np.ndarray:
    """Per doc, the highest exact Jaccard to another doc of its family (0 when alone)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        groups[f].append(i)
    best = np.zeros(len(docs))
    for idx in groups.values():
        fs = [sets[i] for i in idx] if sets is not None else [shingles(docs[i], n, kind) for i in idx]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                s = jaccard(fs[a], fs[b])
                best[idx[a]] = max(best[idx[a]], s)
                best[idx[b]] = max(best[idx[b]], s)
    return best


def cross_family_pairs(docs: Sequence[str], families: Sequence[int], threshold: float,
                       n: int = 5, kind: str = "word",
                       sets: Sequence[set] | None = None) -> list[tuple[int, int, float]]:
    """Every pair of docs from different families with exact Jaccard >= threshold
    (exact similarity join over the whole corpus; expected empty)."""
    sets = [shingles(d, n, kind) for d in docs] if sets is None else sets
    a, b = candidate_pairs(sets, threshold)
    fam = np.asarray(families)
    other = fam[a] != fam[b]
    out = []
    for i, j in zip(a[other].tolist(), b[other].tolist()):
        s = _at_least(sets[i], sets[j], threshold)
        if s is not None:
            out.append((i, j, s))
    return out


def true_duplicates(docs: Sequence[str], families: Sequence[int], threshold: float,
                    n: int = 5, kind: str = "word", *, across: bool = False) -> set[int]:
    """Docs with some OTHER doc at exact Jaccard >= ``threshold``: exact within families;
    across families assumed below the threshold (the originals are pairwise < 0.5), or
    checked exactly and included with ``across=True``."""
    sets = [shingles(d, n, kind) for d in docs]
    pairs = family_pairs(docs, families, threshold, n, kind, sets)
    if across:
        pairs += cross_family_pairs(docs, families, threshold, n, kind, sets)
    return {i for p in pairs for i in p[:2]}


def predicted_duplicates(pred, n_docs: int) -> set[int]:
    """Docs in a predicted cluster of size >= 2. ``pred`` is a list of clusters (lists of
    doc indexes) or a per-doc cluster label array of length ``n_docs`` (-1 = none)."""
    if isinstance(pred, np.ndarray) and pred.ndim == 1:
        labels = pred
    elif len(pred) and all(isinstance(x, (int, np.integer)) for x in pred):
        labels = np.asarray(pred)
    else:
        return {int(i) for c in pred if len(c) >= 2 for i in c}
    if len(labels) != n_docs:
        raise ValueError(f"a label array needs one label per doc ({n_docs}), got {len(labels)}")
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    vals, counts = np.unique(labels[valid], return_counts=True)
    big = vals[counts >= 2]
    return set(np.flatnonzero(valid & np.isin(labels, big)).tolist())


def score(pred_clusters, truth: Iterable[int], n_docs: int) -> dict[str, float]:
    """Doc-level precision, recall and F1 of predicted duplicates against ``truth``.
    With no prediction precision is 1.0 (vacuous) and recall 0 (if there is truth)."""
    pred = predicted_duplicates(pred_clusters, n_docs)
    truth = set(truth)
    tp = len(pred & truth)
    precision = tp / len(pred) if pred else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": len(pred),
            "true": len(truth), "true_positives": tp}


def clusters_from_pairs(n_docs: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Per-doc cluster labels (smallest member) of the connected components of pairs."""
    parent = list(range(n_docs))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n_docs)], dtype=np.int64)
