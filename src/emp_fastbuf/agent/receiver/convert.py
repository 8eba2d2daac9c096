"""Received OTLP requests -> ring-format records (docs/record-format.md), one
``LaneChunk`` per (resource, scope), so that received data flows exactly like ring data:
the spool, the exporter with its retries, the store, dataset routing, redaction.

The input is a parsed ``Export*ServiceRequest`` (upb-backed protobuf, from protobuf or
OTLP/JSON bodies alike). A record the ring format cannot hold (an id of the wrong length,
a severity above 24, a span without ids, an exponential histogram) is rejected and
counted: the request is answered with OTLP partial success. Values longer than the
format's fields are truncated at a character boundary and counted in the record's
``truncated_values``.

Metrics: the ring's counters are increments that the agent aggregates into cumulative
sums, and its histograms carry values. A delta sum point is one increment; a cumulative
sum point becomes the increment since the last point of its series (``Cumulative``
keeps the last point of each series; the first point of a series that started before
this agent counts from then on, not from zero, so an agent restart never counts twice).
Histogram points become one value per counted observation at the upper bound of its
bucket (``max`` for the overflow bucket): counts and buckets are exact, the sum is that of
the bucket bounds.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    FLAG_HAS_LIMITS,
    FLAG_HAS_TRACE,
    FLAG_HAS_TRACE_FLAGS,
    FORMAT_VERSION,
    GAUGE,
    HISTOGRAM,
    LOG,
    MAX_HISTOGRAM_VALUES,
    MAX_SEVERITY,
    MAX_SPAN_KIND,
    MAX_STATUS_CODE,
    METRIC,
    RESOURCE,
    SPAN,
    T_ARRAY,
    UPDOWNCOUNTER,
    LaneChunk,
)

__all__ = ["Converted", "Cumulative", "convert_logs", "convert_metrics", "convert_traces"]

_HEAD = struct.Struct("<BBBBQ")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_LIMITS = struct.Struct("<HH")
_SPAN_MID = struct.Struct("<8sQBBB")
_NO_ATTRS = b"\x00\x00"
_U16_MAX = 0xFFFF
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
# Observations one histogram point may carry (values are materialized per observation).
MAX_HISTOGRAM_OBSERVATIONS = MAX_HISTOGRAM_VALUES
# Series whose last cumulative point is kept; beyond it the least recently seen go.
MAX_CUMULATIVE_SERIES = 100_000


@dataclass
class Converted:
    """What one request became: chunks to spool, and what was rejected and why."""

    chunks: list[LaneChunk] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def message(self) -> str:
        """The partial-success error message: each reason with its count."""
        return "; ".join(f"{n} {reason}" for reason, n in self.reasons.items())


class Reject(Exception):
    """Internal: the record cannot be held by the ring format."""


class _Cut:
    """Counts the values truncated while one record is encoded."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def _utf8(text: str, limit: int, cut: _Cut) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return data
    cut.n += 1
    # Back up to a character boundary: never split a UTF-8 sequence.
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def _str8(text: str, cut: _Cut) -> bytes:
    data = _utf8(text, 0xFF, cut)
    return _U8.pack(len(data)) + data


def _str16(text: str, cut: _Cut) -> bytes:
    data = _utf8(text, _U16_MAX, cut)
    return _U16.pack(len(data)) + data


def _str32(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return _U32.pack(len(data)) + data


def _any_python(value: Any) -> Any:
    """An ``AnyValue`` as plain Python (for kvlist and nested array text)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_python(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_python(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _any_text(value: Any) -> str:
    """A log body as text: strings as they are, anything else as JSON."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value)
    if which is None:
        return ""
    return json.dumps(_any_python(value), separators=(",", ":"), ensure_ascii=False)


def _scalar(value: Any, which: str | None, cut: _Cut, in_array: bool) -> bytes:
    if which == "string_value":
        data: bytes = value.string_value.encode("utf-8", "surrogatepass")
        return b"\x01" + _U32.pack(len(data)) + data
    if which == "int_value":
        return b"\x02" + _I64.pack(value.int_value)
    if which == "double_value":
        return b"\x03" + _F64.pack(value.double_value)
    if which == "bool_value":
        return b"\x04\x01" if value.bool_value else b"\x04\x00"
    if which == "bytes_value":
        raw: bytes = value.bytes_value
        return b"\x05" + _U32.pack(len(raw)) + raw
    if which is None:
        return b"\x00"
    if which == "array_value" and not in_array:
        items = value.array_value.values
        if len(items) > _U16_MAX:
            cut.n += 1
            items = items[:_U16_MAX]
        parts = [_U8.pack(T_ARRAY), _U16.pack(len(items))]
        for item in items:
            parts.append(_scalar(item, item.WhichOneof("value"), cut, True))
        return b"".join(parts)
    # A kvlist, or an array inside an array: the format has neither, so their JSON text.
    text = json.dumps(_any_python(value), separators=(",", ":"), ensure_ascii=False)
    data = text.encode("utf-8", "surrogatepass")
    return b"\x01" + _U32.pack(len(data)) + data


def _attrs(kvs: Sequence[Any], cut: _Cut, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """An attrlist from repeated ``KeyValue`` (and ``extra`` string attributes)."""
    extra = tuple(extra)
    n = len(kvs) + len(extra)
    if n == 0:
        return _NO_ATTRS
    if n > _U16_MAX:
        cut.n += 1
        kvs = kvs[: _U16_MAX - len(extra)]
        n = _U16_MAX
    parts = [_U16.pack(n)]
    for kv in kvs:
        value = kv.value
        parts.append(_str16(kv.key, cut))
        parts.append(_scalar(value, value.WhichOneof("value"), cut, False))
    for key, text in extra:
        parts.append(_str16(key, cut))
        parts.append(b"\x01" + _str32(text))
    return b"".join(parts)


def resource_blob(resource: Any, scope: Any) -> bytes:
    cut = _Cut()
    head = _U8.pack(FORMAT_VERSION) + _U8.pack(RESOURCE)
    return b"".join(
        (
            head,
            _str16(scope.name, cut),
            _str16(scope.version, cut),
            _attrs(resource.attributes, cut),
        )
    )


def _ids(trace_id: bytes, span_id: bytes, required: bool) -> bytes | None:
    """The header ids, or None for a record outside a trace. Raises ``Reject`` for ids of
    the wrong length (OTLP: malformed), or for a span without both."""
    if not trace_id and not span_id:
        if required:
            raise Reject("without trace_id or span_id")
        return None
    if len(trace_id) != 16 or (span_id and len(span_id) != 8):
        raise Reject("with an id of the wrong length")
    if trace_id == _ZERO_TRACE or not span_id or span_id == _ZERO_SPAN:
        if required:
            raise Reject("without trace_id or span_id")
        return None  # a log with a trace but no span: kept, outside the trace
    return trace_id + span_id


def _record(kind: int, time_ns: int, ids: bytes | None, trace_flags: int | None,
            dropped: int, cut: _Cut, body: bytes, attrs: bytes) -> bytes:  # fmt: skip
    flags = 0
    parts = [b""]
    if ids is not None:
        flags |= FLAG_HAS_TRACE
        parts.append(ids)
        if trace_flags is not None and trace_flags != 1:
            flags |= FLAG_HAS_TRACE_FLAGS
            parts.append(_U8.pack(trace_flags))
    if dropped or cut.n:
        flags |= FLAG_HAS_LIMITS
        parts.append(_LIMITS.pack(min(dropped, _U16_MAX), min(cut.n, _U16_MAX)))
    parts[0] = _HEAD.pack(FORMAT_VERSION, kind, flags, 0, time_ns)
    parts.append(body)
    parts.append(_NO_ATTRS)  # context: a received record has no fastbuf.context()
    parts.append(attrs)
    return b"".join(parts)


def log_record(rec: Any, now: int) -> bytes:
    severity = rec.severity_number
    if not 0 <= severity <= MAX_SEVERITY:
        raise Reject("with a severity_number above 24")
    cut = _Cut()
    ids = _ids(rec.trace_id, rec.span_id, False)
    time_ns = rec.time_unix_nano or rec.observed_time_unix_nano or now
    has_body = rec.HasField("body") and rec.body.WhichOneof("value") is not None
    event_name = rec.event_name
    if event_name and not has_body and not severity and not rec.severity_text:
        body = _str16(event_name, cut)
        kind = EVENT
        extra: tuple[tuple[str, str], ...] = ()
    else:
        text = _any_text(rec.body) if has_body else ""
        body = _str8(rec.severity_text, cut) + _str32(text)
        body = _U8.pack(severity) + body
        kind = LOG
        extra = (("event.name", event_name),) if event_name else ()
    attrs = _attrs(rec.attributes, cut, extra)
    flags = rec.flags & 0xFF
    return _record(kind, time_ns, ids, flags, rec.dropped_attributes_count, cut, body, attrs)


def convert_logs(request: Any) -> Converted:
    """An ``ExportLogsServiceRequest`` as LOG (and EVENT) records."""
    out = Converted()
    now = time.time_ns()
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        for scope_logs in resource_logs.scope_logs:
            records: list[bytes] = []
            for rec in scope_logs.log_records:
                try:
                    records.append(log_record(rec, now))
                except Reject as exc:
                    out.reject(f"log records {exc}")
            if records:
                out.chunks.append(LaneChunk(resource_blob(resource, scope_logs.scope), records))
                out.accepted += len(records)
    return out


def _span(span: Any) -> bytes:
    ids = _ids(span.trace_id, span.span_id, True)
    assert ids is not None
    parent = span.parent_span_id
    if parent and len(parent) != 8:
        raise Reject("with an id of the wrong length")
    status = span.status.code
    kind = span.kind
    if not 0 <= status <= MAX_STATUS_CODE or not 0 <= kind <= MAX_SPAN_KIND:
        raise Reject("with an unknown status code or span kind")
    cut = _Cut()
    # Low 8 bits: the W3C trace flags. A sender that sets none exported a sampled span.
    trace_flags = span.flags & 0xFF if span.flags else 1
    parts = [
        _str16(span.name, cut),
        _SPAN_MID.pack(parent or _ZERO_SPAN, span.start_time_unix_nano, status, kind, trace_flags),
        _str16(span.status.message, cut),
    ]
    events = span.events
    if len(events) > _U16_MAX:
        cut.n += 1
        events = events[:_U16_MAX]
    parts.append(_U16.pack(len(events)))
    for ev in events:
        parts.append(_str16(ev.name, cut))
        parts.append(struct.pack("<Q", ev.time_unix_nano))
        parts.append(_attrs(ev.attributes, cut))
    links = [link for link in span.links if len(link.trace_id) == 16 and len(link.span_id) == 8]
    if len(links) != len(span.links):
        cut.n += 1  # links with ids the format cannot hold are not kept
    if len(links) > _U16_MAX:
        cut.n += 1
        links = links[:_U16_MAX]
    parts.append(_U16.pack(len(links)))
    for link in links:
        parts.append(link.trace_id + link.span_id)
        parts.append(_attrs(link.attributes, cut))
    body = b"".join(parts)
    attrs = _attrs(span.attributes, cut)
    time_ns = span.end_time_unix_nano or span.start_time_unix_nano
    return _record(SPAN, time_ns, ids, None, span.dropped_attributes_count, cut, body, attrs)


def convert_traces(request: Any) -> Converted:
    """An ``ExportTraceServiceRequest`` as SPAN records."""
    out = Converted()
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource
        for scope_spans in resource_spans.scope_spans:
            records: list[bytes] = []
            for span in scope_spans.spans:
                try:
                    records.append(_span(span))
                except Reject as exc:
                    out.reject(f"spans {exc}")
            if records:
                out.chunks.append(LaneChunk(resource_blob(resource, scope_spans.scope), records))
                out.accepted += len(records)
    return out


_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


class Cumulative:
    """The last cumulative point of each received series, to turn the next into an
    increment. Thread-safe; bounded (the least recently seen series are forgotten, and
    count from their next point on)."""

    def __init__(self, started_ns: int | None = None) -> None:
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self._last: OrderedDict[tuple[object, ...], tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def delta(self, key: tuple[object, ...], start_ns: int, value: Any, zero: Any) -> Any | None:
        """The increment from the series' last point to ``value``; None when there is
        nothing to count yet (the first point of a series that started before this
        agent: what it held up to then was counted by whoever saw it)."""
        with self._lock:
            last = self._last.pop(key, None)
            self._last[key] = (start_ns, value)
            if len(self._last) > MAX_CUMULATIVE_SERIES:
                self._last.popitem(last=False)
        if last is not None and last[0] == start_ns:
            previous = last[1]
        elif last is None and start_ns and start_ns < self.started_ns:
            return None
        else:
            previous = zero  # a new series, or one that restarted (new start time)
        return _minus(value, previous)


def _minus(value: Any, previous: Any) -> Any:
    if isinstance(value, tuple):
        if len(value) != len(previous):
            return value  # the buckets changed: the series restarted
        counts = tuple(a - b for a, b in zip(value, previous, strict=True))
        return value if any(c < 0 for c in counts) else counts  # counts went down: reset
    return value - previous


def _metric_head(instrument: int, metric: Any, cut: _Cut) -> bytes:
    return b"".join(
        (
            _U8.pack(instrument),
            _str16(metric.name, cut),
            _str8(metric.unit, cut),
            _str16(metric.description, cut),
        )
    )


def _point_key(res_key: bytes, metric: Any, dp: Any) -> tuple[object, ...]:
    attrs = tuple(sorted((kv.key, kv.value.SerializeToString()) for kv in dp.attributes))
    return (res_key, metric.name, metric.unit, attrs)


def _number(dp: Any) -> int | float:
    return int(dp.as_int) if dp.WhichOneof("value") == "as_int" else float(dp.as_double)


def _number_record(instrument: int, metric: Any, dp: Any, value: int | float) -> bytes:
    cut = _Cut()
    head = _metric_head(instrument, metric, cut)
    if isinstance(value, int):
        tail = b"\x02" + _I64.pack(max(min(value, (1 << 63) - 1), -(1 << 63)))
    else:
        tail = b"\x03" + _F64.pack(value)
    attrs = _attrs(dp.attributes, cut)
    time_ns = dp.time_unix_nano or time.time_ns()
    return _record(METRIC, time_ns, None, None, 0, cut, head + tail, attrs)


def _histogram_records(metric: Any, dp: Any, counts: Sequence[int]) -> list[bytes]:
    bounds = list(dp.explicit_bounds)
    if len(counts) != len(bounds) + 1 or any(not math.isfinite(b) for b in bounds):
        raise Reject("histogram data points with bucket counts that do not match the bounds")
    if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
        raise Reject("histogram data points whose bounds do not increase")
    if len(bounds) > _U16_MAX:
        raise Reject("histogram data points with too many bounds")
    total = sum(counts)
    if total > MAX_HISTOGRAM_OBSERVATIONS:
        raise Reject(
            f"histogram data points of more than {MAX_HISTOGRAM_OBSERVATIONS} observations"
        )
    if total == 0:
        return []
    if bounds:
        top = (
            dp.max
            if dp.HasField("max") and dp.max > bounds[-1]
            else math.nextafter(bounds[-1], math.inf)
        )
        points = [*bounds, top]
        bound_bytes = _U16.pack(len(bounds)) + struct.pack(f"<{len(bounds)}d", *bounds)
    else:
        # No bounds: one bucket; its observations at their mean (the ring's default
        # bounds then bucket them).
        points = [dp.sum / dp.count if dp.count else 0.0]
        bound_bytes = None
    values: list[float] = []
    for point, n in zip(points, counts, strict=True):
        values.extend([point] * n)
    cut = _Cut()
    head = _metric_head(HISTOGRAM, metric, cut)
    attrs = _attrs(dp.attributes, cut)
    body = head + _U32.pack(len(values)) + struct.pack(f"<{len(values)}d", *values)
    if bound_bytes is None:
        # The ring's empty bounds mean the default bounds; keep them explicit here.
        from emp_fastbuf.records import DEFAULT_HISTOGRAM_BOUNDS as default

        bound_bytes = _U16.pack(len(default)) + struct.pack(f"<{len(default)}d", *default)
    time_ns = dp.time_unix_nano or time.time_ns()
    return [_record(METRIC, time_ns, None, None, 0, cut, body + bound_bytes, attrs)]


def convert_metrics(request: Any, state: Cumulative) -> Converted:
    """An ``ExportMetricsServiceRequest`` as METRIC records (see the module's docstring
    for sums and histograms). Exponential histograms and summaries are rejected."""
    out = Converted()
    for resource_metrics in request.resource_metrics:
        resource = resource_metrics.resource
        for scope_metrics in resource_metrics.scope_metrics:
            blob = resource_blob(resource, scope_metrics.scope)
            records: list[bytes] = []
            for metric in scope_metrics.metrics:
                records.extend(_metric(metric, blob, state, out))
            if records:
                out.chunks.append(LaneChunk(blob, records))
    return out


def _metric(metric: Any, blob: bytes, state: Cumulative, out: Converted) -> list[bytes]:
    which = metric.WhichOneof("data")
    records: list[bytes] = []
    if which == "gauge":
        for dp in metric.gauge.data_points:
            records.append(_number_record(GAUGE, metric, dp, _number(dp)))
            out.accepted += 1
    elif which == "sum":
        data = metric.sum
        instrument = COUNTER if data.is_monotonic else UPDOWNCOUNTER
        cumulative = data.aggregation_temporality == _CUMULATIVE
        for dp in data.data_points:
            value: int | float | None = _number(dp)
            if cumulative:
                key = _point_key(blob, metric, dp)
                value = state.delta(key, dp.start_time_unix_nano, value, 0)
            if value is not None and instrument == COUNTER and value < 0:
                value = _number(dp)  # a monotonic sum that went down restarted
            records.append(_number_record(instrument, metric, dp, 0 if value is None else value))
            out.accepted += 1
    elif which == "histogram":
        data = metric.histogram
        cumulative = data.aggregation_temporality == _CUMULATIVE
        for dp in data.data_points:
            given: tuple[int, ...] = tuple(dp.bucket_counts)
            counts: tuple[int, ...] | None = given
            if cumulative:
                key = _point_key(blob, metric, dp)
                counts = state.delta(key, dp.start_time_unix_nano, given, (0,) * len(given))
            try:
                if counts is not None:
                    records.extend(_histogram_records(metric, dp, counts))
            except Reject as exc:
                out.reject(str(exc))
                continue
            out.accepted += 1
    elif which in ("exponential_histogram", "summary"):
        points = getattr(metric, which).data_points
        out.reject(f"{which.replace('_', ' ')} data points (not supported)", len(points))
    return records
