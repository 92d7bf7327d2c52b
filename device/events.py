"""Shopper events on the device: SQLite in WAL mode, durable before ``record`` returns.

The database lives in the state folder so it outlives re-flashing. ``forget`` deletes a
shopper's rows with ``secure_delete`` on (freed pages are zeroed) and truncates the WAL, so no
copy of their events stays in the files.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from shelfrank.device.text import ACTION_IDS, ACTIONS
from shelfrank.errors import InputError


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

    def __init__(self, path: str | Path, *, max_history: int = 200, cache_users: int = 1024) -> None:
        if max_history < 1:
            raise InputError("max_history must be >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_history = int(max_history)
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
        self._generation: dict[str, int] = {}
        self._recent: OrderedDict[str, list[Event]] = OrderedDict()  # user -> history, oldest first
        self._cache_users = int(cache_users)

    def record(self, user_id: str, item_id: str, action: str, ts: float | None = None) -> None:
        _check_user(user_id)
        if action not in ACTION_IDS:
            raise InputError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if ts is None:
            ts = time.time()
        elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts:
            raise InputError(f"ts must be a number of seconds, got {ts!r}")
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.execute(
                    "INSERT INTO events (user_id, item_id, action, ts) VALUES (?,?,?,?)",
                    (user_id, item_id, ACTION_IDS[action], float(ts)),
                )
                self._con.execute(
                    "DELETE FROM events WHERE user_id = ? AND seq <= (SELECT seq FROM events WHERE user_id = ? "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (user_id, user_id, self.max_history),
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._generation[user_id] = self._generation.get(user_id, 0) + 1
            cached = self._recent.get(user_id)
            if cached is not None:  # a new list: callers may hold the old one
                self._recent[user_id] = [*cached[-(self.max_history - 1) :], Event(item_id, action, float(ts))]

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
        """Delete every event of ``user_id`` and leave no copy in the database or WAL files."""
        _check_user(user_id)
        with self._lock:
            n = self._con.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._generation[user_id] = self._generation.get(user_id, 0) + 1
            self._recent.pop(user_id, None)
        return n

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InputError(f"user_id must be a non-empty string, got {user_id!r}")
