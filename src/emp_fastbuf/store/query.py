"""Reading: the queries behind ``fastbuf logs``, ``tail``, ``trace``, ``metrics`` and
``correlate``. Each reads the chunk index first, then only the rows of the chunks that
can match."""

from __future__ import annotations

import array
import json
import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from emp_fastbuf.errors import StoreDamaged, StoreError
from emp_fastbuf.records import (
    DEFAULT_HISTOGRAM_BOUNDS,
    EVENT,
    GAUGE,
    HISTOGRAM,
    INSTRUMENT_NAMES,
    KIND_NAMES,
    LOG,
    SPAN,
    value_sum,
)
from emp_fastbuf.store import schema
from emp_fastbuf.store.connection import SourceKey, StoreConnection
from emp_fastbuf.store.model import JobView, MetricSeries, SpanNode, StoredRecord, TraceView
from emp_fastbuf.store.rows import f64_values
from emp_fastbuf.store.schema import METRICS, RECORDS, SQLITE_BUSY, SQLITE_LOCKED
from emp_fastbuf.values import percentile

# A trace id: 16 bytes, written as 32 hex digits.
TRACE_ID_DIGITS = 32
_HEX_DIGITS = frozenset("0123456789abcdef")
# The kinds the records table holds (metric updates have their own table).
_KIND_BY_CODE = {kind: KIND_NAMES[kind] for kind in (LOG, EVENT, SPAN)}

_RECORD_COLUMNS = (
    "r.id, r.time_unix_nano, r.kind, r.source_id, r.job_id, r.name, r.body, r.severity_number,"
    " r.severity_text, r.trace_id, r.span_id, r.parent_span_id, r.start_unix_nano,"
    " r.status_code, r.status_message, r.span_kind, r.attributes, r.events, r.links"
)
_METRIC_JOIN = "FROM chunks c CROSS JOIN metric_updates m ON m.id BETWEEN c.first_id AND c.last_id"
_RECORD_JOIN = "FROM chunks c CROSS JOIN records r ON r.id BETWEEN c.first_id AND c.last_id"
_METRIC_COLUMNS = (
    "m.id, m.time_unix_nano, m.source_id, m.job_id, m.name, m.instrument, m.unit, m.value,"
    " m.count, m.sum, m.min, m.max, m.attributes"
)


def _source_filters(
    alias: str,
    machine: str | None,
    worker: str | None,
    where: list[str],
    params: list[Any],
    service: str | None = None,
) -> None:
    """Restrict rows of table ``alias`` to the sources of a machine, a worker and/or a
    service."""
    for column, value in (("machine_id", machine), ("worker_id", worker), ("service", service)):
        if value is not None:
            where.append(f"{alias}.source_id IN (SELECT id FROM sources WHERE {column} = ?)")
            params.append(value)


def _bucket_counts(values: Iterable[float], bounds: Sequence[float]) -> list[int]:
    """OTLP explicit buckets: bucket i holds (bounds[i-1], bounds[i]], the last one
    (bounds[-1], +inf)."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    return counts


# An attribute value as text, the way ``--attr KEY=VALUE`` and ``--grep`` compare it: a
# string as it is, a number as SQLite writes it, true/false/null as in JSON, an array or
# object as its JSON text.
_ATTR_TEXT = (
    "CASE j.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'"
    " ELSE CAST(j.value AS TEXT) END"
)


@dataclass(frozen=True)
class LogFilters:
    """The filters of ``logs``, ``tail`` and ``count_logs``; a record matches every one
    given. ``trace``: a trace id, or its first hex digits (records of every trace whose id
    starts with them); ``attrs``: (key, value) pairs, each an attribute the record has with
    that value as text; ``grep``: a case-sensitive substring of the body, the event name or any
    attribute value (exception type, message and stack trace included)."""

    job: str | None = None
    trace: str | None = None
    machine: str | None = None
    worker: str | None = None
    service: str | None = None
    level: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    grep: str | None = None
    attrs: tuple[tuple[str, str], ...] = ()


class Queries(StoreConnection):
    """The reading part of ``Store``."""

    def _source(self, sid: int) -> SourceKey:
        src = self._sources.get(sid)
        if src is None:
            for row in self._query("SELECT id, service, machine_id, worker_id FROM sources", ()):
                self._sources[int(row[0])] = (row[1], row[2], row[3])
            src = self._sources.get(sid, (None, None, None))
        return src

    def _record(self, row: Sequence[Any]) -> StoredRecord:
        try:
            return self._make_record(row)
        except (ValueError, TypeError, AttributeError) as exc:
            raise self._bad_row(exc) from None

    def _read_error(self, exc: sqlite3.Error) -> StoreError:
        return schema.db_error(exc, f"cannot read the store at {self.path}")

    def _origin(self, sid: int, attrs: str | None) -> dict[str, Any]:
        """The fields every row read back has: its source's service, machine and worker,
        and its attributes."""
        service, machine, worker = self._source(sid)
        return {
            "service": service,
            "machine_id": machine,
            "worker_id": worker,
            "attributes": json.loads(attrs) if attrs else {},
        }

    def _bad_row(self, exc: Exception) -> StoreDamaged:
        """A row SQLite returned but that cannot be what the store wrote: damage that
        SQLite's own checks did not see."""
        return StoreDamaged(
            f"cannot read the store at {self.path}: the file is damaged (a row does not"
            f" decode: {type(exc).__name__})"
        )

    def _make_record(self, row: Sequence[Any]) -> StoredRecord:
        (
            rid, t, kind, sid, job, name, body, sev_num, sev_text, trace, span, parent,
            start, status, status_msg, span_kind, attrs, events, links,
        ) = row  # fmt: skip
        return StoredRecord(
            id=rid,
            kind=_KIND_BY_CODE.get(kind, "unknown"),
            time_unix_nano=t,
            name=name,
            body=body,
            severity_number=sev_num,
            severity_text=sev_text,
            trace_id=trace.hex() if trace is not None else None,
            span_id=span.hex() if span is not None else None,
            parent_span_id=parent.hex() if parent is not None else None,
            job_id=job,
            start_unix_nano=start,
            status_code=status,
            status_message=status_msg,
            span_kind=span_kind,
            events=json.loads(events) if events else [],
            links=json.loads(links) if links else [],
            **self._origin(sid, attrs),
        )

    def _metric_record(self, row: Sequence[Any]) -> StoredRecord:
        try:
            return self._make_metric_record(row)
        except (ValueError, TypeError, AttributeError) as exc:
            raise self._bad_row(exc) from None

    def _make_metric_record(self, row: Sequence[Any]) -> StoredRecord:
        rid, t, sid, job, name, instrument, unit, value, count, s, lo, hi, attrs = row
        return StoredRecord(
            id=rid,
            kind="metric",
            time_unix_nano=t,
            name=name,
            job_id=job,
            **self._origin(sid, attrs),
            instrument=INSTRUMENT_NAMES.get(instrument, "unknown"),
            unit=unit,
            value=value,
            count=count,
            sum=s,
            min=lo,
            max=hi,
        )

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Queries inside see one state of the store: a read transaction (WAL readers keep
        the snapshot of their first read) around queries that read in several steps."""
        with self._lock:
            if self._conn.in_transaction:
                yield
                return
            try:
                self._conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise self._read_error(exc) from None
            try:
                yield
            except BaseException:
                # Already failing (a damaged page...): ending the snapshot may fail too, and
                # must not replace the error being raised.
                schema.rollback(self._conn)
                raise
            try:
                self._conn.execute("COMMIT")  # nothing was written: ends the snapshot
            except sqlite3.Error as exc:
                raise self._read_error(exc) from None

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._read_error(exc) from None

    @staticmethod
    def _log_filters(f: LogFilters) -> tuple[list[str], list[Any]]:
        where = [f"r.kind IN ({LOG}, {EVENT})"]
        params: list[Any] = []
        if f.job is not None:
            where.append("r.job_id = ?")
            params.append(f.job)
        if f.trace is not None:
            cond, bounds = _trace_match("r.trace_id", f.trace)
            where.append(cond)
            params += bounds
        _source_filters("r", f.machine, f.worker, where, params, f.service)
        if f.level is not None:
            where.append(f"r.kind = {LOG} AND r.severity_number >= ?")
            params.append(f.level)
        if f.since_ns is not None:
            where.append("r.time_unix_nano >= ?")
            params.append(f.since_ns)
        if f.until_ns is not None:
            where.append("r.time_unix_nano <= ?")
            params.append(f.until_ns)
        for key, value in f.attrs:
            where.append(
                "EXISTS (SELECT 1 FROM json_each(r.attributes) j"
                f" WHERE j.key = ? AND {_ATTR_TEXT} = ?)"
            )
            params += [key, value]
        if f.grep is not None:
            where.append(
                "(instr(r.body, ?) > 0 OR instr(r.name, ?) > 0 OR EXISTS (SELECT 1 FROM"
                f" json_each(r.attributes) j WHERE instr({_ATTR_TEXT}, ?) > 0))"
            )
            params += [f.grep, f.grep, f.grep]
        return where, params

    def logs(
        self,
        *,
        job: str | None = None,
        trace: str | None = None,
        machine: str | None = None,
        worker: str | None = None,
        service: str | None = None,
        level: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        grep: str | None = None,
        attrs: Sequence[tuple[str, str]] = (),
        limit: int | None = None,
        max_id: int | None = None,
    ) -> list[StoredRecord]:
        """Logs and events (not spans) matching every filter given (``LogFilters``), oldest
        first. ``level`` keeps logs at or above that severity number (and drops events);
        ``since_ns`` and ``until_ns`` bound the time, both included; ``limit`` keeps the
        newest; ``max_id`` leaves out records stored after that id (see ``last_id``)."""
        f = LogFilters(
            job, trace, machine, worker, service, level, since_ns, until_ns, grep, tuple(attrs)
        )
        where, params = self._log_where(f, max_id)
        if trace is not None:
            # A trace is small and has its own chunks: no paging.
            cond, bounds = _trace_match("t.trace_id", trace)
            sql = (
                f"SELECT {_RECORD_COLUMNS} FROM trace_chunks t CROSS JOIN records r"
                " ON r.id BETWEEN t.first_id AND t.last_id"
                f" WHERE {cond} AND {' AND '.join(where)}"
                " ORDER BY r.time_unix_nano DESC, r.id DESC"
            )
            params[:0] = bounds
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            rows = self._query(sql, params)
        else:
            chunk_where, chunk_params = self._chunk_filters(RECORDS, f)
            with self._snapshot():  # the chunks read page by page, of one state
                rows = self._newest(
                    _RECORD_COLUMNS, "records r", chunk_where, chunk_params, where, params, limit
                )
        rows.reverse()
        return [self._record(row) for row in rows]

    def count_logs(
        self,
        *,
        job: str | None = None,
        trace: str | None = None,
        machine: str | None = None,
        worker: str | None = None,
        service: str | None = None,
        level: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        grep: str | None = None,
        attrs: Sequence[tuple[str, str]] = (),
        max_id: int | None = None,
    ) -> int:
        """How many records ``logs`` with the same filters returns without a limit."""
        f = LogFilters(
            job, trace, machine, worker, service, level, since_ns, until_ns, grep, tuple(attrs)
        )
        where, params = self._log_where(f, max_id)
        if trace is not None:
            cond, bounds = _trace_match("t.trace_id", trace)
            sql = (
                "SELECT count(*) FROM trace_chunks t CROSS JOIN records r"
                " ON r.id BETWEEN t.first_id AND t.last_id"
                f" WHERE {cond} AND {' AND '.join(where)}"
            )
            return int(self._query(sql, [*bounds, *params])[0][0])
        chunk_where, chunk_params = self._chunk_filters(RECORDS, f)
        sql = f"SELECT count(*) {_RECORD_JOIN} WHERE {' AND '.join(chunk_where + where)}"
        return int(self._query(sql, [*chunk_params, *params])[0][0])

    def _log_where(self, f: LogFilters, max_id: int | None) -> tuple[list[str], list[Any]]:
        """The row conditions of ``logs`` and ``count_logs``: the filters, and no record
        stored after ``max_id``."""
        where, params = self._log_filters(f)
        if max_id is not None:
            where.append("r.id <= ?")
            params.append(max_id)
        return where, params

    @staticmethod
    def _chunk_filters(tbl: int, f: LogFilters) -> tuple[list[str], list[Any]]:
        """Conditions on ``chunks c`` that keep the chunks which can hold matching rows."""
        where = ["c.tbl = ?"]
        params: list[Any] = [tbl]
        if f.job is not None:
            where.append("c.job_id = ?")
            params.append(f.job)
        _source_filters("c", f.machine, f.worker, where, params, f.service)
        if f.since_ns is not None:
            where.append("c.max_time >= ?")
            params.append(f.since_ns)
        if f.until_ns is not None:
            where.append("c.min_time <= ?")
            params.append(f.until_ns)
        if f.level is not None:
            where.append("c.max_severity >= ?")
            params.append(f.level)
        return where, params

    def _newest(
        self,
        columns: str,
        table: str,
        chunk_where: list[str],
        chunk_params: list[Any],
        row_where: list[str],
        row_params: list[Any],
        limit: int | None,
    ) -> list[Any]:
        """The newest ``limit`` matching rows (all when None), newest first.

        A chunk's rows are no newer than its ``max_time``. So the chunks are read newest
        first, a growing number at a time, until the ``limit``-th best row found is at
        least as new as every chunk not read yet: a query for the newest 100 logs reads a
        few chunks, not the whole store."""
        alias = table.split()[-1]
        join = f"FROM chunks c CROSS JOIN {table} ON {alias}.id BETWEEN c.first_id AND c.last_id"
        order = f" ORDER BY {alias}.time_unix_nano DESC, {alias}.id DESC"

        def select(extra: list[str], extra_params: list[Any]) -> tuple[str, list[Any]]:
            cond = " AND ".join(chunk_where + extra + row_where)
            return f"SELECT {columns} {join} WHERE {cond}{order}", [
                *chunk_params,
                *extra_params,
                *row_params,
            ]

        if limit is None:
            return self._query(*select([], []))
        if limit <= 0:
            return []
        best: list[Any] = []
        upper: int | None = None  # the chunks at or above it have been read
        page = 64
        while True:
            extra, extra_params = [], []
            if upper is not None:
                extra.append("c.max_time < ?")
                extra_params.append(upper)
            found = self._query(
                f"SELECT c.max_time FROM chunks c WHERE {' AND '.join(chunk_where + extra)}"
                " ORDER BY c.max_time DESC LIMIT 1 OFFSET ?",
                [*chunk_params, *extra_params, page - 1],
            )
            lower = int(found[0][0]) if found else None  # None: every chunk left
            if lower is not None:
                extra.append("c.max_time >= ?")
                extra_params.append(lower)
            sql, params = select(extra, extra_params)
            rows = self._query(sql + " LIMIT ?", [*params, limit])
            if rows:
                # Row tuples start (id, time_unix_nano, ...): newest first, ties by id.
                best = sorted(best + rows, key=lambda r: (r[1], r[0]), reverse=True)[:limit]
            if lower is None or (len(best) >= limit and best[-1][1] >= lower):
                return best
            upper = lower
            page *= 4

    def last_id(self) -> int:
        """The id of the newest stored record (0 when empty): a starting cursor for ``tail``."""
        row = self._query("SELECT max(id) FROM records", ())[0]
        return int(row[0] or 0)

    def tail(
        self,
        after_id: int,
        *,
        job: str | None = None,
        trace: str | None = None,
        machine: str | None = None,
        worker: str | None = None,
        level: int | None = None,
        since_ns: int | None = None,
        grep: str | None = None,
        service: str | None = None,
        until_ns: int | None = None,
        attrs: Sequence[tuple[str, str]] = (),
        limit: int = 10_000,
    ) -> tuple[list[StoredRecord], int]:
        """Logs and events stored after record id ``after_id`` (same filters as ``logs``), in
        the order they were stored. Returns them and the cursor for the next call."""
        f = LogFilters(
            job, trace, machine, worker, service, level, since_ns, until_ns, grep, tuple(attrs)
        )
        where, params = self._log_filters(f)
        where.append("r.id > ?")
        params.append(after_id)
        # The cursor must move past records that do not match too.
        top = self._query(
            "SELECT max(id) FROM (SELECT id FROM records WHERE id > ? ORDER BY id LIMIT ?)",
            (after_id, limit),
        )[0][0]
        if top is None:
            return [], after_id
        where.append("r.id <= ?")
        params.append(top)
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM records r WHERE {' AND '.join(where)} ORDER BY r.id",
            params,
        )
        return [self._record(row) for row in rows], int(top)

    def trace_ids(self, prefix: str, limit: int = 10) -> list[str]:
        """The ids of the stored traces that start with ``prefix`` (hex digits, any case, up
        to a whole id), in order, at most ``limit``: how a short trace id is resolved. Read
        from the trace index; a trace whose records retention deleted is not counted."""
        cond, bounds = _trace_match("t.trace_id", prefix)
        rows = self._query(
            f"SELECT DISTINCT t.trace_id FROM trace_chunks t WHERE {cond} AND EXISTS"
            " (SELECT 1 FROM records r WHERE r.id BETWEEN t.first_id AND t.last_id"
            " AND r.trace_id = t.trace_id) ORDER BY t.trace_id LIMIT ?",
            [*bounds, limit],
        )
        return [bytes(row[0]).hex() for row in rows]

    def trace(self, trace_id: str) -> TraceView | None:
        """The spans of a trace as a tree (root first, children by start time) with the logs
        and events recorded inside each span; None when the store has nothing of it."""
        tid = _id_bytes(trace_id)
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM trace_chunks t CROSS JOIN records r"
            " ON r.id BETWEEN t.first_id AND t.last_id WHERE t.trace_id = ? AND r.trace_id = ?"
            " ORDER BY r.time_unix_nano, r.id",
            (tid, tid),
        )
        if not rows:
            return None
        recs = [self._record(row) for row in rows]
        spans = sorted((r for r in recs if r.kind == "span"), key=lambda r: (r.sort_time, r.id))
        by_id: dict[str, SpanNode] = {}
        for s in spans:
            if s.span_id is not None and s.span_id not in by_id:
                by_id[s.span_id] = SpanNode(s, 0)
        children: dict[str, list[StoredRecord]] = {}
        roots: list[StoredRecord] = []
        for s in spans:
            parent = s.parent_span_id
            if parent is not None and parent in by_id and parent != s.span_id:
                children.setdefault(parent, []).append(s)
            else:
                roots.append(s)
        ordered: list[SpanNode] = []
        seen: set[int] = set()

        def walk(start: StoredRecord) -> None:
            stack = [(start, 0)]
            while stack:
                s, depth = stack.pop()
                if s.id in seen:
                    continue
                seen.add(s.id)
                node = by_id.get(s.span_id or "")
                if node is None or node.span is not s:
                    node = SpanNode(s, depth)
                node.depth = depth
                ordered.append(node)
                kids = children.get(s.span_id or "", []) if node.span is s else []
                stack.extend((k, depth + 1) for k in reversed(kids))

        for root in roots:
            walk(root)
        for s in spans:  # parent cycles: never reached from a root
            if s.id not in seen:
                walk(s)
        orphans: list[StoredRecord] = []
        for r in recs:
            if r.kind == "span":
                node = by_id.get(r.span_id or "")
                if node is not None and node.span is r:
                    node.items.extend(_span_events(r))
                continue
            node = by_id.get(r.span_id or "")
            (node.items if node is not None else orphans).append(r)
        for node in ordered:
            node.items.sort(key=lambda r: (r.time_unix_nano, r.id))
        return TraceView(trace_id.lower(), ordered, orphans)

    def metrics(
        self,
        *,
        machine: str | None = None,
        worker: str | None = None,
        name: str | None = None,
        since_ns: int | None = None,
        recent: int = 32,
    ) -> list[MetricSeries]:
        """The current state of every series that matches. ``name`` is a glob (``gpu.*``).
        Counters and up-down counters: the sum of the stored increments (since ``since_ns``
        when given, else over the retained window); gauges: the last value; histograms:
        count, sum, min, max, p50/p90/p99 and bucket counts from the stored values."""
        # Only the chunks of the sources and the time asked for are read.
        where, params = self._chunk_filters(
            METRICS, LogFilters(machine=machine, worker=worker, since_ns=since_ns)
        )
        if name is not None:
            where.append("m.name GLOB ?")
            params.append(name)
        if since_ns is not None:
            where.append("m.time_unix_nano >= ?")
            params.append(since_ns)
        cond = " AND ".join(where)
        key = "m.name, m.instrument, m.unit, m.source_id, coalesce(m.attributes, '')"
        with self._snapshot():
            out = self._scalar_series(cond, params, key, recent)
            out += self._histogram_series(cond, params, recent)
        out.sort(key=lambda s: (s.name, s.machine_id or "", s.worker_id or "", _attr_key(s)))
        return out

    def _scalar_series(
        self, cond: str, params: list[Any], key: str, recent: int
    ) -> list[MetricSeries]:
        agg = (
            f"SELECT {key}, {{sum}}(m.value), count(*), max(m.time_unix_nano)"
            f" {_METRIC_JOIN} WHERE {cond} AND m.instrument != {HISTOGRAM} GROUP BY {key}"
        )
        try:
            with self._lock:
                totals = self._conn.execute(agg.format(sum="sum"), params).fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED):
                raise self._read_error(exc) from None
            # integer overflow in sum(): float totals instead
            totals = self._query(agg.format(sum="total"), params)
        except sqlite3.Error as exc:
            raise self._read_error(exc) from None
        last = self._query(
            "SELECT name, instrument, unit, source_id, attrs, value FROM ("
            " SELECT m.name AS name, m.instrument AS instrument, m.unit AS unit,"
            " m.source_id AS source_id, coalesce(m.attributes, '') AS attrs, m.value AS value,"
            f" row_number() OVER (PARTITION BY {key} ORDER BY m.time_unix_nano DESC, m.id DESC)"
            f" AS rn {_METRIC_JOIN} WHERE {cond} AND m.instrument != {HISTOGRAM})"
            " WHERE rn <= ? ORDER BY rn DESC",
            [*params, recent],
        )
        recents: dict[tuple[Any, ...], list[Any]] = {}
        for name, instrument, unit, sid, attrs, value in last:
            recents.setdefault((name, instrument, unit, sid, attrs), []).append(value)
        out: list[MetricSeries] = []
        for name, instrument, unit, sid, attrs, total, n, t in totals:
            values = recents.get((name, instrument, unit, sid, attrs), [])
            if instrument == GAUGE:
                value = values[-1] if values else None
                spark = [v for v in values if v is not None]
            else:
                value = total
                # Running totals after each of the recent increments.
                spark = []
                running = total or 0
                for inc in reversed(values):
                    spark.append(running)
                    running -= inc or 0
                spark.reverse()
            out.append(
                MetricSeries(
                    name=name,
                    instrument=INSTRUMENT_NAMES.get(instrument, "unknown"),
                    unit=unit,
                    **self._origin(sid, attrs),
                    time_unix_nano=t,
                    updates=n,
                    value=value,
                    recent=[float(v) for v in spark],
                )
            )
        return out

    def _histogram_series(self, cond: str, params: list[Any], recent: int) -> list[MetricSeries]:
        rows = self._query(
            "SELECT m.name, m.unit, m.source_id, coalesce(m.attributes, ''), m.time_unix_nano,"
            f" m.hist_values, m.bounds {_METRIC_JOIN}"
            f" WHERE {cond} AND m.instrument = {HISTOGRAM} ORDER BY m.time_unix_nano, m.id",
            params,
        )
        series: dict[tuple[Any, ...], tuple[array.array[float], list[Any]]] = {}
        for name, unit, sid, attrs, t, blob, bounds in rows:
            key = (name, unit, sid, attrs)
            state = series.get(key)
            if state is None:
                state = series[key] = (array.array("d"), [0, None, 0])
            state[0].extend(f64_values(blob))
            meta = state[1]
            meta[0], meta[1] = t, bounds  # the latest update's time and bounds
            meta[2] += 1
        out: list[MetricSeries] = []
        for (name, unit, sid, attrs), (values, (t, bounds_json, n)) in series.items():
            bounds = (
                [float(b) for b in json.loads(bounds_json)]
                if bounds_json
                else list(DEFAULT_HISTOGRAM_BOUNDS)
            )
            ordered = sorted(values)
            out.append(
                MetricSeries(
                    name=name,
                    instrument="histogram",
                    unit=unit,
                    **self._origin(sid, attrs),
                    time_unix_nano=t,
                    updates=n,
                    count=len(values),
                    sum=value_sum(values),
                    min=ordered[0] if ordered else None,
                    max=ordered[-1] if ordered else None,
                    p50=percentile(ordered, 50),
                    p90=percentile(ordered, 90),
                    p99=percentile(ordered, 99),
                    bounds=bounds,
                    bucket_counts=_bucket_counts(values, bounds),
                    recent=list(values[-recent:]) if recent > 0 else [],
                )
            )
        return out

    def correlate(self, job: str) -> JobView | None:
        """A job on one timeline (``JobView``): its spans (with their span events), logs,
        events and the metric updates made in its context; and the updates of the
        machine-level series (a source with a machine id and no worker id: the agent's
        CPU, memory and GPU gauges) of the machines it ran on, made inside its time window
        (its first record to its last) in no job's context. Nothing of another job, and
        no series of another process. Spans sit at their start time; at equal times,
        records come before metric updates. None when the store has no record of the job."""
        with self._snapshot():
            return self._correlate(job)

    def _correlate(self, job: str) -> JobView | None:
        recs = [
            self._record(row)
            for row in self._query(
                f"SELECT {_RECORD_COLUMNS} {_RECORD_JOIN}"
                f" WHERE c.job_id = ? AND c.tbl = {RECORDS} AND r.job_id = ?",
                (job, job),
            )
        ]
        own = list(recs)
        for r in recs:
            if r.kind == "span":
                own.extend(_span_events(r))
        own.extend(
            self._metric_record(row)
            for row in self._query(
                f"SELECT {_METRIC_COLUMNS} {_METRIC_JOIN}"
                f" WHERE c.job_id = ? AND c.tbl = {METRICS} AND m.job_id = ?",
                (job, job),
            )
        )
        if not own:
            return None
        times = [r.sort_time for r in own] + [r.time_unix_nano for r in own]
        lo, hi = min(times), max(times)
        sources = [
            int(row[0])
            for row in self._query("SELECT DISTINCT source_id FROM chunks WHERE job_id = ?", (job,))
        ]
        machines = sorted({m for sid in sources if (m := self._source(sid)[1]) is not None})
        out = own
        if machines:
            marks = ", ".join("?" * len(machines))
            machine_sources = [
                int(row[0])
                for row in self._query(
                    f"SELECT id FROM sources WHERE machine_id IN ({marks}) AND worker_id IS NULL",
                    machines,
                )
            ]
            if machine_sources:
                marks = ", ".join("?" * len(machine_sources))
                out.extend(
                    self._metric_record(row)
                    for row in self._query(
                        f"SELECT {_METRIC_COLUMNS} {_METRIC_JOIN} WHERE c.tbl = {METRICS}"
                        f" AND c.source_id IN ({marks}) AND c.job_id IS NULL"
                        " AND c.max_time >= ? AND c.min_time <= ?"
                        " AND m.job_id IS NULL AND m.time_unix_nano BETWEEN ? AND ?",
                        [*machine_sources, lo, hi, lo, hi],
                    )
                )
        out.sort(key=lambda r: (r.sort_time, r.kind == "metric", r.id))
        return JobView(job, out, machines, lo, hi)


def _id_bytes(hex_id: str) -> bytes:
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        raise StoreError(f"{hex_id!r} is not a hex id") from None


def _trace_match(column: str, prefix: str) -> tuple[str, list[bytes]]:
    """The condition on a trace id ``column`` (a BLOB) for the ids that start with the hex
    digits ``prefix``, and its parameters. A whole id (32 digits) is an equality; a shorter
    prefix a range of the index: from the prefix with zeros after it up to, not including,
    the next prefix (``abc`` -> ``abc0`` to ``abd0``, as bytes: an odd digit count fills
    the last byte's low half). SQLite compares BLOBs bytewise, a shorter one first when
    one starts the other."""
    digits = prefix.lower()
    if len(digits) > TRACE_ID_DIGITS or not set(digits) <= _HEX_DIGITS:
        raise StoreError(f"{prefix!r} is not a hex id (a trace id or its first digits)")
    if len(digits) == TRACE_ID_DIGITS:
        return f"{column} = ?", [bytes.fromhex(digits)]
    low = bytes.fromhex(digits.ljust(len(digits) + len(digits) % 2, "0"))
    if set(digits) <= {"f"}:
        return f"{column} >= ?", [low]  # ffff... (or nothing): no next prefix
    after = f"{int(digits, 16) + 1:0{len(digits)}x}"
    high = bytes.fromhex(after.ljust(len(after) + len(after) % 2, "0"))
    return f"{column} >= ? AND {column} < ?", [low, high]


def _attr_key(series: MetricSeries) -> str:
    return json.dumps(series.attributes, sort_keys=True, default=str)


def _span_events(span: StoredRecord) -> list[StoredRecord]:
    """A span's own events as 'event' records inside the span."""
    out = []
    for e in span.events:
        out.append(
            StoredRecord(
                id=span.id,
                kind="event",
                time_unix_nano=int(e.get("time_unix_nano", span.time_unix_nano)),
                name=str(e.get("name", "")),
                trace_id=span.trace_id,
                span_id=span.span_id,
                job_id=span.job_id,
                service=span.service,
                machine_id=span.machine_id,
                worker_id=span.worker_id,
                attributes=dict(e.get("attributes") or {}),
            )
        )
    return out
