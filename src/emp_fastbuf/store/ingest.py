"""Writing: rows into their tables in one transaction per call, with the chunk index
(``chunks``, ``trace_chunks``) that queries and retention read instead of per-row indexes,
and the back-off after a failed write."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from emp_fastbuf.errors import StoreError
from emp_fastbuf.records import EVENT, LOG, SPAN, Record, Resource
from emp_fastbuf.store import schema
from emp_fastbuf.store.connection import SourceKey, StoreConnection, log
from emp_fastbuf.store.rows import (
    MAX_TIME_UNIX_NANO,
    ROW_EVENT,
    ROW_LOG,
    ROW_METRIC,
    ROW_SPAN,
    Row,
    rows_by_kind,
    text,
)
from emp_fastbuf.store.schema import METRICS, RECORDS

# After a failed write the writer waits this long before trying again, doubling up to the
# maximum (see ``Store.retry_in``).
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 30.0

# Rows go in with their ids (the store hands them out: ``sequences``), so that the chunk
# index can be written before the rows and ids are never reused, even after retention
# empties a table (the ``tail`` cursor relies on that).
# Bound values: the id, the source id, then a row as ``store_row`` builds it.
_INSERT_LOG = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, body, severity_number,"
    " severity_text, trace_id, span_id, attributes, kind)"
    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {LOG})"
)
_INSERT_EVENT = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, name, trace_id, span_id,"
    f" attributes, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {EVENT})"
)
_INSERT_SPAN = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, name, trace_id, span_id,"
    " parent_span_id, start_unix_nano, status_code, status_message, span_kind, attributes,"
    f" events, links, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {SPAN})"
)
_INSERT_METRIC = (
    "INSERT INTO metric_updates (id, source_id, time_unix_nano, job_id, name, instrument, unit,"
    " value, count, sum, min, max, hist_values, bounds, attributes)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ROWS = (_INSERT_LOG, _INSERT_EVENT, _INSERT_SPAN, _INSERT_METRIC)
# Many rows per INSERT statement: a quarter faster than executemany of single rows. 999
# bound values at most, SQLite's lowest variable limit.
_MAX_VARIABLES = 999


def _multi_insert(sql: str) -> tuple[int, str]:
    values = sql[sql.index("VALUES ") + len("VALUES ") :]
    rows = _MAX_VARIABLES // values.count("?")
    return rows, sql + f", {values}" * (rows - 1)


_INSERT_MULTI = tuple(_multi_insert(sql) for sql in _INSERT_ROWS)
# Per row kind: the table, and where the trace id sits in the row (None: no trace).
_ROW_TABLE = (RECORDS, RECORDS, RECORDS, METRICS)
_ROW_TRACE = (5, 3, 3, None)

_time_of = itemgetter(0)
_job_of = itemgetter(1)
_severity_of = itemgetter(3)  # of a log row

Groups = Sequence[tuple[Resource, Sequence[Sequence[Row]]]]


def _chunk_runs(
    rows: Sequence[Row],
    first_id: int,
    kind: int,
    sid: int,
    chunks: list[tuple[Any, ...]],
    traces: list[tuple[bytes, int, int]],
) -> int:
    """Index rows about to get ids ``first_id``...: one ``chunks`` entry per run of rows with
    the same job, one ``trace_chunks`` entry per run with the same trace id. Returns how
    many of the rows have the time ``MAX_TIME_UNIX_NANO`` (a later time, clamped)."""
    tbl = _ROW_TABLE[kind]
    i = first_id
    clamped = 0
    for job, group in groupby(rows, _job_of):
        run = list(group)
        times = list(map(_time_of, run))
        n = len(times)
        # Logs only: lets `logs --level` skip the chunks that cannot match.
        severity = max(map(_severity_of, run)) if kind == ROW_LOG else None
        newest = max(times)
        if newest == MAX_TIME_UNIX_NANO:
            clamped += times.count(newest)
        chunks.append((tbl, i, i + n - 1, min(times), newest, sid, job, severity))
        i += n
    trace_at = _ROW_TRACE[kind]
    if trace_at is None:
        return clamped
    i = first_id
    for trace, same_trace in groupby(rows, itemgetter(trace_at)):
        n = sum(1 for _ in same_trace)
        if trace is not None:
            traces.append((trace, i, i + n - 1))
        i += n
    return clamped


def _bindable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


class Ingest(StoreConnection):
    """The writer's part of ``Store``."""

    # Rows stored with the time MAX_TIME_UNIX_NANO because theirs was later.
    clamped_times: int
    # Ingest calls that failed in a row, and when the writer should try again.
    write_failures: int
    _retry_at: float

    def ingest(self, groups: Sequence[tuple[Resource, Sequence[Record]]]) -> int:
        """Store decoded records, one transaction per call. Returns how many were stored
        (LOG, EVENT, SPAN and METRIC records; other kinds are skipped)."""
        return self.ingest_rows([(resource, rows_by_kind(recs)) for resource, recs in groups])

    def ingest_rows(self, groups: Groups) -> int:
        """Store rows as ``store_row`` (or ``_transcode.store_rows``) builds them: per
        resource, four lists (logs, events, spans, metrics). One transaction per call;
        returns how many rows were stored.

        A write that fails stores nothing and raises: ``StoreBusy`` when another process
        held the write lock for longer than the writer waits (5 s), ``StoreDamaged`` when
        the file is damaged, ``StoreError`` otherwise (disk full...). ``retry_in()`` then
        says when to try again."""
        self._refuse_readonly()
        for group in groups:
            if len(group) != 2 or len(group[1]) != 4:
                raise TypeError("ingest_rows takes (resource, [logs, events, spans, metrics])")
        with self._lock:
            try:
                n, clamped = self._ingest_checked(groups)
            except StoreError:
                self.write_failures += 1
                backoff = _RETRY_FIRST_S * 2 ** min(self.write_failures - 1, 16)
                self._retry_at = time.monotonic() + min(_RETRY_MAX_S, backoff)
                raise
            self.write_failures = 0
            self._retry_at = 0.0
            if clamped:
                if not self.clamped_times:
                    log.warning(
                        "records with a time after 2262-04-11T23:47:16.854775807Z (the latest"
                        " the store holds) are stored with that time"
                    )
                self.clamped_times += clamped
            return n

    def retry_in(self) -> float:
        """Seconds until a writer whose last ``ingest_rows`` failed should try again
        (0.25 s after the first failure, doubling up to 30 s); 0 after a success."""
        return max(0.0, self._retry_at - time.monotonic()) if self.write_failures else 0.0

    def _ingest_checked(self, groups: Groups) -> tuple[int, int]:
        if self._reopen:
            self._conn = self._open()
            self._reopen = False
        try:
            try:
                return self._ingest_tx(groups, sanitize=False)
            except UnicodeEncodeError:
                # A str with lone surrogates cannot be bound: store the batch again with
                # such characters replaced.
                return self._ingest_tx(groups, sanitize=True)
        except sqlite3.Error as exc:
            raise schema.db_error(exc, f"cannot write the store at {self.path}") from None

    def _ingest_tx(self, groups: Groups, *, sanitize: bool) -> tuple[int, int]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            n = self._ingest_locked(groups, sanitize)
            self._conn.execute("COMMIT")
        except BaseException:
            schema.rollback(self._conn)
            self._source_ids.clear()  # may hold ids of the rolled-back transaction
            raise
        return n

    def _ingest_locked(self, groups: Groups, sanitize: bool) -> tuple[int, int]:
        """Rows stored, and how many of them with a clamped time."""
        conn = self._conn
        next_id = dict(conn.execute("SELECT tbl, next_id FROM sequences").fetchall())
        chunks: list[tuple[Any, ...]] = []
        traces: list[tuple[bytes, int, int]] = []
        sids = [self._source_id(resource, sanitize) for resource, _rows in groups]
        stored = clamped = 0
        for kind in (ROW_LOG, ROW_EVENT, ROW_SPAN, ROW_METRIC):
            tbl = _ROW_TABLE[kind]
            params: list[tuple[Any, ...]] = []
            for sid, (_resource, by_kind) in zip(sids, groups, strict=True):
                rows = by_kind[kind]
                if not rows:
                    continue
                first = next_id[tbl]
                next_id[tbl] = first + len(rows)
                params += [
                    (i, sid, *row)
                    for i, row in zip(range(first, first + len(rows)), rows, strict=True)
                ]
                clamped += _chunk_runs(rows, first, kind, sid, chunks, traces)
            if not params:
                continue
            stored += len(params)
            if sanitize:
                params = [tuple(map(_bindable, row)) for row in params]
            step, multi = _INSERT_MULTI[kind]
            full = len(params) - len(params) % step
            for i in range(0, full, step):
                conn.execute(multi, tuple(chain.from_iterable(params[i : i + step])))
            conn.executemany(_INSERT_ROWS[kind], params[full:])  # the remainder
        if stored:
            conn.executemany(
                "INSERT INTO chunks (tbl, first_id, last_id, min_time, max_time, source_id,"
                " job_id, max_severity) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [tuple(map(_bindable, c)) for c in chunks] if sanitize else chunks,
            )
            conn.executemany(
                "INSERT INTO trace_chunks (trace_id, first_id, last_id) VALUES (?, ?, ?)", traces
            )
            conn.executemany(
                "UPDATE sequences SET next_id = ? WHERE tbl = ?",
                [(v, k) for k, v in next_id.items()],
            )
        return stored, clamped

    def _source_id(self, resource: Resource, sanitize: bool = False) -> int:
        attrs = resource.attributes
        key: SourceKey = (
            text(attrs.get("service.name")),
            text(attrs.get("emp.machine_id")),
            text(attrs.get("emp.worker_id")),
        )
        if sanitize:
            key = (_bindable(key[0]), _bindable(key[1]), _bindable(key[2]))
        sid = self._source_ids.get(key)
        if sid is not None:
            return sid
        row = self._conn.execute(
            "SELECT id FROM sources WHERE service IS ? AND machine_id IS ? AND worker_id IS ?",
            key,
        ).fetchone()
        if row is None:
            cur = self._conn.execute(
                "INSERT INTO sources (service, machine_id, worker_id) VALUES (?, ?, ?)", key
            )
            sid = int(cur.lastrowid or 0)
        else:
            sid = int(row[0])
        self._source_ids[key] = sid
        return sid
