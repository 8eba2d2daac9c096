"""The store file: its tables (``docs/store-schema.md``), the marks that say a file is
ours and of which schema version, the checks made on opening, and what an SQLite error
means for the caller."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from emp_fastbuf.errors import StoreBusy, StoreDamaged, StoreError

# PRAGMA application_id: "eFBs" read as a big-endian int. Marks the file as ours.
APPLICATION_ID = 0x65464273
SCHEMA_VERSION = 2

# chunks.tbl and sequences.tbl: which table a chunk of ids belongs to.
RECORDS, METRICS = 0, 1
TABLES = ("records", "metric_updates")

_SQLITE_MAGIC = b"SQLite format 3\x00"
# SQLite's primary result codes for a file that is not a database or whose pages are corrupt.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
SQLITE_BUSY, SQLITE_LOCKED = 5, 6

_DDL = f"""
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
INSERT INTO sequences (tbl, next_id) VALUES ({RECORDS}, 1), ({METRICS}, 1);
"""


def db_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The StoreError for an sqlite3 error: damage and a held lock get their own class."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreDamaged(f"{what}: the file is damaged ({exc})")
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return StoreBusy(f"{what}: another process holds its write lock ({exc})")
    return StoreError(f"{what}: {exc}")


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed write transaction. SQLite may have rolled it back already (a full disk,
    a damaged page): an error here must not replace the one being raised."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def check_header(path: Path) -> None:
    """Refuse a file that is neither empty nor an SQLite database (``StoreDamaged``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read the store at {path}: {exc.strerror}") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreDamaged(f"{path} is not an emp-fastbuf store (not an SQLite database)")


def check_schema(conn: sqlite3.Connection, path: Path, *, allow_init: bool) -> bool:
    """True when the file is empty and must be initialised; raises for anything foreign
    (and closes ``conn`` then)."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        err = db_error(exc, f"cannot open the store at {path}")
        if isinstance(err, StoreDamaged | StoreBusy):
            raise err from None
        raise StoreError(f"{path} is not an emp-fastbuf store ({exc})") from None
    if app_id == 0 and version == 0 and n_objects == 0:
        if allow_init:
            return True
        conn.close()
        raise StoreError(f"{path} is not an emp-fastbuf store (empty database)")
    if app_id != APPLICATION_ID:
        conn.close()
        raise StoreError(f"{path} is not an emp-fastbuf store (SQLite application id {app_id:#x})")
    if version != SCHEMA_VERSION:
        conn.close()
        # No migrations: version 1 was never released (docs/store-schema.md).
        hint = ": move it away and the agent starts a new one" if version < SCHEMA_VERSION else ""
        raise StoreError(
            f"{path.name} at {path} has schema version {version}, "
            f"this emp-fastbuf reads version {SCHEMA_VERSION}{hint}"
        )
    return False


def init_schema(conn: sqlite3.Connection) -> None:
    """Create the tables in an empty file and mark it with our id and schema version."""
    # auto_vacuum must be chosen before the first table exists.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
