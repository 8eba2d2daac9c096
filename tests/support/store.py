"""Sample records for the store and the CLI: two jobs on three workers of two machines,
one trace with its spans, logs, events and metrics of every instrument; and a way to damage
a store file."""

from __future__ import annotations

import os
from pathlib import Path

from emp_fastbuf import records
from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    GAUGE,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    STATUS_ERROR,
    STATUS_OK,
    UPDOWNCOUNTER,
    Record,
    Resource,
    SpanEvent,
)

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
MS = 1_000_000

TRACE_A = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
TRACE_B = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
# Span ids in trace A: the job (root) span, and load, train and step under it.
ROOT, LOAD, TRAIN, STEP = (bytes([i]) * 8 for i in (1, 2, 3, 4))

W1 = Resource({"service.name": "trainer", "emp.machine_id": "m1", "emp.worker_id": "w1"})
W2 = Resource({"service.name": "trainer", "emp.machine_id": "m1", "emp.worker_id": "w2"})
W3 = Resource({"service.name": "trainer", "emp.machine_id": "m2", "emp.worker_id": "w3"})
M1 = Resource({"service.name": "emp-fastbuf-agent", "emp.machine_id": "m1"})
M2 = Resource({"service.name": "emp-fastbuf-agent", "emp.machine_id": "m2"})

JOB_A = {"job_id": "job-a"}


def span(
    name: str,
    span_id: bytes,
    parent: bytes | None,
    start_s: float,
    end_s: float,
    *,
    trace: bytes = TRACE_A,
    status: int = records.STATUS_UNSET,
    events: list[SpanEvent] | None = None,
    context: dict[str, object] | None = None,
) -> Record:
    return Record(
        kind=SPAN,
        time_unix_nano=T0 + int(end_s * S),
        start_unix_nano=T0 + int(start_s * S),
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        status_code=status,
        events=events or [],
        context=dict(JOB_A if context is None else context),
    )


def log(
    body: str,
    at_s: float,
    *,
    severity: int = 9,
    text: str = "INFO",
    trace: bytes | None = None,
    span_id: bytes | None = None,
    context: dict[str, object] | None = None,
    attributes: dict[str, object] | None = None,
) -> Record:
    return Record(
        kind=LOG,
        time_unix_nano=T0 + int(at_s * S),
        severity_number=severity,
        severity_text=text,
        body=body,
        trace_id=trace,
        span_id=span_id,
        context=dict(context or {}),
        attributes=dict(attributes or {}),
    )


def metric(
    name: str,
    instrument: int,
    at_s: float,
    value: float = 0,
    *,
    values: list[float] | None = None,
    bounds: list[float] | None = None,
    context: dict[str, object] | None = None,
    attributes: dict[str, object] | None = None,
    unit: str = "",
) -> Record:
    return Record(
        kind=METRIC,
        time_unix_nano=T0 + int(at_s * S),
        instrument=instrument,
        name=name,
        unit=unit,
        value=value,
        values=list(values or []),
        bounds=list(bounds or []),
        context=dict(context or {}),
        attributes=dict(attributes or {}),
    )


def sample_groups() -> list[tuple[Resource, list[Record]]]:
    """Job 'job-a' on worker w1 (machine m1) from T0+1s to T0+5s with trace A; job 'job-b'
    on w3 (machine m2); unrelated records on w2; machine-level gauges on m1 and m2."""
    w1 = [
        span("job", ROOT, None, 1.0, 5.0, status=STATUS_OK),
        span("load", LOAD, ROOT, 1.0, 2.0),
        span(
            "step",
            STEP,
            TRAIN,
            3.0,
            3.5,
            events=[SpanEvent("checkpoint", T0 + int(3.2 * S), {"path": "/ckpt/1"})],
        ),
        span("train", TRAIN, ROOT, 2.0, 4.5, status=STATUS_ERROR),
        log("loading data", 1.5, trace=TRACE_A, span_id=LOAD, context={**JOB_A, "tenant": "acme"}),
        log("slow step", 3.3, severity=13, text="WARN", trace=TRACE_A, span_id=STEP, context=JOB_A),
        log("train failed", 4.4, severity=17, text="", trace=TRACE_A, span_id=TRAIN, context=JOB_A),
        Record(
            kind=EVENT,
            time_unix_nano=T0 + 4 * S,
            name="epoch_end",
            trace_id=TRACE_A,
            span_id=TRAIN,
            context=dict(JOB_A),
            attributes={"epoch": 3},
        ),
        # In trace A but its span never reached the store.
        log("lost span", 4.6, trace=TRACE_A, span_id=b"\x09" * 8, context=JOB_A),
        metric("requests", COUNTER, 1.1, 1, context=JOB_A),
        metric("requests", COUNTER, 2.1, 2, context=JOB_A),
        metric("requests", COUNTER, 3.1, 3, context=JOB_A),
        metric("queue.depth", UPDOWNCOUNTER, 1.2, 5),
        metric("queue.depth", UPDOWNCOUNTER, 2.2, -2),
        metric("queue.depth", UPDOWNCOUNTER, 3.2, 1),
        metric("latency", HISTOGRAM, 3.0, values=[float(v) for v in range(1, 101)], unit="ms"),
        metric("sizes", HISTOGRAM, 3.5, values=[5.0, 10.0, 15.0], bounds=[10.0, 20.0]),
        metric("sizes", HISTOGRAM, 3.6, values=[20.0, 25.0, 10.000001], bounds=[10.0, 20.0]),
        metric("gpu.temp", GAUGE, 2.0, 60.5, attributes={"gpu": 0}),
        metric("gpu.temp", GAUGE, 2.5, 61.5, attributes={"gpu": 0}),
        metric("gpu.temp", GAUGE, 2.5, 70.0, attributes={"gpu": 1}),
    ]
    w2 = [
        log("idle", 0.5),
        log("heartbeat", 6.0, severity=5, text="DEBUG"),
        metric("requests", COUNTER, 1.0, 10),
    ]
    w3 = [
        log("job b running", 2.5, context={"job_id": "job-b"}),
        Record(
            kind=EVENT,
            time_unix_nano=T0 + int(2.6 * S),
            name="job b event",
            context={"job_id": "job-b"},
        ),
    ]
    m1 = [
        metric("system.cpu.utilization", GAUGE, 0.5, 0.1),
        metric("system.cpu.utilization", GAUGE, 2.5, 0.5),
        metric("system.cpu.utilization", GAUGE, 6.0, 0.7),
    ]
    m2 = [metric("system.cpu.utilization", GAUGE, 2.5, 0.9)]
    return [(W1, w1), (W2, w2), (W3, w3), (M1, m1), (M2, m2)]


SAMPLE_COUNT = sum(len(recs) for _, recs in sample_groups())


def damage_pages(path: Path) -> None:
    """Random bytes over every page but the first (the header and the schema survive)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = os.urandom(len(data) - page)
    path.write_bytes(bytes(data))
