"""What the store's queries return: records as read back, trace trees and metric series."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emp_fastbuf.records import STATUS_ERROR, STATUS_OK, STATUS_UNSET, severity_name

_STATUS_NAMES = {STATUS_UNSET: "unset", STATUS_OK: "ok", STATUS_ERROR: "error"}


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
        return _STATUS_NAMES.get(self.status_code or STATUS_UNSET, "unset")

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
class JobView:
    """A job on one timeline (``Store.correlate``): its own records (spans at their start,
    with their span events; logs; events; metric updates made in its context), and the
    machine-level metric updates of the machines it ran on inside its time window, from
    its first record to its last, in timeline order."""

    job_id: str
    records: list[StoredRecord]
    machine_ids: list[str]  # the machines the job ran on, sorted
    start_unix_nano: int  # the job's time window
    end_unix_nano: int

    def is_machine(self, rec: StoredRecord) -> bool:
        """Whether ``rec`` is one of the machine metric updates, not the job's own."""
        return rec.kind == "metric" and rec.job_id != self.job_id

    @property
    def machine_updates(self) -> int:
        """How many of the records are machine metric updates."""
        return sum(1 for r in self.records if self.is_machine(r))


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


@dataclass(slots=True)
class JobSummary:
    """One job: the records (logs, events, spans, metric updates) whose context has its
    ``job_id``. Failed when one of its spans ended with status error or one of its logs is
    at ERROR or above."""

    job_id: str
    failed: bool
    start_unix_nano: int  # the earliest record time or span start
    end_unix_nano: int  # the latest record time or span end
    records: int
    machines: list[str]  # the machine ids of its records' sources, sorted
    workers: list[str]  # their worker ids, sorted
    # The first line of the earliest ERROR+ log (its exception's ``TYPE: message`` when it
    # carries one, else its body), else the status message (or the name) of the errored
    # span that ended first; None for a job that did not fail.
    first_error: str | None

    @property
    def status(self) -> str:
        """'failed' or 'ok'."""
        return "failed" if self.failed else "ok"

    @property
    def duration_ns(self) -> int:
        return self.end_unix_nano - self.start_unix_nano


@dataclass(slots=True)
class JobFailure:
    """What the store says about why a job failed (``Store.job_failure``). For a job that
    did not fail only ``job`` is filled in."""

    job: JobSummary
    # The earliest ERROR+ log with exception.* attributes, else the earliest ERROR+ log,
    # else the errored span that ended first.
    failure: StoredRecord | None = None
    # The failing span and its ancestors, root first (the failing span last); empty when
    # the failure belongs to no stored span and no span errored.
    span_path: list[StoredRecord] = field(default_factory=list)
    # The exception.* attributes, from the failure log, else from an "exception" event of
    # the failing span or of a span above it.
    exception: dict[str, Any] | None = None
    exception_source: str | None = None  # "log" or "span event"
    # The job's last logs before the failure (not the failure itself), oldest first.
    logs: list[StoredRecord] = field(default_factory=list)


@dataclass(slots=True)
class MachineSeries:
    """One machine-level metric series over a time window, oldest value first
    (``Store.machine_series``)."""

    name: str
    unit: str
    machine_id: str
    attributes: dict[str, Any]
    times: list[int]
    values: list[float]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def last(self) -> float:
        return self.values[-1]
