"""Received records into the spool, durably, before anyone is answered.

Requests that arrive together are written as one spool file (a group commit, one fsync,
like a ring batch): each waits until the file that holds its records is durable. The
committer also waits, at most ``_GATHER_MAX_S``, for requests that have arrived and
are still being read or decoded when it wakes: with a few senders in flight, their
records share a file instead of each paying for its own file, fsyncs and export. When
the spool is past 90% of its limit, or the request would take it past the limit,
nothing is taken (``SpoolFull``: HTTP 503 with Retry-After,
gRPC UNAVAILABLE), since the spool would evict the oldest files to make room; the same
when the spool cannot be written (disk full, read-only).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emp_fastbuf.agent.receiver.convert import Converted, Cumulative
from emp_fastbuf.agent.receiver.decode import Signal, convert_request
from emp_fastbuf.records import LaneChunk

if TYPE_CHECKING:
    from emp_fastbuf.agent.spool import Spool

__all__ = ["RETRY_AFTER_S", "Ingest", "SpoolFull"]

RETRY_AFTER_S = 2
# Past this share of its limit the spool takes no received data: the rest is room for the
# ring's batches, which would otherwise evict the oldest files.
HIGH_WATER = 0.9
# Most records one group commit gathers: the rest waits for the next file.
_GROUP_MAX_RECORDS = 200_000
# How long the committer waits for requests still being decoded: well under one fsync.
_GATHER_MAX_S = 0.002


class SpoolFull(Exception):
    """The spool cannot take the request now; the sender should retry later."""


@dataclass
class _Waiter:
    chunks: list[LaneChunk]
    records: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class ReceiverCounters:
    requests: dict[str, int] = field(default_factory=lambda: {"logs": 0, "traces": 0, "metrics": 0})
    records: int = 0
    rejected: int = 0
    refused: int = 0  # answered 503 / UNAVAILABLE: the spool was full or not writable
    bad_requests: int = 0  # answered 4xx
    commits: int = 0


class Ingest:
    """Shared by the HTTP and gRPC receivers: decode, convert, commit."""

    def __init__(self, spool: Spool, wake: threading.Event, max_bytes: int) -> None:
        self.spool = spool
        self.wake = wake
        self.max_bytes = max_bytes
        self.cumulative = Cumulative()
        self.counters = ReceiverCounters()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[_Waiter] = []
        self._decoding = 0  # requests between arrival and the commit queue
        self._local = threading.local()
        self._closed = False
        self._thread = threading.Thread(
            target=self._commit_loop, name="receiver-commit", daemon=True
        )
        self._thread.start()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, what, getattr(self.counters, what) + n)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request from its arrival (before its body is read) to its answer: the
        committer waits briefly for requests inside this before it writes a file."""
        with self._cond:
            self._decoding += 1
        self._local.active = True
        self._local.queued = False
        try:
            yield
        finally:
            self._local.active = False
            if not self._local.queued:
                with self._cond:
                    self._decoding -= 1
                    self._cond.notify()

    def accept(self, signal: Signal, body: bytes, content_type: str) -> Converted:
        """Convert a decompressed body and return once its records are in the spool.
        Raises ``BadRequest`` (see ``decode``) or ``SpoolFull``."""
        with self._lock:
            self.counters.requests[signal] += 1
        converted = convert_request(signal, body, content_type, self.cumulative)
        with self._lock:
            self.counters.rejected += converted.rejected
        if converted.chunks:
            self._commit(converted.chunks, len(body))
            with self._lock:
                self.counters.records += sum(len(c.records) for c in converted.chunks)
        return converted

    def _commit(self, chunks: list[LaneChunk], size: int) -> None:
        stats = self.spool.stats()
        limit = stats["limit_bytes"]
        if stats["bytes"] + size > limit or stats["bytes"] > limit * HIGH_WATER:
            self.count("refused")
            raise SpoolFull(f"the spool is full ({stats['bytes']} of {stats['limit_bytes']} bytes)")
        waiter = _Waiter(chunks, sum(len(c.records) for c in chunks))
        with self._cond:
            if self._closed:
                raise SpoolFull("the agent is stopping")
            self._queue.append(waiter)
            if getattr(self._local, "active", False) and not self._local.queued:
                # From arriving to queued in one lock section: the committer always
                # sees this request in one of the two.
                self._decoding -= 1
                self._local.queued = True
            self._cond.notify()
        waiter.done.wait()
        if waiter.error is not None:
            self.count("refused")
            raise SpoolFull(f"the spool cannot be written: {waiter.error}")

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                self._gather()
                group: list[_Waiter] = []
                records = 0
                while self._queue and (not group or records < _GROUP_MAX_RECORDS):
                    waiter = self._queue.pop(0)
                    group.append(waiter)
                    records += waiter.records
            error: BaseException | None = None
            try:
                self.spool.write([chunk for w in group for chunk in w.chunks])
            except Exception as exc:  # disk full, read-only: the senders retry
                error = exc
            else:
                self.count("commits")
                self.wake.set()
            for waiter in group:
                waiter.error = error
                waiter.done.set()

    def _gather(self) -> None:
        """With the lock held and a request queued: wait, at most ``_GATHER_MAX_S``, while
        other requests are still being decoded, so that they share this commit."""
        deadline = time.monotonic() + _GATHER_MAX_S
        while self._decoding > 0 and not self._closed:
            if sum(w.records for w in self._queue) >= _GROUP_MAX_RECORDS:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def close(self) -> None:
        """Commit what is queued, then stop the committer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def status(self) -> dict[str, object]:
        with self._lock:
            c = self.counters
            return {
                "requests": dict(c.requests),
                "records": c.records,
                "rejected": c.rejected,
                "refused": c.refused,
                "bad_requests": c.bad_requests,
                "commits": c.commits,
            }
