"""Search over one catalog: lexical (FTS5 BM25, typo-corrected) and dense (the text encoder's int8
scan), fused by one weighted score. Needs a :class:`Catalog` and a :class:`TextEncoder` only, so
the export evaluates (and fits) the same code on its catalog before signing it.

For a query q and a candidate item j (after ``where``)::

    score_j = w_dense · cos(q, v_j) + w_lexical · bm25_j / max_i bm25_i     (bm25 = 0 if not matched)

The candidates are the dense scan's ``max(candidates, k)`` best rows and the lexical
``candidates`` best, so the fused list holds k items whenever the filter allows k; every
candidate's cosine is exact, so an item only the FTS found is scored as fairly as the rest. Ties
go to the lower row (as ``recommend``). Lexical candidates are the items holding every query word
(BM25 order), then, when those are fewer than ``candidates``, the items holding any of its
rarer words (:func:`_rare`: at most 300 items in all). A query word of ≥ 4 letters that no
catalog item holds is replaced by the most frequent catalog word one edit away (an adjacent swap,
a dropped, doubled, inserted or substituted letter), when there is one. Rank fusion (RRF) was
measured against this score and lost: an item only one retriever finds at rank 1 loses to items
both find further down (docs/search.md).

Personalised search (optional per call, hybrid mode only): with the shopper's user vector u (the
user tower over their history, as ``recommend`` uses it) the fused score gains a small re-rank
term over the same candidates, ``+ w_user · (w_dense + w_lexical) · cos(u, v_j)``, so the items like what the shopper
keeps choosing move up among those the query found; no history, no term (the plain search).
``w_user`` was picked by a measurement on the demo shop's held-out shoppers
(scripts/bench_search_personal.py, docs/search.md).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shelfrank.device.catalog import Catalog
from shelfrank.device.encoder import TextEncoder
from shelfrank.device.lexical import LexicalIndex, terms
from shelfrank.device.ranker import order
from shelfrank.errors import BundleError, InputError

logger = logging.getLogger(__name__)

MODES = ("hybrid", "dense", "lexical")
KIND = "weighted"
#: characters of a query read at all: cut before any tokenizing, so an 800 KB query costs what a
#: 1 KB one does (the encoder cuts again at its own max_len)
MAX_QUERY_CHARS = 1024
#: distinct words of a query sent to FTS
MAX_TERMS = 32
#: words shorter than this are never corrected (too many catalog words are one edit away)
MIN_TYPO_LEN = 4
#: an any-word query keeps the words held by at most this share of the items (or RARE_MIN items),
#: the rarest first, while the items they hold sum to at most ANY_WORD_MAX_DOCS: FTS5 scores every
#: item it matches (~1 µs each), so this bounds its cost whatever the catalog's size
RARE_SHARE = 0.02
RARE_MIN = 200
ANY_WORD_MAX_DOCS = 300
MAX_OR_TERMS = 8
#: a hybrid search's FTS queries run in a worker thread while the caller encodes the query and
#: scans: at most this many at once in a process (more callers run theirs themselves, after the scan)
OVERLAP_THREADS = 4
#: personalised search's re-rank weight (scripts/bench_search_personal.py picks it; docs/search.md)
W_USER = 0.3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class SearchParams:
    """The fusion's parameters (the manifest's ``search`` entry, ``kind: weighted``; the weights
    fitted at export, ``shelfrank.export.search_eval.fit_params``)."""

    w_dense: float = 1.0
    w_lexical: float = 0.5
    candidates: int = 100
    #: the personal term's share of the fused score's span (:attr:`user_weight`; none without a user)
    w_user: float = W_USER

    def __post_init__(self) -> None:
        for name in ("w_dense", "w_lexical", "w_user"):
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
        fields = {f: entry[f] for f in ("w_dense", "w_lexical", "candidates", "w_user") if f in entry}
        return cls(**fields)

    @property
    def user_weight(self) -> float:
        """The personal term's weight: ``w_user`` × (w_dense + w_lexical), a share of the fused
        score's span, so one ``w_user`` carries over between bundles whose fitted w_lexical differ."""
        return self.w_user * (self.w_dense + self.w_lexical)

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


def lexical(cat: Catalog, text: str, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The lexical candidates: (rows best first, their −BM25 scores, how many hold every word).

    At most ``n`` rows, only those ``mask`` allows: the items holding every query word first (BM25
    order), then, when fewer than ``n``, those holding any of its rarer words (:func:`_rare`).
    Empty when the catalog has no usable FTS index.
    """
    lex = cat.lexical
    none = np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    if not lex.available:
        return none
    words, prefix = query_words(text, lex)
    if not words:
        return none
    # with a filter, every match is fetched and filtered here: a LIMIT before the filter could
    # leave none of the allowed rows (the FTS scores every match either way)
    limit = n if mask is None else None
    got: list[tuple[int, float]] = []
    n_all = 0
    for any_word in (False, True) if len(words) > 1 else (False,):
        use, pre = words, prefix
        if any_word:
            cap = _rare_cap(len(cat))
            use = _rare(words, lex.vocabulary(), len(cat), lex.prefix_docs(words[-1], cap) if prefix else None)
            if not use:
                break
            pre = prefix and use[-1] == words[-1]
        part = lex.query(use, limit=limit, prefix_last=pre, any_word=any_word)
        if mask is not None:
            part = [(r, s) for r, s in part if r < len(mask) and mask[r]]
        if got:
            have = {r for r, _ in got}
            part = [(r, s) for r, s in part if r not in have]
        got += part[: n - len(got)]
        if not any_word:
            n_all = len(got)
        if len(got) >= n:
            break
    rows = np.fromiter((r for r, _ in got), np.int64, len(got))
    return rows, np.fromiter((s for _, s in got), np.float32, len(got)), n_all


def _rare_cap(n_items: int) -> float:
    """The most items a word an any-word query keeps may be held by."""
    return min(max(RARE_MIN, RARE_SHARE * n_items), ANY_WORD_MAX_DOCS)


def _rare(words: list[str], vocab: Mapping[str, int], n_items: int, last_prefix_df: int | None = None) -> list[str]:
    """The words an any-word query keeps, in query order: the rarest first (at most
    :data:`MAX_OR_TERMS`), each held by at most :func:`_rare_cap` items and all together by at most
    :data:`ANY_WORD_MAX_DOCS`; none (no any-word query) when even the rarest is held by more.
    ``last_prefix_df``: the last word is matched as a prefix, and this many items hold a word it
    begins (``LexicalIndex.prefix_docs``), not the items holding it as a whole word.

    A word most items hold (``game``, ``for``) adds little to BM25 and makes FTS score every item
    that holds it: an any-word query over it costs ~20× an all-words one; so does a prefix most
    items' words begin (``gam*``: 13k of 100k items, 30–55 ms). The dense scan's candidates cover
    what such a query would find.
    """
    df = {w: vocab.get(w, 0) for w in words}
    if last_prefix_df is not None:
        df[words[-1]] = max(df[words[-1]], last_prefix_df)
    keep: set[str] = set()
    total = 0
    for w in sorted(words, key=lambda w: (df[w], words.index(w))):
        if len(keep) == MAX_OR_TERMS or df[w] > _rare_cap(n_items) or total + df[w] > ANY_WORD_MAX_DOCS:
            break
        keep.add(w)
        total += df[w]
    return [w for w in words if w in keep]


class _Overlap:
    """The worker threads a hybrid search's FTS queries overlap the encoder and the scan in (SQLite,
    onnxruntime and the scan kernel all release the GIL): the same results as one after the other,
    the latency of the longer instead of the sum. Made again in a forked child (no threads there)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.slots = threading.BoundedSemaphore(OVERLAP_THREADS)
        self.lock = threading.Lock()

    def start(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """``fn(*args)`` started in a worker when one is free (else run here, now); returns what
        gives its result (or raises its error)."""
        if not self.slots.acquire(blocking=False):
            out = fn(*args)
            return lambda: out
        try:
            with self.lock:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(OVERLAP_THREADS, thread_name_prefix="shelfrank-fts")
                fut = self.pool.submit(fn, *args)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda _: self.slots.release())
        return fut.result


_OVERLAP = _Overlap()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_OVERLAP.reset)


def lexical_scores(scores: np.ndarray, n_all: int) -> np.ndarray:
    """Scores for a lexical-only result list that decrease along it: the rows holding only some of
    the words move below the last row holding all of them (their BM25 order kept)."""
    out = scores.astype(np.float32, copy=True)
    if 0 < n_all < len(out):
        out[n_all:] += out[:n_all].min() - out[n_all:].max() - 1.0
    return out


def dense(
    cat: Catalog, q: np.ndarray, n: int, mask: np.ndarray | None, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The dense candidates: the ``n`` best rows by cosine to the query vector (−1 fill dropped)."""
    ids, scores = cat.topk(q, min(n, len(cat)), mask=mask, threads=threads)  # the planner's scan (device/planner.py)
    ok = ids >= 0
    return ids[ok].astype(np.int64), scores[ok]


def candidates(
    cat: Catalog,
    q: np.ndarray,
    text: str,
    n: int,
    mask: np.ndarray | None,
    params: SearchParams,
    *,
    threads: int = 1,
    lexical_result: Callable[[], tuple[np.ndarray, np.ndarray, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fusion's inputs: (candidate rows ascending, their cosine to ``q``, their lexical feature).

    The candidates are the dense scan's ``max(params.candidates, n)`` best rows and the lexical
    ``params.candidates``; every candidate's cosine is its exact (dequantised) one, the lexical
    feature is −BM25 / the best −BM25 of the query (0 for a row the FTS did not return).
    ``lexical_result``: gives :func:`lexical`'s answer for this query when it was started already
    (beside the encoder: :func:`search`).
    """
    d_rows, _ = dense(cat, q, max(params.candidates, n), mask, threads=threads)
    if lexical_result is None:
        l_rows, l_scores, _ = lexical(cat, text, params.candidates, mask)
    else:
        l_rows, l_scores, _ = lexical_result()
    cand = np.union1d(d_rows, l_rows)
    cos = cat.vectors(cand) @ np.asarray(q, np.float32)
    lex = np.zeros(len(cand), np.float32)
    if len(l_rows):
        top = float(l_scores.max())
        if top > 0:
            lex[np.searchsorted(cand, l_rows)] = np.maximum(l_scores, 0) / top
    return cand, cos.astype(np.float32), lex


def fuse(
    cand: np.ndarray,
    cos: np.ndarray,
    lex: np.ndarray,
    params: SearchParams,
    k: int,
    user_cos: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (rows, fused scores) of the candidates: w_dense · cosine + w_lexical · lexical
    (+ :attr:`SearchParams.user_weight` · ``user_cos``, the candidates' cosine to the shopper's
    vector, when given)."""
    score = np.float32(params.w_dense) * cos + np.float32(params.w_lexical) * lex
    if user_cos is not None:
        score = score + np.float32(params.user_weight) * np.asarray(user_cos, np.float32)
    o = order(score, cand)[:k]
    return cand[o], score[o]


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
    user: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows for a free-text query and their scores, best first.

    ``mode``: ``"hybrid"`` (fused; dense-only when the catalog has no usable FTS index),
    ``"dense"`` (the encoder's vector scan; score = cosine) or ``"lexical"`` (FTS only; score =
    −BM25, the rows holding every word first; fewer than k when fewer items match). No default
    filter: an out-of-stock item is found unless ``where`` says otherwise. ``user``: the shopper's
    user vector, for a personalised search (hybrid only; see :func:`personal`).

    Raises:
        InputError: text not a string or only whitespace, k not a positive integer, an unknown
            mode, a user vector outside the hybrid mode or a bad filter.
    """
    if mode not in MODES:
        raise InputError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    text = clean_query(text)
    mask = cat.mask(where)
    p = params or SearchParams()
    if mode != "lexical" and encoder is None:
        raise InputError(f"search mode {mode!r} needs the text encoder")
    if user is not None and mode != "hybrid":
        raise InputError(f"personalised search (a user) needs mode 'hybrid', got mode {mode!r}")
    if mode == "lexical":
        return ranked(cat, None, text, k, mask, mode=mode, params=p, threads=threads)
    lex = None
    if mode == "hybrid" and cat.lexical.available:  # the FTS queries beside the encoder and the scan
        lex = _OVERLAP.start(lexical, cat, text, p.candidates, mask)
    q = encoder.encode([text])[0]
    return ranked(cat, q, text, k, mask, mode=mode, params=p, threads=threads, user=user, lexical_result=lex)


def personal(mode: str, user_id: str | None, user_vector: Callable[[str], np.ndarray | None]) -> np.ndarray | None:
    """The user vector a ``search(..., user_id=...)`` call blends in: None without a user id, or for
    a shopper with no usable history (their search is the plain one); ``user_vector`` is how the
    caller makes it (``Recommender.user_vector``).

    Raises:
        InputError: a user id that is not a non-empty string, or one given outside the hybrid mode.
    """
    if user_id is None:
        return None
    if not isinstance(user_id, str) or not user_id:
        raise InputError(f"user_id must be a non-empty string, got {user_id!r}")
    if mode != "hybrid":
        raise InputError(f"personalised search (user_id) needs mode 'hybrid', got mode {mode!r}")
    return user_vector(user_id)


def ranked(
    cat: Catalog,
    q: np.ndarray | None,
    text: str,
    k: int,
    mask: np.ndarray | None,
    *,
    mode: str,
    params: SearchParams,
    threads: int = 1,
    user: np.ndarray | None = None,
    lexical_result: Callable[[], tuple[np.ndarray, np.ndarray, int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` for a cleaned query whose vector ``q`` is already made (the export embeds its
    query sets in batches): the k best (rows, scores). ``user``: the shopper's vector (hybrid
    only): the fused candidates re-ranked with ``user_weight · cos(user, item)``; on a catalog without
    FTS the candidates are the dense scan's ``max(candidates, k)`` best. ``lexical_result``: see
    :func:`candidates`."""
    if user is not None and mode != "hybrid":
        raise InputError(f"personalised search (a user) needs mode 'hybrid', got mode {mode!r}")
    if mode == "lexical":
        rows, scores, n_all = lexical(cat, text, k, mask)
        return rows, lexical_scores(scores, n_all)
    if q is None:
        raise InputError(f"search mode {mode!r} needs the query vector")
    personalised = user is not None and params.w_user > 0
    if mode == "dense" or not cat.lexical.available:
        if not personalised:
            return dense(cat, q, k, mask, threads=threads)
        rows, _ = dense(cat, q, max(params.candidates, k), mask, threads=threads)
        cand = np.sort(rows)
        v = cat.vectors(cand)
        cos = (v @ np.asarray(q, np.float32)).astype(np.float32)
        return fuse(cand, cos, np.zeros(len(cand), np.float32), params, k, v @ np.asarray(user, np.float32))
    cand, cos, lex = candidates(cat, q, text, k, mask, params, threads=threads, lexical_result=lexical_result)
    if not personalised:
        return fuse(cand, cos, lex, params, k)
    return fuse(cand, cos, lex, params, k, cat.vectors(cand) @ np.asarray(user, np.float32))
