"""``--json`` output: one JSON object per line for each record or metric series (the
fields are listed in ``docs/cli.md``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TextIO

from emp_fastbuf.store import MetricSeries, StoredRecord
from emp_fastbuf.values import dumps_safe

_RFC3339 = "%Y-%m-%dT%H:%M:%S.{ns:09d}Z"


def format_time(unix_nano: int, template: str = _RFC3339) -> str:
    """The time in UTC as ``template`` says: strftime codes, then ``{ns}`` and ``{ms}``
    for the nanoseconds and milliseconds into the second. By default RFC 3339 with
    nanoseconds: ``2024-05-01T12:00:00.123456789Z``. A time no calendar date can show
    (only a damaged store holds one) is the number of ns."""
    seconds, nanos = divmod(unix_nano, 10**9)
    try:
        stamp = datetime.fromtimestamp(seconds, UTC).strftime(template)
    except (ValueError, OverflowError, OSError):
        return f"{unix_nano}ns"
    return stamp.format(ns=nanos, ms=nanos // 10**6)


def record_json(rec: StoredRecord) -> dict[str, Any]:
    """The JSON object of one record (fields listed in docs/cli.md)."""
    out: dict[str, Any] = {
        "time_unix_nano": rec.time_unix_nano,
        "time": format_time(rec.time_unix_nano),
        "kind": rec.kind,
        "name": rec.body if rec.kind == "log" else rec.name,
        "body": rec.body if rec.kind == "log" else None,
        "severity": rec.severity,
        "trace_id": rec.trace_id,
        "span_id": rec.span_id,
        "parent_span_id": rec.parent_span_id,
        "job_id": rec.job_id,
        "machine_id": rec.machine_id,
        "worker_id": rec.worker_id,
        "service": rec.service,
        "attributes": rec.attributes,
    }
    if rec.kind == "span":
        start = rec.start_unix_nano if rec.start_unix_nano is not None else rec.time_unix_nano
        out["start_unix_nano"] = start
        out["end_unix_nano"] = rec.time_unix_nano
        out["duration_ns"] = rec.time_unix_nano - start
        out["status"] = rec.status
    elif rec.kind == "metric":
        out["instrument"] = rec.instrument
        out["unit"] = rec.unit
        out["value"] = rec.value
        out["count"] = rec.count
        out["sum"] = rec.sum
        out["min"] = rec.min
        out["max"] = rec.max
    return out


def metric_json(series: MetricSeries) -> dict[str, Any]:
    """The JSON object of one metric series (fields listed in docs/cli.md)."""
    out: dict[str, Any] = {
        "name": series.name,
        "kind": series.instrument,
        "unit": series.unit,
        "service": series.service,
        "machine_id": series.machine_id,
        "worker_id": series.worker_id,
        "attributes": series.attributes,
        "time_unix_nano": series.time_unix_nano,
        "time": format_time(series.time_unix_nano),
    }
    if series.instrument == "histogram":
        out.update(
            count=series.count,
            sum=series.sum,
            min=series.min,
            max=series.max,
            p50=series.p50,
            p90=series.p90,
            p99=series.p99,
            bounds=series.bounds,
            bucket_counts=series.bucket_counts,
        )
    else:
        out["value"] = series.value
    return out


def write_line(obj: dict[str, Any], out: TextIO) -> None:
    """Write one object as a line; a NaN or an infinity is written as a string."""
    out.write(dumps_safe(obj, ensure_ascii=False) + "\n")
