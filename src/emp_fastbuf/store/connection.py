"""The store's connection to its file: opening it (checked by ``schema``), the lock every
part takes, and moving a damaged file aside. ``Store`` composes this with its ingest,
retention and query parts, which all work through ``_conn`` under ``_lock``."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from emp_fastbuf.errors import StoreError
from emp_fastbuf.store import schema

# A writer waits this long for another connection's write lock before a write fails.
_BUSY_TIMEOUT_S = 5.0
# The WAL file is cut back to this size after a checkpoint.
_WAL_LIMIT_BYTES = 64 << 20

# (service.name, emp.machine_id, emp.worker_id): a row of ``sources``.
SourceKey = tuple[str | None, str | None, str | None]

log = logging.getLogger("emp_fastbuf.store")


class StoreConnection:
    """One SQLite connection to a store file, for the writer or for a ``readonly`` reader."""

    path: Path
    readonly: bool
    _conn: sqlite3.Connection
    # Re-entered: queries take it inside ``_snapshot()``, which holds it too.
    _lock: threading.RLock
    _source_ids: dict[SourceKey, int]  # the writer's: a source -> its id
    _sources: dict[int, SourceKey]  # a reader's: an id -> its source
    # The connection was closed by a quarantine() that failed: the next ingest opens it.
    _reopen: bool

    def _refuse_readonly(self) -> None:
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly:
            if not path.exists():
                raise StoreError(f"no store at {path}")
            schema.check_header(path)
            uri = path.resolve().as_uri() + "?mode=ro"
            conn = self._connect(uri, uri=True)
            schema.check_schema(conn, path, allow_init=False)
            return conn
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            schema.check_header(path)
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        conn = self._connect(str(path), uri=False)
        try:
            if schema.check_schema(conn, path, allow_init=True):
                schema.init_schema(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # 64 MiB of page cache (the default is 2 MiB): index inserts at ingest rates
            # otherwise keep evicting and re-reading the same pages.
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            conn.close()
            raise schema.db_error(exc, f"cannot open the store at {path}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                target,
                uri=uri,
                isolation_level=None,
                check_same_thread=False,
                timeout=_BUSY_TIMEOUT_S,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
        return conn

    def quarantine(self) -> Path:
        """Move the store file aside, with its ``-wal`` and ``-shm`` files, as
        ``store.sqlite.corrupt-<UTC time>``, and start a new, empty store at the path. For
        a writer whose file turned out damaged (an ingest raised ``StoreDamaged``); says so
        in one ERROR log line. Returns where the old file is now."""
        self._refuse_readonly()
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._source_ids.clear()
            self._sources.clear()
            # Until a new store is open: should this fail, the next ingest opens it again.
            self._reopen = True
            moved = self._move_aside()
            self._conn = self._open()
            self._reopen = False
        log.error(
            "the store %s is damaged: moved it aside to %s and started a new store",
            self.path,
            moved,
        )
        return moved

    def _replace_damaged(self, reason: str) -> sqlite3.Connection:
        moved = self._move_aside()
        conn = self._open()
        log.error("%s; moved it aside to %s and started a new store", reason, moved)
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.path, target)
            # The WAL belongs to the old file: left here, it would be replayed into the new one.
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.replace(side, target.with_name(target.name + suffix))
        except OSError as exc:
            raise StoreError(
                f"cannot move the damaged store {self.path} aside: {exc.strerror}"
            ) from None
        return target

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()
