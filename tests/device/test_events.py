"""The event store's privacy promises (issue 13, finding 9): files private whatever the umask, and
``forget`` leaves no copy in the WAL even when another connection is reading."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from shelfrank.device.events import EventStore
from shelfrank.errors import EventStoreBusyError

SECRET = "shopper-7f3a-secret"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)  # the usual default; systemd's UMask= is not there to help
    yield
    os.umask(old)


def test_state_folder_and_database_files_are_private_whatever_the_umask(tmp_path, umask_022):
    db = tmp_path / "state" / "events.sqlite"
    store = EventStore(db)
    try:
        store.record(SECRET, "SKU-1", "view")  # WAL mode: -wal and -shm exist while it is open
        assert _mode(db.parent) == 0o700
        for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert f.exists() and _mode(f) == 0o600, (f, oct(_mode(f)))
    finally:
        store.close()


def test_an_existing_world_readable_state_is_made_private(tmp_path, umask_022):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    db = state / "events.sqlite"
    EventStore(db).close()
    os.chmod(db, 0o644)  # what SQLite itself creates under umask 022 (an older runtime left it so)
    os.chmod(state, 0o755)
    store = EventStore(db)
    try:
        store.record(SECRET, "SKU-1", "view")
        assert (_mode(state), _mode(db), _mode(Path(f"{db}-wal"))) == (0o700, 0o600, 0o600)
    finally:
        store.close()


def _holds_secret(db: Path) -> list[str]:
    return [p.name for p in (db, Path(f"{db}-wal")) if p.exists() and SECRET.encode() in p.read_bytes()]


def test_forget_with_another_reader_open_says_so_and_truncates_the_wal_once_it_ends(tmp_path):
    db = tmp_path / "state" / "events.sqlite"
    store = EventStore(db, checkpoint_timeout=0.3)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        for i in range(20):
            store.record(SECRET, f"SKU-{i}", "cart")
        store.record("someone-else", "SKU-1", "view")
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (21,)  # a snapshot, held open

        started = time.monotonic()
        with pytest.raises(EventStoreBusyError, match=r"events\.sqlite-wal: .*deleted.*another connection"):
            store.forget(SECRET)
        assert time.monotonic() - started < 2.0  # bounded by checkpoint_timeout, not the 5 s busy timeout
        assert store.history(SECRET) == []  # deleted: no answer sees them any more
        assert "events.sqlite-wal" in _holds_secret(db)  # why it said so: the reader pins the old frames

        reader.execute("ROLLBACK")
        reader.close()
        store.record("someone-else", "SKU-2", "view")  # the next write truncates the WAL
        assert _holds_secret(db) == []
        assert store.forget(SECRET) == 0  # and forget again is quiet
    finally:
        reader.close()
        store.close()
    assert _holds_secret(db) == []


def test_forget_without_other_readers_leaves_no_copy(tmp_path):
    db = tmp_path / "state" / "events.sqlite"
    store = EventStore(db)
    reader = sqlite3.connect(db)  # open, but not inside a read transaction: no obstacle
    try:
        store.record(SECRET, "SKU-1", "purchase")
        assert store.forget(SECRET) == 1
        assert _holds_secret(db) == []
    finally:
        reader.close()
        store.close()


def test_close_retries_a_pending_truncation(tmp_path):
    db = tmp_path / "state" / "events.sqlite"
    store = EventStore(db, checkpoint_timeout=0.1)
    reader = sqlite3.connect(db, isolation_level=None)
    store.record(SECRET, "SKU-1", "view")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM events").fetchone()
    with pytest.raises(EventStoreBusyError):
        store.forget(SECRET)
    reader.execute("ROLLBACK")
    reader.close()
    store.close()
    assert _holds_secret(db) == []
