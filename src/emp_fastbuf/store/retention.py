"""Retention: expiring rows older than the retention window, then shrinking a store larger
than its size limit, whole chunks oldest first (``docs/store-schema.md``)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from emp_fastbuf.store import schema
from emp_fastbuf.store.connection import StoreConnection
from emp_fastbuf.store.schema import METRICS, RECORDS, TABLES

DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_MAX_BYTES = 2 << 30
# Size retention deletes down to this share of max_bytes, so that it does not run on
# every call once the store is full.
_SIZE_LOW_WATER = 0.9


class Retention(StoreConnection):
    """The retention part of ``Store``: ``enforce()``, which its owner calls from time to
    time (not on every ingest)."""

    retention_s: float
    max_bytes: int

    def size_bytes(self) -> int:
        """Bytes the database's pages use (free pages excluded; the WAL file not counted)."""
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        c = self._conn
        page_size = int(c.execute("PRAGMA page_size").fetchone()[0])
        pages = int(c.execute("PRAGMA page_count").fetchone()[0])
        free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    def enforce(self, now_ns: int) -> int:
        """Apply retention: delete records older than ``retention_s``, then, while the
        database is larger than ``max_bytes``, the oldest chunks of records (down to 90% of
        ``max_bytes``). Returns how many records and metric updates were deleted."""
        self._refuse_readonly()
        cutoff = now_ns - int(self.retention_s * 1_000_000_000)
        deleted = 0
        with self._lock:
            while True:  # a bounded number of chunks per transaction
                n = self._transaction(self._expire_some, cutoff)
                if n < 0:
                    break
                deleted += n
            if self._used_bytes() > self.max_bytes:
                deleted += self._shrink_locked()
            if deleted:
                self._transaction(self._drop_dangling_traces)
                # One step of this pragma frees one page; executescript steps it to the end
                # (execute() would stop after the first).
                self._conn.executescript("PRAGMA incremental_vacuum")
                # PASSIVE: never wait for readers; the next checkpoint finishes the job.
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return deleted

    def _transaction(self, work: Callable[..., int], *args: Any) -> int:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            n = work(*args)
            self._conn.execute("COMMIT")
        except BaseException:
            schema.rollback(self._conn)
            raise
        return n

    def _expire_some(self, cutoff: int) -> int:
        """Delete rows older than ``cutoff`` from up to 1,000 chunks that hold any; -1 when
        no chunk does. A chunk that also holds newer rows keeps them, with its ``min_time``
        raised to ``cutoff``."""
        chunks = self._conn.execute(
            "SELECT rowid, tbl, first_id, last_id, max_time FROM chunks WHERE min_time < ?"
            " ORDER BY min_time LIMIT 1000",
            (cutoff,),
        ).fetchall()
        if not chunks:
            return -1
        deleted = 0
        for rowid, tbl, first, last, max_time in chunks:
            if max_time < cutoff:
                deleted += self._delete_chunk(rowid, tbl, first, last)
            else:
                sql = f"DELETE FROM {TABLES[tbl]} WHERE id BETWEEN ? AND ? AND time_unix_nano < ?"
                deleted += self._conn.execute(sql, (first, last, cutoff)).rowcount
                self._conn.execute(
                    "UPDATE chunks SET min_time = ? WHERE rowid = ?", (cutoff, rowid)
                )
        return deleted

    def _drop_dangling_traces(self) -> int:
        # Ids only grow: trace chunks below the oldest record left point at nothing.
        return int(
            self._conn.execute(
                "DELETE FROM trace_chunks WHERE last_id < coalesce((SELECT min(id) FROM"
                f" records), (SELECT next_id FROM sequences WHERE tbl = {RECORDS}))"
            ).rowcount
        )

    def _row_estimate(self) -> int:
        # Ids only grow and retention deletes the oldest, so the id ranges are close to
        # the row counts, without count(*)'s full scan.
        total = 0
        for table in TABLES:
            lo, hi = self._conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
            total += 0 if lo is None else int(hi) - int(lo) + 1
        return total

    def _shrink_locked(self) -> int:
        target = self.max_bytes * _SIZE_LOW_WATER
        deleted = 0
        while (used := self._used_bytes()) > target:
            rows = self._row_estimate()
            if rows == 0:
                break  # nothing left to delete
            # Delete about as many of the oldest rows as the excess is worth, then measure
            # again: freed index pages do not follow row counts exactly.
            want = max(100, math.ceil((used - target) / (used / rows)))
            n = self._transaction(self._delete_oldest, want)
            if n <= 0:
                break
            deleted += n
        return deleted

    def _delete_oldest(self, want: int) -> int:
        """Delete whole chunks, oldest (by newest row) first, until about ``want`` rows are
        gone; -1 when there are no chunks left."""
        cursors = [
            self._conn.execute(
                "SELECT max_time, rowid, tbl, first_id, last_id FROM chunks WHERE tbl = ?"
                " ORDER BY max_time, rowid",
                (tbl,),
            )
            for tbl in (RECORDS, METRICS)
        ]
        picked: list[tuple[int, int, int, int]] = []
        planned = 0
        for _t, rowid, tbl, first, last in heapq.merge(*cursors):
            picked.append((rowid, tbl, first, last))
            planned += last - first + 1
            if planned >= want:
                break
        for cur in cursors:
            cur.close()
        if not picked:
            return -1
        deleted = 0
        for rowid, tbl, first, last in picked:
            deleted += self._delete_chunk(rowid, tbl, first, last)
        return deleted

    def _delete_chunk(self, rowid: int, tbl: int, first: int, last: int) -> int:
        """Delete a whole chunk: its rows and its entry. Returns how many rows went."""
        n = self._conn.execute(
            f"DELETE FROM {TABLES[tbl]} WHERE id BETWEEN ? AND ?", (first, last)
        ).rowcount
        self._conn.execute("DELETE FROM chunks WHERE rowid = ?", (rowid,))
        return int(n)
