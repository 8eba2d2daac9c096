"""The embedded local store: decoded records in one SQLite file (WAL), and the queries
the ``fastbuf`` CLI runs against it.

The agent is the only writer; any number of CLI processes read at the same time (WAL lets
readers see committed batches while the writer goes on). The schema is versioned and
described in ``docs/store-schema.md``.
"""

from __future__ import annotations

import array
import heapq
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from emp_fastbuf import records
from emp_fastbuf.errors import StoreBusy, StoreDamaged, StoreError
from emp_fastbuf.paths import STORE_FILE as STORE_FILE
from emp_fastbuf.records import (
    EVENT,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    Record,
    Resource,
    value_sum,
)
from emp_fastbuf.values import json_safe, percentile

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_RETENTION_S",
    "MAX_TIME_UNIX_NANO",
    "SCHEMA_VERSION",
    "MetricSeries",
    "SpanNode",
    "Store",
    "StoreBusy",
    "StoreDamaged",
    "StoreError",
    "StoredRecord",
    "TraceView",
    "severity_name",
]

# PRAGMA application_id: "eFBs" read as a big-endian int. Marks the file as ours.
APPLICATION_ID = 0x65464273
SCHEMA_VERSION = 2
DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_MAX_BYTES = 2 << 30
# SQLite integers are signed 64-bit: a later time (the year 2262 on; the record format
# allows up to 2**64 - 1 ns) is stored as this one.
MAX_TIME_UNIX_NANO = 2**63 - 1
# A writer waits this long for another connection's write lock before a write fails.
_BUSY_TIMEOUT_S = 5.0
# After a failed write the writer waits this long before trying again, doubling up to the
# maximum (see ``Store.retry_in``).
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 30.0
# The WAL file is cut back to this size after a checkpoint.
_WAL_LIMIT_BYTES = 64 << 20
# Size retention deletes down to this share of max_bytes, so that it does not run on
# every call once the store is full.
_SIZE_LOW_WATER = 0.9
_SQLITE_MAGIC = b"SQLite format 3\x00"
_KIND_BY_CODE = {LOG: "log", EVENT: "event", SPAN: "span"}
_STATUS_NAMES = {
    records.STATUS_UNSET: "unset",
    records.STATUS_OK: "ok",
    records.STATUS_ERROR: "error",
}
_NATIVE_LE = sys.byteorder == "little"
# SQLite's primary result codes for a file that is not a database or whose pages are corrupt.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

log = logging.getLogger("emp_fastbuf.store")

_SCHEMA = """
CREATE TABLE sources (
    id INTEGER PRIMARY KEY,
    service TEXT,
    machine_id TEXT,
    worker_id TEXT
);
CREATE INDEX sources_machine ON sources (machine_id);
CREATE INDEX sources_worker ON sources (worker_id);

CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    time_unix_nano INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources (id),
    job_id TEXT,
    name TEXT,
    body TEXT,
    severity_number INTEGER,
    severity_text TEXT,
    trace_id BLOB,
    span_id BLOB,
    parent_span_id BLOB,
    start_unix_nano INTEGER,
    status_code INTEGER,
    status_message TEXT,
    span_kind INTEGER,
    attributes TEXT,
    events TEXT,
    links TEXT
);

CREATE TABLE metric_updates (
    id INTEGER PRIMARY KEY,
    time_unix_nano INTEGER NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources (id),
    job_id TEXT,
    name TEXT NOT NULL,
    instrument INTEGER NOT NULL,
    unit TEXT NOT NULL,
    value ANY,
    count INTEGER,
    sum REAL,
    min REAL,
    max REAL,
    hist_values BLOB,
    bounds TEXT,
    attributes TEXT
);

CREATE TABLE chunks (
    tbl INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL,
    source_id INTEGER NOT NULL,
    job_id TEXT,
    max_severity INTEGER
);
CREATE INDEX chunks_time ON chunks (tbl, max_time);
CREATE INDEX chunks_min_time ON chunks (min_time);
CREATE INDEX chunks_job ON chunks (job_id, tbl, max_time) WHERE job_id IS NOT NULL;
CREATE INDEX chunks_source ON chunks (source_id, tbl, max_time);

CREATE TABLE trace_chunks (
    trace_id BLOB NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL
);
CREATE INDEX trace_chunks_trace ON trace_chunks (trace_id);
CREATE INDEX trace_chunks_last ON trace_chunks (last_id);

CREATE TABLE sequences (
    tbl INTEGER PRIMARY KEY,
    next_id INTEGER NOT NULL
);
INSERT INTO sequences (tbl, next_id) VALUES (0, 1), (1, 1);
"""

# chunks.tbl
_RECORDS, _METRICS = 0, 1
_TABLES = ("records", "metric_updates")

# Rows go in with their ids (the store hands them out: ``sequences``), so that the chunk
# index can be written before the rows and ids are never reused, even after retention
# empties a table (the ``tail`` cursor relies on that).
# Bound values: the id, the source id, then a row as ``store_row`` builds it.
_INSERT_LOG = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, body, severity_number,"
    " severity_text, trace_id, span_id, attributes, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
)
_INSERT_EVENT = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, name, trace_id, span_id,"
    " attributes, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 2)"
)
_INSERT_SPAN = (
    "INSERT INTO records (id, source_id, time_unix_nano, job_id, name, trace_id, span_id,"
    " parent_span_id, start_unix_nano, status_code, status_message, span_kind, attributes,"
    " events, links, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 3)"
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
_ROW_TABLE = (_RECORDS, _RECORDS, _RECORDS, _METRICS)
_ROW_TRACE = (5, 3, 3, None)

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
    alias: str, machine: str | None, worker: str | None, where: list[str], params: list[Any]
) -> None:
    """Restrict rows of table ``alias`` to the sources of a machine and/or a worker."""
    for column, value in (("machine_id", machine), ("worker_id", worker)):
        if value is not None:
            where.append(f"{alias}.source_id IN (SELECT id FROM sources WHERE {column} = ?)")
            params.append(value)


def _db_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The StoreError for an sqlite3 error: damage and a held lock get their own class."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreDamaged(f"{what}: the file is damaged ({exc})")
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreBusy(f"{what}: another process holds its write lock ({exc})")
    return StoreError(f"{what}: {exc}")


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed write transaction. SQLite may have rolled it back already (a full disk,
    a damaged page): an error here must not replace the one being raised."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# ---- values as JSON ------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _make_encoder() -> Callable[[Any], str]:
    """A compact, strict JSON encoder. The C encoder is built once and called directly:
    ``json.dumps`` and ``JSONEncoder.encode`` rebuild it on every call, which costs more
    than encoding a small attribute dict."""
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:
        return json.JSONEncoder(
            separators=(",", ":"), allow_nan=False, check_circular=False, default=_json_default
        ).encode
    # (markers, default, encoder, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan)
    iterencode = c_make(
        None, _json_default, json.encoder.encode_basestring_ascii, None, ":", ",",
        False, False, False,
    )  # fmt: skip
    join = "".join

    def encode(value: Any) -> str:
        return join(iterencode(value, 0))

    return encode


_encode_strict = _make_encoder()


def _to_json(value: Any) -> str:
    try:
        return _encode_strict(value)
    except ValueError:  # a NaN or an infinity somewhere: rare, so the walk is off the fast path
        return _encode_strict(json_safe(value))


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _f64_blob(values: Sequence[float]) -> bytes:
    arr = array.array("d", values)
    if not _NATIVE_LE:
        arr.byteswap()
    return arr.tobytes()


def _f64_values(blob: bytes | None) -> array.array[float]:
    arr = array.array("d")
    if blob:
        arr.frombytes(blob)
        if not _NATIVE_LE:
            arr.byteswap()
    return arr


# ---- rows ------------------------------------------------------------------------------
# A row is what one record becomes in its table, without the id and source columns (the
# store adds them). ``_transcode.store_rows`` builds the same tuples from raw records
# natively; ``store_row`` is the reference it is tested against.

ROW_LOG, ROW_EVENT, ROW_SPAN, ROW_METRIC = 0, 1, 2, 3


def _job_and_attributes(r: Record) -> tuple[str | None, str | None]:
    """The record's job id (taken out of its context) and its other context and own
    attributes as one JSON object (None when there are none)."""
    ctx = r.context
    if not ctx:
        return None, (_to_json(r.attributes) if r.attributes else None)
    raw = ctx.get("job_id")
    job = raw if isinstance(raw, str) else _text(raw)
    if job is not None and len(ctx) == 1:
        return job, (_to_json(r.attributes) if r.attributes else None)
    merged = {k: v for k, v in ctx.items() if k != "job_id"}
    merged.update(r.attributes)
    return job, (_to_json(merged) if merged else None)


def store_row(r: Record) -> tuple[int, tuple[Any, ...]] | None:
    """``(ROW_*, row)`` for a decoded record; None for a kind the store does not keep.

    log:    time, job, body, severity_number, severity_text, trace_id, span_id, attributes
    event:  time, job, name, trace_id, span_id, attributes
    span:   time (end), job, name, trace_id, span_id, parent_span_id, start, status_code,
            status_message, span_kind, attributes, events, links
    metric: time, job, name, instrument, unit, value, count, sum, min, max, hist_values,
            bounds, attributes
    Text that is absent is None, not "". Times (a span's start and its events' too) later
    than ``MAX_TIME_UNIX_NANO`` are that time.
    """
    kind = r.kind
    if kind not in _ROW_KINDS:
        return None
    job, attrs = _job_and_attributes(r)
    if kind == LOG:
        return ROW_LOG, (
            _time(r.time_unix_nano), job, r.body, r.severity_number, r.severity_text or None,
            r.trace_id, r.span_id, attrs,
        )  # fmt: skip
    if kind == EVENT:
        return ROW_EVENT, (_time(r.time_unix_nano), job, r.name, r.trace_id, r.span_id, attrs)
    if kind == SPAN:
        return ROW_SPAN, _span_row(r, job, attrs)
    return ROW_METRIC, _metric_row(r, job, attrs)


def _time(t: int) -> int:
    return t if t <= MAX_TIME_UNIX_NANO else MAX_TIME_UNIX_NANO


def _span_row(r: Record, job: str | None, attrs: str | None) -> tuple[Any, ...]:
    events = (
        _to_json(
            [
                {
                    "name": e.name,
                    "time_unix_nano": _time(e.time_unix_nano),
                    "attributes": e.attributes,
                }
                for e in r.events
            ]
        )
        if r.events
        else None
    )
    links = (
        _to_json(
            [
                {
                    "trace_id": link.trace_id.hex(),
                    "span_id": link.span_id.hex(),
                    "attributes": link.attributes,
                }
                for link in r.links
            ]
        )
        if r.links
        else None
    )
    return (
        _time(r.time_unix_nano), job, r.name, r.trace_id, r.span_id, r.parent_span_id,
        _time(r.start_unix_nano), r.status_code, r.status_message or None, r.span_kind, attrs,
        events, links,
    )  # fmt: skip


def _metric_row(r: Record, job: str | None, attrs: str | None) -> tuple[Any, ...]:
    if r.instrument == HISTOGRAM:
        values = [v for v in r.values if v == v]  # NaN has no place in a distribution
        count = len(values)
        return (
            _time(r.time_unix_nano), job, r.name, r.instrument, r.unit, None, count,
            value_sum(values) if count else 0.0,
            min(values) if count else None, max(values) if count else None,
            _f64_blob(values), _to_json(list(r.bounds)) if r.bounds else None, attrs,
        )  # fmt: skip
    return (
        _time(r.time_unix_nano), job, r.name, r.instrument, r.unit, r.value,
        None, None, None, None, None, None, attrs,
    )  # fmt: skip


_ROW_KINDS = frozenset((LOG, EVENT, SPAN, METRIC))

Row = tuple[Any, ...]


def rows_by_kind(recs: Iterable[Record]) -> list[list[Row]]:
    """Decoded records -> their rows, in four lists: logs, events, spans, metrics."""
    out: list[list[Row]] = [[], [], [], []]
    for r in recs:
        built = store_row(r)
        if built is not None:
            out[built[0]].append(built[1])
    return out


_time_of = itemgetter(0)
_job_of = itemgetter(1)
_severity_of = itemgetter(3)  # of a log row


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


# ---- query results ----------------------------------------------------------------------


@dataclass(slots=True)
class StoredRecord:
    """One record as read back from the store. Ids are lowercase hex."""

    id: int
    kind: str  # "log", "event", "span", "metric"
    time_unix_nano: int  # for a span, its end
    name: str | None = None
    body: str | None = None
    severity_number: int | None = None
    severity_text: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    job_id: str | None = None
    service: str | None = None
    machine_id: str | None = None
    worker_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    # spans
    start_unix_nano: int | None = None
    status_code: int | None = None
    status_message: str | None = None
    span_kind: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    # metric updates
    instrument: str | None = None
    unit: str | None = None
    value: int | float | None = None
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def status(self) -> str | None:
        """'unset', 'ok' or 'error' for spans; None otherwise."""
        if self.kind != "span":
            return None
        return _STATUS_NAMES.get(self.status_code or 0, "unset")

    @property
    def severity(self) -> str | None:
        """The log's severity text (from its number when the text is empty)."""
        if self.kind != "log":
            return None
        return self.severity_text or severity_name(self.severity_number or 0)

    @property
    def sort_time(self) -> int:
        """Where the record sits on a timeline: a span at its start, the rest at their time."""
        if self.kind == "span" and self.start_unix_nano is not None:
            return self.start_unix_nano
        return self.time_unix_nano


@dataclass(slots=True)
class SpanNode:
    """A span in a trace tree, with the logs and events recorded inside it (time order)."""

    span: StoredRecord
    depth: int
    items: list[StoredRecord] = field(default_factory=list)


@dataclass(slots=True)
class TraceView:
    """A trace: spans root first in tree order, and the trace's records whose span is not
    in the store (``orphans``)."""

    trace_id: str
    spans: list[SpanNode]
    orphans: list[StoredRecord]

    @property
    def start_unix_nano(self) -> int:
        times = [n.span.sort_time for n in self.spans] + [r.time_unix_nano for r in self.orphans]
        return min(times)

    @property
    def end_unix_nano(self) -> int:
        times = [n.span.time_unix_nano for n in self.spans]
        times += [r.time_unix_nano for r in self.orphans]
        return max(times)


@dataclass(slots=True)
class MetricSeries:
    """The current state of one series (name, instrument, unit, source, attributes)."""

    name: str
    instrument: str  # "counter", "updowncounter", "gauge", "histogram"
    unit: str
    service: str | None
    machine_id: str | None
    worker_id: str | None
    attributes: dict[str, Any]
    time_unix_nano: int  # the latest update
    updates: int
    value: int | float | None = None  # counter/updowncounter: the sum; gauge: the last value
    count: int = 0  # histogram fields
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)  # oldest first, for a sparkline


_SEVERITY_NAMES = ((21, "FATAL"), (17, "ERROR"), (13, "WARN"), (9, "INFO"), (5, "DEBUG"))


def severity_name(number: int) -> str:
    """OpenTelemetry severity number -> its short name ('' for 0)."""
    for floor, name in _SEVERITY_NAMES:
        if number >= floor:
            return name
    return "TRACE" if number >= 1 else ""


def _bucket_counts(values: Iterable[float], bounds: Sequence[float]) -> list[int]:
    """OTLP explicit buckets: bucket i holds (bounds[i-1], bounds[i]], the last one
    (bounds[-1], +inf)."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    return counts


# ---- the store --------------------------------------------------------------------------


class Store:
    """The SQLite store. One writer (the agent), any number of ``readonly`` readers.

    ``retention_s`` and ``max_bytes`` are applied by ``enforce()``, which the owner calls
    from time to time (not on every ingest). A writer opened with ``recover=True`` moves
    a damaged file aside and starts a new store (``quarantine()``) instead of raising
    ``StoreDamaged``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        readonly: bool = False,
        retention_s: float = DEFAULT_RETENTION_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        recover: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # re-entered by queries inside _snapshot()
        self._source_ids: dict[tuple[str | None, str | None, str | None], int] = {}
        self._sources: dict[int, tuple[str | None, str | None, str | None]] = {}
        # Rows stored with the time MAX_TIME_UNIX_NANO because theirs was later.
        self.clamped_times = 0
        # Ingest calls that failed in a row, and when the writer should try again.
        self.write_failures = 0
        self._retry_at = 0.0
        self._reopen = False  # the connection was closed by a quarantine() that failed
        try:
            self._conn = self._open()
        except StoreDamaged as exc:
            if readonly or not recover:
                raise
            self._conn = self._replace_damaged(str(exc))

    # ---- opening ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly:
            if not path.exists():
                raise StoreError(f"no store at {path}")
            self._check_header(path)
            uri = path.resolve().as_uri() + "?mode=ro"
            conn = self._connect(uri, uri=True)
            self._check_schema(conn, allow_init=False)
            return conn
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            self._check_header(path)
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        conn = self._connect(str(path), uri=False)
        try:
            if self._check_schema(conn, allow_init=True):
                self._init_schema(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # 64 MiB of page cache (the default is 2 MiB): index inserts at ingest rates
            # otherwise keep evicting and re-reading the same pages.
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            conn.close()
            raise _db_error(exc, f"cannot open the store at {path}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def quarantine(self) -> Path:
        """Move the store file aside, with its ``-wal`` and ``-shm`` files, as
        ``store.sqlite.corrupt-<UTC time>``, and start a new, empty store at the path. For
        a writer whose file turned out damaged (an ingest raised ``StoreDamaged``); says so
        in one ERROR log line. Returns where the old file is now."""
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")
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

    @staticmethod
    def _check_header(path: Path) -> None:
        try:
            with open(path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreError(f"cannot read the store at {path}: {exc.strerror}") from None
        if head and head != _SQLITE_MAGIC:
            raise StoreDamaged(f"{path} is not an emp-fastbuf store (not an SQLite database)")

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

    def _check_schema(self, conn: sqlite3.Connection, *, allow_init: bool) -> bool:
        """True when the file is empty and must be initialised; raises for anything foreign."""
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            conn.close()
            err = _db_error(exc, f"cannot open the store at {self.path}")
            if isinstance(err, StoreDamaged | StoreBusy):
                raise err from None
            raise StoreError(f"{self.path} is not an emp-fastbuf store ({exc})") from None
        if app_id == 0 and version == 0 and n_objects == 0:
            if allow_init:
                return True
            conn.close()
            raise StoreError(f"{self.path} is not an emp-fastbuf store (empty database)")
        if app_id != APPLICATION_ID:
            conn.close()
            raise StoreError(
                f"{self.path} is not an emp-fastbuf store (SQLite application id {app_id:#x})"
            )
        if version != SCHEMA_VERSION:
            conn.close()
            hint = (
                ": move it away and the agent starts a new one" if version < SCHEMA_VERSION else ""
            )
            raise StoreError(
                f"{self.path.name} at {self.path} has schema version {version}, "
                f"this emp-fastbuf reads version {SCHEMA_VERSION}{hint}"
            )
        return False

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        # auto_vacuum must be chosen before the first table exists.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ----------------------------------------------------------------------

    def _source_id(self, resource: Resource, sanitize: bool = False) -> int:
        attrs = resource.attributes
        key = (
            _text(attrs.get("service.name")),
            _text(attrs.get("emp.machine_id")),
            _text(attrs.get("emp.worker_id")),
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

    def ingest(self, groups: Sequence[tuple[Resource, Sequence[Record]]]) -> int:
        """Store decoded records, one transaction per call. Returns how many were stored
        (LOG, EVENT, SPAN and METRIC records; other kinds are skipped)."""
        return self.ingest_rows([(resource, rows_by_kind(recs)) for resource, recs in groups])

    def ingest_rows(self, groups: Sequence[tuple[Resource, Sequence[Sequence[Row]]]]) -> int:
        """Store rows as ``store_row`` (or ``_transcode.store_rows``) builds them: per
        resource, four lists (logs, events, spans, metrics). One transaction per call;
        returns how many rows were stored.

        A write that fails stores nothing and raises: ``StoreBusy`` when another process
        held the write lock for longer than the writer waits (5 s), ``StoreDamaged`` when
        the file is damaged, ``StoreError`` otherwise (disk full...). ``retry_in()`` then
        says when to try again."""
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")
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

    def _ingest_checked(
        self, groups: Sequence[tuple[Resource, Sequence[Sequence[Row]]]]
    ) -> tuple[int, int]:
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
            raise _db_error(exc, f"cannot write the store at {self.path}") from None

    def retry_in(self) -> float:
        """Seconds until a writer whose last ``ingest_rows`` failed should try again
        (0.25 s after the first failure, doubling up to 30 s); 0 after a success."""
        return max(0.0, self._retry_at - time.monotonic()) if self.write_failures else 0.0

    def _ingest_tx(
        self, groups: Sequence[tuple[Resource, Sequence[Sequence[Row]]]], *, sanitize: bool
    ) -> tuple[int, int]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            n = self._ingest_locked(groups, sanitize)
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            self._source_ids.clear()  # may hold ids of the rolled-back transaction
            raise
        return n

    def _ingest_locked(
        self, groups: Sequence[tuple[Resource, Sequence[Sequence[Row]]]], sanitize: bool
    ) -> tuple[int, int]:
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

    # ---- retention --------------------------------------------------------------------

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
        if self.readonly:
            raise StoreError(f"the store at {self.path} is open read-only")
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
            _rollback(self._conn)
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
                sql = f"DELETE FROM {_TABLES[tbl]} WHERE id BETWEEN ? AND ? AND time_unix_nano < ?"
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
                " records), (SELECT next_id FROM sequences WHERE tbl = 0))"
            ).rowcount
        )

    def _row_estimate(self) -> int:
        # Ids only grow and retention deletes the oldest, so the id ranges are close to
        # the row counts, without count(*)'s full scan.
        total = 0
        for table in _TABLES:
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
            for tbl in (_RECORDS, _METRICS)
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
            f"DELETE FROM {_TABLES[tbl]} WHERE id BETWEEN ? AND ?", (first, last)
        ).rowcount
        self._conn.execute("DELETE FROM chunks WHERE rowid = ?", (rowid,))
        return int(n)

    # ---- reading ----------------------------------------------------------------------

    def _source(self, sid: int) -> tuple[str | None, str | None, str | None]:
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
        service, machine, worker = self._source(sid)
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
            service=service,
            machine_id=machine,
            worker_id=worker,
            attributes=json.loads(attrs) if attrs else {},
            start_unix_nano=start,
            status_code=status,
            status_message=status_msg,
            span_kind=span_kind,
            events=json.loads(events) if events else [],
            links=json.loads(links) if links else [],
        )

    def _metric_record(self, row: Sequence[Any]) -> StoredRecord:
        try:
            return self._make_metric_record(row)
        except (ValueError, TypeError, AttributeError) as exc:
            raise self._bad_row(exc) from None

    def _make_metric_record(self, row: Sequence[Any]) -> StoredRecord:
        rid, t, sid, job, name, instrument, unit, value, count, s, lo, hi, attrs = row
        service, machine, worker = self._source(sid)
        return StoredRecord(
            id=rid,
            kind="metric",
            time_unix_nano=t,
            name=name,
            job_id=job,
            service=service,
            machine_id=machine,
            worker_id=worker,
            attributes=json.loads(attrs) if attrs else {},
            instrument=records.INSTRUMENT_NAMES.get(instrument, "unknown"),
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
                raise _db_error(exc, f"cannot read the store at {self.path}") from None
            try:
                yield
            except BaseException:
                # Already failing (a damaged page...): ending the snapshot may fail too, and
                # must not replace the error being raised.
                _rollback(self._conn)
                raise
            try:
                self._conn.execute("COMMIT")  # nothing was written: ends the snapshot
            except sqlite3.Error as exc:
                raise _db_error(exc, f"cannot read the store at {self.path}") from None

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _db_error(exc, f"cannot read the store at {self.path}") from None

    @staticmethod
    def _log_filters(
        job: str | None,
        trace: str | None,
        machine: str | None,
        worker: str | None,
        level: int | None,
        since_ns: int | None,
        grep: str | None,
    ) -> tuple[list[str], list[Any]]:
        where = ["r.kind IN (1, 2)"]
        params: list[Any] = []
        if job is not None:
            where.append("r.job_id = ?")
            params.append(job)
        if trace is not None:
            where.append("r.trace_id = ?")
            params.append(_id_bytes(trace))
        _source_filters("r", machine, worker, where, params)
        if level is not None:
            where.append("r.kind = 1 AND r.severity_number >= ?")
            params.append(level)
        if since_ns is not None:
            where.append("r.time_unix_nano >= ?")
            params.append(since_ns)
        if grep is not None:
            where.append("(instr(r.body, ?) > 0 OR instr(r.name, ?) > 0)")
            params += [grep, grep]
        return where, params

    def logs(
        self,
        *,
        job: str | None = None,
        trace: str | None = None,
        machine: str | None = None,
        worker: str | None = None,
        level: int | None = None,
        since_ns: int | None = None,
        grep: str | None = None,
        limit: int | None = None,
        max_id: int | None = None,
    ) -> list[StoredRecord]:
        """Logs and events (not spans) matching every filter given, oldest first. ``level``
        keeps logs at or above that severity number (and drops events); ``grep`` is a
        case-sensitive substring of the body or the event name; ``limit`` keeps the newest;
        ``max_id`` leaves out records stored after that id (see ``last_id``)."""
        where, params = self._log_filters(job, trace, machine, worker, level, since_ns, grep)
        if max_id is not None:
            where.append("r.id <= ?")
            params.append(max_id)
        if trace is not None:
            # A trace is small and has its own chunks: no paging.
            sql = (
                f"SELECT {_RECORD_COLUMNS} FROM trace_chunks t CROSS JOIN records r"
                " ON r.id BETWEEN t.first_id AND t.last_id"
                f" WHERE t.trace_id = ? AND {' AND '.join(where)}"
                " ORDER BY r.time_unix_nano DESC, r.id DESC"
            )
            params.insert(0, _id_bytes(trace))
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            rows = self._query(sql, params)
        else:
            chunk_where, chunk_params = self._chunk_filters(
                _RECORDS, job, machine, worker, since_ns, level
            )
            with self._snapshot():  # the chunks read page by page, of one state
                rows = self._newest(
                    _RECORD_COLUMNS, "records r", chunk_where, chunk_params, where, params, limit
                )
        rows.reverse()
        return [self._record(row) for row in rows]

    @staticmethod
    def _chunk_filters(
        tbl: int,
        job: str | None,
        machine: str | None,
        worker: str | None,
        since_ns: int | None,
        level: int | None = None,
    ) -> tuple[list[str], list[Any]]:
        """Conditions on ``chunks c`` that keep the chunks which can hold matching rows."""
        where = ["c.tbl = ?"]
        params: list[Any] = [tbl]
        if job is not None:
            where.append("c.job_id = ?")
            params.append(job)
        _source_filters("c", machine, worker, where, params)
        if since_ns is not None:
            where.append("c.max_time >= ?")
            params.append(since_ns)
        if level is not None:
            where.append("c.max_severity >= ?")
            params.append(level)
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
        limit: int = 10_000,
    ) -> tuple[list[StoredRecord], int]:
        """Logs and events stored after record id ``after_id`` (same filters as ``logs``), in
        the order they were stored. Returns them and the cursor for the next call."""
        where, params = self._log_filters(job, trace, machine, worker, level, since_ns, grep)
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
        where, params = self._chunk_filters(_METRICS, None, machine, worker, since_ns)
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
            f" {_METRIC_JOIN} WHERE {cond} AND m.instrument != 4 GROUP BY {key}"
        )
        try:
            with self._lock:
                totals = self._conn.execute(agg.format(sum="sum"), params).fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise _db_error(exc, f"cannot read the store at {self.path}") from None
            # integer overflow in sum(): float totals instead
            totals = self._query(agg.format(sum="total"), params)
        except sqlite3.Error as exc:
            raise _db_error(exc, f"cannot read the store at {self.path}") from None
        last = self._query(
            "SELECT name, instrument, unit, source_id, attrs, value FROM ("
            " SELECT m.name AS name, m.instrument AS instrument, m.unit AS unit,"
            " m.source_id AS source_id, coalesce(m.attributes, '') AS attrs, m.value AS value,"
            f" row_number() OVER (PARTITION BY {key} ORDER BY m.time_unix_nano DESC, m.id DESC)"
            f" AS rn {_METRIC_JOIN} WHERE {cond} AND m.instrument != 4)"
            " WHERE rn <= ? ORDER BY rn DESC",
            [*params, recent],
        )
        recents: dict[tuple[Any, ...], list[Any]] = {}
        for name, instrument, unit, sid, attrs, value in last:
            recents.setdefault((name, instrument, unit, sid, attrs), []).append(value)
        out: list[MetricSeries] = []
        for name, instrument, unit, sid, attrs, total, n, t in totals:
            values = recents.get((name, instrument, unit, sid, attrs), [])
            service, machine, worker = self._source(sid)
            if instrument == records.GAUGE:
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
                    instrument=records.INSTRUMENT_NAMES.get(instrument, "unknown"),
                    unit=unit,
                    service=service,
                    machine_id=machine,
                    worker_id=worker,
                    attributes=json.loads(attrs) if attrs else {},
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
            f" WHERE {cond} AND m.instrument = 4 ORDER BY m.time_unix_nano, m.id",
            params,
        )
        series: dict[tuple[Any, ...], tuple[array.array[float], list[Any]]] = {}
        for name, unit, sid, attrs, t, blob, bounds in rows:
            key = (name, unit, sid, attrs)
            state = series.get(key)
            if state is None:
                state = series[key] = (array.array("d"), [0, None, 0])
            state[0].extend(_f64_values(blob))
            meta = state[1]
            meta[0], meta[1] = t, bounds  # the latest update's time and bounds
            meta[2] += 1
        out: list[MetricSeries] = []
        for (name, unit, sid, attrs), (values, (t, bounds_json, n)) in series.items():
            bounds = (
                [float(b) for b in json.loads(bounds_json)]
                if bounds_json
                else list(records.DEFAULT_HISTOGRAM_BOUNDS)
            )
            ordered = sorted(values)
            service, machine, worker = self._source(sid)
            out.append(
                MetricSeries(
                    name=name,
                    instrument="histogram",
                    unit=unit,
                    service=service,
                    machine_id=machine,
                    worker_id=worker,
                    attributes=json.loads(attrs) if attrs else {},
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

    def correlate(self, job: str) -> list[StoredRecord]:
        """Everything about a job on one timeline: its spans (with their span events), logs
        and events, and the metric updates, during the job's time window, of the processes
        that ran it and of their machines (machine-level series: no worker id). Spans sit at
        their start time. Empty when the store has no record of the job."""
        with self._snapshot():
            return self._correlate(job)

    def _correlate(self, job: str) -> list[StoredRecord]:
        recs = [
            self._record(row)
            for row in self._query(
                f"SELECT {_RECORD_COLUMNS} {_RECORD_JOIN}"
                " WHERE c.job_id = ? AND c.tbl = 0 AND r.job_id = ?",
                (job, job),
            )
        ]
        tagged = self._query(
            f"SELECT min(m.time_unix_nano), max(m.time_unix_nano) {_METRIC_JOIN}"
            " WHERE c.job_id = ? AND c.tbl = 1 AND m.job_id = ?",
            (job, job),
        )[0]
        times = [r.sort_time for r in recs] + [r.time_unix_nano for r in recs]
        times += [t for t in tagged if t is not None]
        if not times:
            return []
        lo, hi = min(times), max(times)
        sources = {
            int(row[0])
            for row in self._query("SELECT DISTINCT source_id FROM chunks WHERE job_id = ?", (job,))
        }
        machines = {self._source(sid)[1] for sid in sources} - {None}
        machine_sources = {
            int(row[0])
            for m in machines
            for row in self._query(
                "SELECT id FROM sources WHERE machine_id = ? AND worker_id IS NULL", (m,)
            )
        }
        wanted = sorted(sources | machine_sources)
        marks = ", ".join("?" * len(wanted))
        metric_rows = self._query(
            f"SELECT {_METRIC_COLUMNS} {_METRIC_JOIN} WHERE c.tbl = 1 AND c.max_time >= ?"
            f" AND c.min_time <= ? AND (c.job_id = ? OR c.source_id IN ({marks}))"
            f" AND m.time_unix_nano BETWEEN ? AND ? AND (m.job_id = ? OR m.source_id IN ({marks}))",
            [lo, hi, job, *wanted, lo, hi, job, *wanted],
        )
        out = list(recs)
        for r in recs:
            if r.kind == "span":
                out.extend(_span_events(r))
        out.extend(self._metric_record(row) for row in metric_rows)
        out.sort(key=lambda r: (r.sort_time, r.kind == "metric", r.id))
        return out


def _id_bytes(hex_id: str) -> bytes:
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        raise StoreError(f"{hex_id!r} is not a hex id") from None


def _bindable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


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
