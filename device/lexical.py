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

Detection is at open and per feature: a catalog written without FTS5, or an SQLite here without
the module, gives ``available = False`` with a logged reason (search falls back to dense-only),
never an error.
"""

from __future__ import annotations

import bisect
import logging
import re
import sqlite3
import threading
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

FTS_TABLE = "items_fts"
#: BM25 weight of each FTS column (title, brand, category): the title names the product
COLUMN_WEIGHTS = (1.0, 0.5, 0.3)
#: the tokenizer both sides use; the query side splits words by the same rule (``terms``)
TOKENIZE = "unicode61 remove_diacritics 2"
_WORD = re.compile(r"[^\W_]+")
_CREATE = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(title, brand, category, "
    f"content='items', content_rowid='row', tokenize='{TOKENIZE}')"
)


def terms(text: str) -> list[str]:
    """The words of ``text`` as the FTS tokenizer splits them (letters and digits), lowercased.

    Only these words ever reach an FTS ``MATCH``, each quoted: FTS syntax in a query (quotes, ``*``,
    ``NEAR``, ``-``, parentheses, ``:``) is punctuation here, never query syntax.
    """
    return _WORD.findall(text.lower())


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
        as you type). Ties keep row order.
        """
        if not self.available or not words:
            return []
        quoted = [f'"{w}"' for w in words]  # letters and digits only (terms()): nothing to escape
        if prefix_last:
            quoted[-1] += "*"
        match = (" OR " if any_word else " ").join(quoted)
        weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
        sql = (
            f"SELECT rowid, bm25({FTS_TABLE}, {weights}) AS s FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? "
            "ORDER BY s, rowid LIMIT ?"
        )
        assert self._con is not None
        with self._lock:
            got = self._con.execute(sql, (match, -1 if limit is None else int(limit))).fetchall()
        return [(int(r), -float(s)) for r, s in got]

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
                    vocab = dict(self._con.execute("SELECT term, doc FROM temp.items_vocab").fetchall())
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
