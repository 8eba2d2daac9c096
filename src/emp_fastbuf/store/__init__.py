"""The embedded local store: decoded records in one SQLite file (WAL), and the queries
the ``fastbuf`` CLI runs against it.

The agent is the only writer; any number of CLI processes read at the same time (WAL lets
readers see committed batches while the writer goes on). The schema is versioned and
described in ``docs/store-schema.md``.

``Store`` is one class made of its parts: ``connection`` (opening the file, moving a
damaged one aside), ``ingest`` (writing), ``retention``, ``query`` and ``jobs`` (the
job summaries and failure reports, on top of ``query``); ``schema`` holds
the tables, ``rows`` builds a record's row, ``model`` is what queries return.
"""

from __future__ import annotations

import threading
from pathlib import Path

from emp_fastbuf.errors import StoreBusy, StoreDamaged, StoreError
from emp_fastbuf.store.ingest import Ingest
from emp_fastbuf.store.jobs import Jobs
from emp_fastbuf.store.model import (
    JobFailure,
    JobSummary,
    JobView,
    MachineSeries,
    MetricSeries,
    SpanNode,
    StoredRecord,
    TraceView,
)
from emp_fastbuf.store.query import TRACE_ID_DIGITS
from emp_fastbuf.store.retention import DEFAULT_MAX_BYTES, DEFAULT_RETENTION_S, Retention
from emp_fastbuf.store.rows import MAX_TIME_UNIX_NANO, rows_by_kind, store_row
from emp_fastbuf.store.schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_RETENTION_S",
    "MAX_TIME_UNIX_NANO",
    "SCHEMA_VERSION",
    "TRACE_ID_DIGITS",
    "JobFailure",
    "JobSummary",
    "JobView",
    "MachineSeries",
    "MetricSeries",
    "SpanNode",
    "Store",
    "StoreBusy",
    "StoreDamaged",
    "StoreError",
    "StoredRecord",
    "TraceView",
    "rows_by_kind",
    "store_row",
]


class Store(Ingest, Retention, Jobs):
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
        self._lock = threading.RLock()
        self._source_ids = {}
        self._sources = {}
        self.clamped_times = 0
        self.write_failures = 0
        self._retry_at = 0.0
        self._reopen = False
        try:
            self._conn = self._open()
        except StoreDamaged as exc:
            if readonly or not recover:
                raise
            self._conn = self._replace_damaged(str(exc))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
