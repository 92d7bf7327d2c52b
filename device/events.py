"""Shopper events on the device: SQLite in WAL mode, durable before ``record`` returns.

The database lives in the state folder so it outlives re-flashing. ``forget`` deletes a
shopper's rows with ``secure_delete`` on (freed pages are zeroed) and truncates the WAL, so no
copy of their events stays in the files; when another connection's read keeps the WAL alive it
says so (:class:`~shelfrank.errors.EventStoreBusyError`) and the store truncates it at its next
write or on close. Shopper history is private whatever the umask: the state folder is created
0700 and ``events.sqlite`` (whose mode SQLite copies to ``-wal`` and ``-shm``) 0600.

Impressions (which items a surface showed a shopper) live in the same file and are joined with
clicks on the device: a ``click`` on an item shown to the same shopper on a surface within
``click_window`` seconds before it counts for that surface (the latest such impression, each
impression at most once). The per-surface totals (items shown, clicks) carry no shopper and
outlive ``forget``; the impression rows themselves are the shopper's, deleted by ``forget`` and
dropped once they are older than the window (no click can join them any more).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shelfrank.device.text import ACTION_IDS, ACTIONS
from shelfrank.errors import EventStoreBusyError, InputError

logger = logging.getLogger(__name__)

STATE_DIR_MODE = 0o700
EVENTS_FILE_MODE = 0o600  # SQLite gives -wal and -shm the database file's mode
SIDE_FILES = ("-wal", "-shm", "-journal")
#: a surface names where items were shown ("search", "home_row"): a short label, never a shopper
SURFACE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
#: distinct surfaces counted, OTHER_SURFACE included: impressions on any further one count for it
MAX_SURFACES = 32
OTHER_SURFACE = "other"
#: seconds after an impression in which a click on the item counts for its surface
CLICK_WINDOW = 1800.0
_SURFACE = re.compile(SURFACE_PATTERN)


@dataclass(frozen=True)
class Event:
    item_id: str
    action: str
    ts: float


class EventStore:
    """Bounded per-user event history. Thread-safe: one connection guarded by a lock.

    The histories of the most recently active users (``cache_users``) are also kept in memory,
    written through by ``record``/``forget``, so a query after an event reads no SQLite. Like the
    generation counter, the cache knows this process's writes only: one process owns a state
    folder's events (the library or ``shelfrank serve``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_history: int = 200,
        cache_users: int = 1024,
        checkpoint_timeout: float = 2.0,
        click_window: float = CLICK_WINDOW,
    ) -> None:
        if max_history < 1:
            raise InputError("max_history must be >= 1")
        if not click_window > 0:
            raise InputError(f"click_window must be > 0 seconds, got {click_window!r}")
        self.click_window = float(click_window)
        self.path = Path(path)
        _private_files(self.path)
        self.max_history = int(max_history)
        self.checkpoint_timeout = float(checkpoint_timeout)
        self._wal_pending = False  # a forget could not truncate the WAL yet: retried at the next write
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives power loss too
        self._con.execute("PRAGMA secure_delete=ON")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
            "item_id TEXT NOT NULL, action INTEGER NOT NULL, ts REAL NOT NULL)"
        )
        self._con.execute("CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq)")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS impressions (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
            "item_id TEXT NOT NULL, surface TEXT NOT NULL, ts REAL NOT NULL, clicked INTEGER NOT NULL DEFAULT 0)"
        )
        self._con.execute("CREATE INDEX IF NOT EXISTS impressions_join ON impressions (user_id, item_id, ts)")
        self._con.execute("CREATE INDEX IF NOT EXISTS impressions_ts ON impressions (ts)")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS surfaces (surface TEXT PRIMARY KEY, shown INTEGER NOT NULL, "
            "clicks INTEGER NOT NULL)"
        )
        self._surfaces = {r[0] for r in self._con.execute("SELECT surface FROM surfaces")}
        self._generation: dict[str, int] = {}
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()  # user -> history, oldest first
        self._cache_users = int(cache_users)

    def record(self, user_id: str, item_id: str, action: str, ts: float | None = None) -> None:
        _check_user(user_id)
        if action not in ACTION_IDS:
            raise InputError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        ts = _check_ts(ts)
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.execute(
                    "INSERT INTO events (user_id, item_id, action, ts) VALUES (?,?,?,?)",
                    (user_id, item_id, ACTION_IDS[action], ts),
                )
                if action == "click":
                    self._join_click(user_id, item_id, ts)
                self._con.execute(
                    "DELETE FROM events WHERE user_id = ? AND seq <= (SELECT seq FROM events WHERE user_id = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (user_id, user_id, self.max_history),
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            if self._wal_pending:
                self._truncate_wal(0.0)
            self._generation[user_id] = self._generation.get(user_id, 0) + 1
            cached = self._recent.get(user_id)
            if cached is not None:  # a new list: callers may hold the old one
                self._recent[user_id] = [*cached[-(self.max_history - 1) :], Event(item_id, action, ts)]

    def _join_click(self, user_id: str, item_id: str, ts: float) -> None:
        """In record's transaction: the click counts for the latest unclicked impression it follows."""
        row = self._con.execute(
            "SELECT seq, surface FROM impressions WHERE user_id = ? AND item_id = ? AND ts BETWEEN ? AND ? "
            "AND clicked = 0 ORDER BY ts DESC, seq DESC LIMIT 1",
            (user_id, item_id, ts - self.click_window, ts),
        ).fetchone()
        if row is not None:
            self._con.execute("UPDATE impressions SET clicked = 1 WHERE seq = ?", (row[0],))
            self._con.execute("UPDATE surfaces SET clicks = clicks + 1 WHERE surface = ?", (row[1],))

    def record_impression(self, user_id: str, item_ids: Sequence[str], surface: str, ts: float | None = None) -> str:
        """Store that ``item_ids`` were shown to the shopper on ``surface`` (durable before it returns).

        Returns the surface they count for: ``surface``, or ``"other"`` once :data:`MAX_SURFACES`
        distinct surfaces are counted.

        Raises:
            InputError: an empty user id, a surface not matching :data:`SURFACE_PATTERN`, no item
                ids or one that is not a non-empty string, or a bad ``ts``.
        """
        _check_user(user_id)
        if not isinstance(surface, str) or not _SURFACE.fullmatch(surface):
            raise InputError(
                f"surface must be a short lowercase name matching {SURFACE_PATTERN} (e.g. 'search'), got {surface!r}"
            )
        ids = [item_ids] if isinstance(item_ids, str) else list(item_ids)
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise InputError("item_ids must be a non-empty list of item ids")
        ts = _check_ts(ts)
        with self._lock:
            if surface not in self._surfaces and len(self._surfaces | {OTHER_SURFACE}) >= MAX_SURFACES:
                surface = OTHER_SURFACE
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.executemany(
                    "INSERT INTO impressions (user_id, item_id, surface, ts) VALUES (?,?,?,?)",
                    [(user_id, i, surface, ts) for i in ids],
                )
                self._con.execute(
                    "INSERT INTO surfaces (surface, shown, clicks) VALUES (?, ?, 0) "
                    "ON CONFLICT (surface) DO UPDATE SET shown = shown + excluded.shown",
                    (surface, len(ids)),
                )
                # rows no click at this time or later can join any more: the table stays window-sized
                self._con.execute("DELETE FROM impressions WHERE ts < ?", (ts - self.click_window,))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._surfaces.add(surface)
        return surface

    def click_through(self) -> dict[str, tuple[int, int]]:
        """(items shown, clicks joined) per surface, since the state folder was made."""
        with self._lock:
            rows = self._con.execute("SELECT surface, shown, clicks FROM surfaces").fetchall()
        return {s: (int(n), int(c)) for s, n, c in rows}

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """Events oldest first (the newest ``limit`` when given). Treat the list as read-only."""
        _check_user(user_id)
        with self._lock:
            events = self._recent.get(user_id)
            if events is None:
                rows = self._con.execute(
                    "SELECT item_id, action, ts FROM events WHERE user_id = ? ORDER BY seq DESC LIMIT ?",
                    (user_id, self.max_history),
                ).fetchall()
                events = [Event(i, ACTIONS[a], t) for i, a, t in reversed(rows)]
                self._recent[user_id] = events
                if len(self._recent) > self._cache_users:
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(user_id)
        return events if limit is None or len(events) <= limit else events[len(events) - int(limit) :]

    def generation(self, user_id: str) -> int:
        """Changes each time the user's history changes (cache key for the user vector)."""
        with self._lock:
            return self._generation.get(user_id, 0)

    def forget(self, user_id: str) -> int:
        """Delete every event of ``user_id`` and leave no copy in the database or WAL files.

        Raises:
            EventStoreBusyError: the rows are deleted (history and recommendations no longer see
                them), but another connection's read transaction kept old copies in the WAL for
                ``checkpoint_timeout`` seconds; the store truncates it at its next write or on
                close, and calling ``forget`` again retries now.
        """
        _check_user(user_id)
        with self._lock:
            n = self._con.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            self._con.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,))
            self._generation[user_id] = self._generation.get(user_id, 0) + 1
            self._recent.pop(user_id, None)
            if not self._truncate_wal(self.checkpoint_timeout):
                raise EventStoreBusyError(
                    f"{self.path}-wal: the shopper's events are deleted, but another connection to {self.path} "
                    f"is reading an older snapshot, so their old copies stay in the WAL until it ends; close "
                    "that reader (a sqlite3 shell, a backup) and call forget again (the store also retries at "
                    "its next write and on close)"
                )
        return n

    def _truncate_wal(self, timeout: float) -> bool:
        """Checkpoint and truncate the WAL, waiting up to ``timeout`` s for readers; True when done."""
        self._con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            busy, _, _ = self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._con.execute("PRAGMA busy_timeout = 5000")  # sqlite3.connect's default, for writes
        self._wal_pending = busy != 0
        return busy == 0

    def close(self) -> None:
        with self._lock:
            if self._wal_pending and not self._truncate_wal(self.checkpoint_timeout):
                logger.warning("%s-wal: could not truncate after a forget (a reader is still open)", self.path)
            self._con.close()


def _private_files(db: Path) -> None:
    """The state folder 0700 and the database 0600 (and its side files), whatever the umask."""
    folder = db.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=STATE_DIR_MODE, exist_ok=True)
        os.chmod(folder, STATE_DIR_MODE)  # mkdir's mode is masked by the umask
    elif stat.S_IMODE(folder.stat().st_mode) & 0o077:
        try:  # created by someone else (flash, an older runtime): it holds shopper history
            os.chmod(folder, STATE_DIR_MODE)
        except PermissionError:
            logger.warning("%s: cannot make the state folder private (mode 0700): not its owner", folder)
    try:  # create it here, not in SQLite (0644 less the umask); never open it: see below
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, EVENTS_FILE_MODE))
    except FileExistsError:
        pass
    # chmod by path only: opening and closing the file would drop this process's SQLite locks on it
    for path in (db, *(Path(f"{db}{side}") for side in SIDE_FILES)):
        try:
            if stat.S_IMODE(path.stat().st_mode) != EVENTS_FILE_MODE:
                os.chmod(path, EVENTS_FILE_MODE)
        except FileNotFoundError:
            pass


def _check_ts(ts: float | None) -> float:
    if ts is None:
        return time.time()
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts:
        raise InputError(f"ts must be a number of seconds, got {ts!r}")
    return float(ts)


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InputError(f"user_id must be a non-empty string, got {user_id!r}")
