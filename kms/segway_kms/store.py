"""Durable key-service state in SQLite (WAL, synchronous=FULL): what was acknowledged survives kill -9.

One connection guarded by one lock; every mutation runs in a single transaction together with its audit
entry, so the state and the audit chain can never disagree after a crash. One process at a time: the
store holds an exclusive lock on `<database>.lock` while open, so the daemon's in-memory key cache
(keyring.py) and the order of the audit anchor's extends cannot be undercut by a second daemon on the
same state directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from pathlib import Path

from segway_kms.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
  name TEXT PRIMARY KEY, tenant TEXT NOT NULL, algorithm TEXT NOT NULL, usage TEXT NOT NULL,
  state TEXT NOT NULL, primary_version INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS key_versions (
  name TEXT NOT NULL, version INTEGER NOT NULL, ref BLOB NOT NULL, public_der BLOB NOT NULL,
  state TEXT NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS certificates (
  serial TEXT PRIMARY KEY, subject TEXT NOT NULL, profile TEXT NOT NULL, not_after INTEGER NOT NULL,
  der BLOB NOT NULL, revoked_at INTEGER, reason TEXT);
CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, entry TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: str | Path):
        self._lock_fd = _lock_exclusively(Path(f"{path}.lock"))
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.lock = threading.RLock()
        self._after: list | None = None

    @contextlib.contextmanager
    def transaction(self):
        """Serialised write transaction; commits on success, rolls back on any exception.

        Callbacks registered with after_commit() run once the commit is durable, still under the lock
        (so in commit order); a failing callback is logged, the committed transaction stands.
        """
        with self.lock:
            self._after = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._after = None
                raise
            self._db.execute("COMMIT")
            callbacks, self._after = self._after, None
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - the data is committed; the callback's owner recovers
                    log.exception("after-commit action failed")

    def after_commit(self, callback) -> None:
        if self._after is None:
            raise RuntimeError("after_commit() outside a transaction")
        self._after.append(callback)

    def query(self, sql: str, args=()) -> list[tuple]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def get_setting(self, key: str) -> bytes | None:
        rows = self.query("SELECT v FROM settings WHERE k = ?", (key,))
        return rows[0][0] if rows else None

    @staticmethod
    def put_setting(db, key: str, value: bytes) -> None:
        db.execute("INSERT OR REPLACE INTO settings (k, v) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self.lock:
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = -1


def _lock_exclusively(path: Path) -> int:
    """An open descriptor holding flock(LOCK_EX) on path; ConfigError if another process holds it.

    flock's lock belongs to the open file, so a second Store in the same process is refused as well
    (fcntl's record locks would let it through). The kernel drops it when the process dies, kill -9 too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"{path.parent} is in use by another process (another segway-kmsd on this state "
                          "directory?)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
