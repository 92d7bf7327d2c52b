"""Search over one catalog: lexical (FTS5 BM25, typo-corrected) and dense (the text encoder's int8
scan), fused by reciprocal rank fusion. Needs a :class:`Catalog` and a :class:`TextEncoder` only,
so the export evaluates the same code on its catalog before signing it.

For a query q, with r_d(j) the 1-based rank of item j among the dense candidates and r_l(j) among
the lexical ones (both after ``where``)::

    score_j = w_dense / (c + r_d(j)) + w_lexical / (c + r_l(j))      (a missing rank adds 0)

The dense candidates are the scan's ``max(candidates, k)`` best rows, so the fused list always
holds k items when the filter allows k; ties go to the lower row (as ``recommend``). Lexical
candidates are the items holding every query word (BM25 order), then, when those are fewer than
``candidates``, the items holding any of them. A query word of ≥ 4 letters that no catalog item
holds is replaced by the most frequent catalog word one edit away (an adjacent swap, a dropped,
doubled, inserted or substituted letter), when there is one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shelfrank.device.catalog import Catalog
from shelfrank.device.encoder import TextEncoder
from shelfrank.device.kernel import topk
from shelfrank.device.lexical import LexicalIndex, terms
from shelfrank.device.ranker import order
from shelfrank.errors import BundleError, InputError

logger = logging.getLogger(__name__)

MODES = ("hybrid", "dense", "lexical")
KIND = "rrf"
#: characters of a query read at all: cut before any tokenizing, so an 800 KB query costs what a
#: 1 KB one does (the encoder cuts again at its own max_len)
MAX_QUERY_CHARS = 1024
#: distinct words of a query sent to FTS
MAX_TERMS = 32
#: words shorter than this are never corrected (too many catalog words are one edit away)
MIN_TYPO_LEN = 4
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class SearchParams:
    """The fusion's parameters (the manifest's ``search`` entry, ``kind: rrf``)."""

    w_dense: float = 1.0
    w_lexical: float = 1.0
    rrf_k: float = 60.0
    candidates: int = 100

    def __post_init__(self) -> None:
        for name in ("w_dense", "w_lexical", "rrf_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1e6:
                raise BundleError(f"search.{name} must be a finite number in [0, 1e6], got {v!r}")
        c = self.candidates
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 100_000:
            raise BundleError(f"search.candidates must be an integer in 1..100000, got {c!r}")

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any] | None) -> SearchParams:
        """Decode the manifest's ``search`` entry (None: the defaults).

        Raises:
            BundleError: not a mapping, an unknown kind or a field out of range.
        """
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping) or entry.get("kind") != KIND:
            raise BundleError(f"manifest search entry must be an object of kind {KIND!r}, got {entry!r:.200}")
        fields = {f: entry[f] for f in ("w_dense", "w_lexical", "rrf_k", "candidates") if f in entry}
        return cls(**fields)

    def to_manifest(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}


def clean_query(text: Any) -> str:
    """The query as search reads it: cut to :data:`MAX_QUERY_CHARS`, lone surrogates (undecodable
    bytes) replaced, control characters made spaces.

    Raises:
        InputError: not a string, or nothing but whitespace.
    """
    if not isinstance(text, str):
        raise InputError(f"search text must be a non-empty string, got {type(text).__name__}")
    text = text[:MAX_QUERY_CHARS]
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes '?'
    text = _CONTROL.sub(" ", text)
    if not text.strip():
        raise InputError(
            f"search text must be a non-empty string with something other than whitespace, got {text[:40]!r}"
        )
    return text


def _edits(word: str) -> set[str]:
    """Every string one edit away: deletes, adjacent swaps, substitutions, insertions."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in _ALPHABET}
    out |= {a + c + b for a, b in splits for c in _ALPHABET}
    out.discard(word)
    return out


def correct(words: list[str], vocab: Mapping[str, int]) -> list[str]:
    """``words`` with each word of ≥ :data:`MIN_TYPO_LEN` characters that the catalog lacks replaced by
    the catalog word one edit away held by the most items (ties: the first in sort order); kept
    as it is when there is none."""
    out = []
    for w in words:
        if len(w) >= MIN_TYPO_LEN and w not in vocab and w.isascii():
            near = [(-vocab[c], c) for c in _edits(w) if c in vocab]
            if near:
                w = min(near)[1]
        out.append(w)
    return out


def query_words(text: str, lex: LexicalIndex) -> tuple[list[str], bool]:
    """(the FTS words of a cleaned query, typo-corrected, distinct, at most :data:`MAX_TERMS`;
    whether the last one is matched as a prefix).

    A query that ends in a letter or digit may end in a word still being typed: its last word is
    matched as a prefix, and kept uncorrected when a catalog word starts with it.
    """
    raw = terms(text)
    if not raw:
        return [], False
    prefix = text[-1].isalnum() and len(raw[-1]) >= 2
    vocab = lex.vocabulary()
    fixed = correct(raw, vocab)
    if prefix and fixed[-1] != raw[-1]:
        if lex.has_prefix(raw[-1]):
            fixed[-1] = raw[-1]
        else:
            prefix = False  # corrected: the word was complete, with a typo
    words = list(dict.fromkeys(fixed))[:MAX_TERMS]
    return words, prefix and words[-1] == fixed[-1]


def lexical(cat: Catalog, text: str, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The lexical candidates: (rows, −BM25 scores) best first, at most ``n``, only rows ``mask``
    allows; items holding every query word first, then (when fewer than ``n``) those holding any.
    Empty when the catalog has no usable FTS index."""
    lex = cat.lexical
    if not lex.available:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    words, prefix = query_words(text, lex)
    if not words:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # with a filter, every match is fetched and filtered here: a LIMIT before the filter could
    # leave none of the allowed rows (the FTS still scores every match either way)
    limit = n if mask is None else None
    rows: list[int] = []
    scores: list[float] = []
    have: set[int] = set()
    for any_word in (False, True) if len(words) > 1 else (False,):
        got = lex.query(words, limit=limit, prefix_last=prefix, any_word=any_word)
        if mask is not None:
            got = [(r, s) for r, s in got if r < len(mask) and mask[r]]
        got = [(r, s) for r, s in got if r not in have][: n - len(rows)]
        if rows and got:  # below every all-words row, in their own BM25 order
            shift = min(scores) - max(s for _, s in got) - 1.0
            got = [(r, s + shift) for r, s in got]
        rows += [r for r, _ in got]
        scores += [s for _, s in got]
        have.update(r for r, _ in got)
        if len(rows) >= n:
            break
    return np.asarray(rows, np.int64), np.asarray(scores, np.float32)


def dense(
    cat: Catalog, q: np.ndarray, n: int, mask: np.ndarray | None, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The dense candidates: the ``n`` best rows by cosine to the query vector (−1 fill dropped)."""
    ids, scores = topk(q, cat.rows, min(n, len(cat)), scales=cat.scales, mask=mask, threads=threads)
    ok = ids >= 0
    return ids[ok].astype(np.int64), scores[ok]


def fuse(d_rows: np.ndarray, l_rows: np.ndarray, p: SearchParams, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of two candidate lists (best first): the k best (rows, scores)."""
    cand = np.union1d(d_rows, l_rows)
    score = np.zeros(len(cand), np.float64)
    for rows, w in ((d_rows, p.w_dense), (l_rows, p.w_lexical)):
        if len(rows):
            score[np.searchsorted(cand, rows)] += w / (p.rrf_k + np.arange(1, len(rows) + 1))
    o = order(score, cand)[:k]
    return cand[o], score[o].astype(np.float32)


def search(
    cat: Catalog,
    encoder: TextEncoder | None,
    text: str,
    k: int = 10,
    *,
    where: Mapping[str, Any] | None = None,
    mode: str = "hybrid",
    params: SearchParams | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows for a free-text query and their scores, best first.

    ``mode``: ``"hybrid"`` (fused; dense-only when the catalog has no usable FTS index),
    ``"dense"`` (the encoder's vector scan; score = cosine) or ``"lexical"`` (FTS only; score =
    −BM25; fewer than k when fewer items match). No default filter: an out-of-stock item is found
    unless ``where`` says otherwise.

    Raises:
        InputError: text not a string or only whitespace, k not a positive integer, an unknown
            mode or a bad filter.
    """
    if mode not in MODES:
        raise InputError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    text = clean_query(text)
    mask = cat.mask(where)
    p = params or SearchParams()
    if mode == "lexical":
        rows, scores = lexical(cat, text, k, mask)
        return rows, scores
    if encoder is None:
        raise InputError(f"search mode {mode!r} needs the text encoder")
    q = encoder.encode([text])[0]
    if mode == "dense" or not cat.lexical.available:
        return dense(cat, q, k, mask, threads=threads)
    d_rows, _ = dense(cat, q, max(p.candidates, k), mask, threads=threads)
    l_rows, _ = lexical(cat, text, p.candidates, mask)
    return fuse(d_rows, l_rows, p, k)
