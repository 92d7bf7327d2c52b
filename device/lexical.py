"""Lexical retrieval in the catalog's own SQLite: FTS5 (BM25) over the ``items`` table.

One owner for the FTS layout: :func:`build_fts` writes it (``catalog_files.write_catalog_dir``,
which export, publish and sync all write catalog folders through) and :class:`LexicalIndex`
reads it on the device.

``items_fts`` is an external-content FTS5 table over ``items`` (title, brand, category; no copy of
the text, no item_id column: rowid = ``items.row``), tokenised by ``unicode61`` without
diacritics. Typo tolerance corrects a query word against the index's own vocabulary (the
``fts5vocab`` view of ``items_fts``, read once per catalog): one edit (an adjacent swap, a dropped,
doubled or substituted letter) away from a catalog word. That needs no extra table and works on
SQLite 3.31 (JetPack 5); a trigram table was measured against it and lost (docs/search.md).

Scoring. FTS5's ``bm25()`` first counts, for each query word, every item holding it (its whole
doclist: ~0.04 µs an item, ~0.7 ms for a word 18k of 100k items hold, growing with the catalog),
although the catalog's vocabulary (read once) already knows those counts. An all-words query
therefore asks FTS5 for its rows only (the doclists' intersection, tens of µs) and, when scoring
them here costs less than that count would (at most :data:`OWN_SCORE_MAX_ROWS` rows), scores them
by the same formula (:func:`bm25`: k1 1.2, b 0.75, the column weights) from their text; more rows,
or an any-word query (its words are the rare ones), go to ``bm25()`` itself. A test holds the two
equal (a typed prefix that more than :data:`PREFIX_COUNT_MAX` items' words begin takes the
vocabulary's upper bound as its count).

Detection is at open and per feature: a catalog written without FTS5, or an SQLite here without
the module, gives ``available = False`` with a logged reason (search falls back to dense-only),
never an error.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import sqlite3
import threading
import unicodedata
import weakref
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

FTS_TABLE = "items_fts"
#: BM25 weight of each FTS column (title, brand, category): the title names the product
COLUMN_WEIGHTS = (1.0, 0.5, 0.3)
#: the tokenizer both sides use; the query side splits words by the same rule (``terms``)
TOKENIZE = "unicode61 remove_diacritics 2"
#: BM25's parameters, FTS5's own
K1, B = 1.2, 0.75
#: an all-words query's rows are scored here (not by ``bm25()``) when FTS5 finds at most this many
OWN_SCORE_MAX_ROWS = 256
#: ... and always when it finds at most this many
OWN_SCORE_MIN_ROWS = 16
#: a typed prefix's document count is counted exactly up to this many items (else the upper bound)
PREFIX_COUNT_MAX = 5000
_WORD = re.compile(r"[^\W_]+")


def _fold_table() -> dict[int, str]:
    """Latin letters with diacritics → their ASCII letter, as ``remove_diacritics 2`` folds them
    (Latin-1 to Latin Extended-B and Latin Extended Additional: é, ñ, ł, ế, İ; the long s as s);
    other scripts untouched (Greek keeps its accents there too; a Hangul syllable stays whole)."""
    out = {0x17F: "s"}
    for c in (*range(0xC0, 0x250), *range(0x1E00, 0x1F00)):
        base = "".join(ch for ch in unicodedata.normalize("NFD", chr(c)) if not unicodedata.combining(ch))
        if base != chr(c) and len(base) == 1 and base.isascii():
            out[c] = base
    return out


_FOLD = _fold_table()
_CREATE = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(title, brand, category, "
    f"content='items', content_rowid='row', tokenize='{TOKENIZE}')"
)


def terms(text: str) -> list[str]:
    """The words of ``text`` as the FTS tokenizer splits them (letters and digits), lowercased.

    Only these words ever reach an FTS ``MATCH``, each quoted: FTS syntax in a query (quotes, ``*``,
    ``NEAR``, ``-``, parentheses, ``:``) is punctuation here, never query syntax.
    """
    return _WORD.findall(text.translate(_FOLD).lower())


def bm25(
    texts: Sequence[Sequence[str | None]],
    words: Sequence[str],
    df: Sequence[int],
    n_rows: int,
    avgdl: float,
    *,
    prefix_last: bool = False,
) -> list[float]:
    """FTS5's ``bm25()`` (negated: higher is better) of each row given its column texts (title,
    brand, category), for the query ``words`` (:func:`terms`), ``df[i]`` the items holding word i
    (its IDF), over an index of ``n_rows`` rows of ``avgdl`` tokens on average."""
    idf = []
    for n_hit in df:
        v = math.log((n_rows - n_hit + 0.5) / (n_hit + 0.5))
        idf.append(v if v > 0 else 1e-6)
    whole = [(i, w) for i, w in enumerate(words) if not (prefix_last and i == len(words) - 1)]
    wt, wb, wc = COLUMN_WEIGHTS
    out = []
    for title, brand, category in texts:
        t, b, c = terms(title or ""), terms(brand) if brand else [], terms(category) if category else []
        norm = K1 * (1 - B + B * (len(t) + len(b) + len(c)) / avgdl)
        s = 0.0
        for i, w in whole:
            f = wt * t.count(w) + wb * b.count(w) + wc * c.count(w)
            s += idf[i] * f * (K1 + 1) / (f + norm)
        if prefix_last:
            p = words[-1]
            f = wt * sum(x.startswith(p) for x in t) + wb * sum(x.startswith(p) for x in b)
            f += wc * sum(x.startswith(p) for x in c)
            s += idf[-1] * f * (K1 + 1) / (f + norm)
        out.append(s)
    return out


def build_fts(con: sqlite3.Connection) -> str | None:
    """Create and fill ``items_fts`` over the ``items`` table of an open, writable catalog database.

    Returns None, or the reason it could not (this SQLite lacks FTS5; logged): the catalog is still
    valid, and a device serves it dense-only.
    """
    try:
        con.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
        con.execute(_CREATE)
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('rebuild')")
        # one b-tree per level instead of the incremental segments of the rebuild: smaller, faster
        con.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('optimize')")
    except sqlite3.OperationalError as e:
        reason = f"SQLite {sqlite3.sqlite_version} cannot build an FTS5 table ({e})"
        logger.warning("catalog written without lexical search: %s; devices search it dense-only", reason)
        return reason
    return None


def _probe(con: sqlite3.Connection) -> str | None:
    """None when ``items_fts`` answers a query here, else why not."""
    try:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (FTS_TABLE,)).fetchone()
    except sqlite3.Error as e:
        return f"items.sqlite unreadable ({e})"
    if has is None:
        return "the catalog has no FTS index (written by an older shelfrank or an SQLite without FTS5)"
    try:
        con.execute(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH '\"a\"' LIMIT 1").fetchall()
    except sqlite3.Error as e:  # "no such module: fts5"
        return f"SQLite {sqlite3.sqlite_version} here cannot read the FTS5 index ({e})"
    return None


class LexicalIndex:
    """BM25 retrieval over one catalog version's ``items_fts``; safe to share between threads.

    One connection per catalog (read-only, immutable), shared by the threads under a lock: an FTS
    query takes well under a millisecond to a few milliseconds, so the lock costs less than a
    connection per thread would.
    """

    def __init__(self, db: str | Path) -> None:
        self.db = Path(db)
        self._lock = threading.Lock()
        self._vocab: dict[str, int] | None = None
        self._sorted: list[str] = []
        self._stats: tuple[int, float] | None = None  # (rows, tokens per row) of the index
        self._con: sqlite3.Connection | None = None
        try:
            self._con = sqlite3.connect(f"file:{self.db}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            self.reason: str | None = f"items.sqlite unreadable ({e})"
        else:
            weakref.finalize(self, self._con.close)  # closed with the catalog that holds it
            self.reason = _probe(self._con)
        if self.reason is not None:
            logger.warning("%s: lexical search unavailable, search is dense-only: %s", self.db, self.reason)

    @property
    def available(self) -> bool:
        return self.reason is None

    def query(
        self, words: list[str], *, limit: int | None, prefix_last: bool = False, any_word: bool = False
    ) -> list[tuple[int, float]]:
        """(row, score) best first for the FTS query over ``words`` (already :func:`terms`), score =
        −BM25 (higher is better), at most ``limit`` rows (None: all). ``any_word``: rows with any of
        the words (else all of them); ``prefix_last``: the last word also matches as a prefix (search
        as you type). Ties keep row order. An all-words query of few rows is scored here, the rest by
        FTS5's ``bm25()`` (the module's docstring): the same scores.
        """
        if not self.available or not words:
            return []
        quoted = [f'"{w}"' for w in words]  # letters and digits only (terms()): nothing to escape
        if prefix_last:
            quoted[-1] += "*"
        match = (" OR " if any_word else " ").join(quoted)
        assert self._con is not None
        if not any_word:
            # scored here while that costs less than bm25()'s counting pass would (~3 µs a row
            # here against ~0.04 µs per item holding a query word there)
            per_row = 75  # items counted there per row scored here, at equal cost
            vocab = self.vocabulary()
            df = [vocab.get(w, 0) for w in words]  # a typed prefix: the vocabulary's upper bound
            if prefix_last:
                df[-1] = self.prefix_docs(words[-1], max(PREFIX_COUNT_MAX, per_row * OWN_SCORE_MAX_ROWS))
            most = min(OWN_SCORE_MAX_ROWS, max(OWN_SCORE_MIN_ROWS, sum(df) // per_row))
            sql = f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? LIMIT ?"
            with self._lock:
                rows = [r for (r,) in self._con.execute(sql, (match, most + 1)).fetchall()]
            if len(rows) <= most:
                return self._own_scores(rows, words, df, prefix_last, limit)
        weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
        sql = (
            f"SELECT rowid, bm25({FTS_TABLE}, {weights}) AS s FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? "
            "ORDER BY s, rowid LIMIT ?"
        )
        with self._lock:
            got = self._con.execute(sql, (match, -1 if limit is None else int(limit))).fetchall()
        return [(int(r), -float(s)) for r, s in got]

    def _own_scores(
        self, rows: list[int], words: list[str], df: list[int], prefix_last: bool, limit: int | None
    ) -> list[tuple[int, float]]:
        """:func:`bm25` of ``rows``, best first; ``df``: each word's document count from the
        vocabulary (a typed prefix's as its upper bound, made exact here when small enough)."""
        if not rows:
            return []
        if prefix_last:
            df = [*df[:-1], self._prefix_count(words[-1], df[-1])]
        assert self._con is not None and self._stats is not None
        marks = ",".join("?" * len(rows))
        with self._lock:
            got = self._con.execute(f"SELECT row, title, brand, category FROM items WHERE row IN ({marks})", rows)
            got = got.fetchall()
        n_rows, avgdl = self._stats
        scores = bm25([g[1:] for g in got], words, df, n_rows, avgdl, prefix_last=prefix_last)
        ranked = sorted(zip(scores, (g[0] for g in got), strict=True), key=lambda x: (-x[0], x[1]))
        return [(int(r), float(s)) for s, r in ranked[:limit]]

    def _prefix_count(self, p: str, bound: int) -> int:
        """The items holding a word that starts with ``p`` (what ``bm25()`` takes as a prefix's
        document count): counted by FTS5 when the vocabulary's upper bound (``prefix_docs``) is at
        most :data:`PREFIX_COUNT_MAX`, else that bound (a prefix so common weighs ~nothing either way)."""
        if bound > PREFIX_COUNT_MAX:
            return bound
        assert self._con is not None
        with self._lock:
            sql = f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?"
            (n,) = self._con.execute(sql, (f'"{p}"*',)).fetchone()
        return int(n)

    def vocabulary(self) -> dict[str, int]:
        """Every word of the index and how many items hold it (read once, then cached)."""
        if self._vocab is None:
            vocab: dict[str, int] = {}
            if self.available:
                assert self._con is not None
                with self._lock:
                    # a TEMP view table: nothing is written to the (immutable) catalog file
                    self._con.execute(
                        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.items_vocab USING fts5vocab(main, {FTS_TABLE}, row)"
                    )
                    got = self._con.execute("SELECT term, doc, cnt FROM temp.items_vocab").fetchall()
                    (n_rows,) = self._con.execute(f"SELECT count(*) FROM {FTS_TABLE}_docsize").fetchone()
                vocab = {t: d for t, d, _ in got}
                self._stats = (int(n_rows), sum(c for _, _, c in got) / max(int(n_rows), 1))
            self._sorted = sorted(vocab)
            self._vocab = vocab
        return self._vocab

    def has_prefix(self, p: str) -> bool:
        """Whether some word of the index is longer than ``p`` and starts with it."""
        words = self._sorted if self._vocab is not None else sorted(self.vocabulary())
        i = bisect.bisect_right(words, p)
        return i < len(words) and words[i].startswith(p)

    def prefix_docs(self, p: str, cap: int) -> int:
        """How many items hold a word starting with ``p``, as the sum over those words (an upper
        bound), counted until it passes ``cap``: what an any-word query's ``p*`` costs."""
        vocab = self.vocabulary()
        words = self._sorted
        total = 0
        for i in range(bisect.bisect_left(words, p), len(words)):
            w = words[i]
            if not w.startswith(p):
                break
            total += vocab[w]
            if total > cap:
                break
        return total

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
