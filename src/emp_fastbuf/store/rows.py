"""The Python row builders: what one decoded record becomes in its table.

A row is a record's columns without the id and source columns (the store adds them).
``_transcode.store_rows`` builds the same tuples from raw records natively; ``store_row``
is the reference it is tested against, JSON byte for byte.
"""

from __future__ import annotations

import array
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from emp_fastbuf.records import EVENT, HISTOGRAM, LOG, METRIC, SPAN, Record, value_sum
from emp_fastbuf.values import json_safe

# SQLite integers are signed 64-bit: a later time (the year 2262 on; the record format
# allows up to 2**64 - 1 ns) is stored as this one.
MAX_TIME_UNIX_NANO = 2**63 - 1

# Which of the four row lists (``rows_by_kind``, ``Store.ingest_rows``) a row goes in.
ROW_LOG, ROW_EVENT, ROW_SPAN, ROW_METRIC = 0, 1, 2, 3

Row = tuple[Any, ...]

_NATIVE_LE = sys.byteorder == "little"

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


def text(value: object) -> str | None:
    """An attribute value as the text a TEXT column holds (bytes as hex)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def f64_blob(values: Sequence[float]) -> bytes:
    """Histogram values as ``hist_values`` holds them: little-endian float64s."""
    arr = array.array("d", values)
    if not _NATIVE_LE:
        arr.byteswap()
    return arr.tobytes()


def f64_values(blob: bytes | None) -> array.array[float]:
    """The values of a ``hist_values`` blob (``f64_blob`` reversed)."""
    arr = array.array("d")
    if blob:
        arr.frombytes(blob)
        if not _NATIVE_LE:
            arr.byteswap()
    return arr


# ---- rows ------------------------------------------------------------------------------


def _job_and_attributes(r: Record) -> tuple[str | None, str | None]:
    """The record's job id (taken out of its context) and its other context and own
    attributes as one JSON object (None when there are none)."""
    ctx = r.context
    if not ctx:
        return None, (_to_json(r.attributes) if r.attributes else None)
    raw = ctx.get("job_id")
    job = raw if isinstance(raw, str) else text(raw)
    if job is not None and len(ctx) == 1:
        return job, (_to_json(r.attributes) if r.attributes else None)
    merged = {k: v for k, v in ctx.items() if k != "job_id"}
    merged.update(r.attributes)
    return job, (_to_json(merged) if merged else None)


def store_row(r: Record) -> tuple[int, Row] | None:
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


def _span_row(r: Record, job: str | None, attrs: str | None) -> Row:
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


def _metric_row(r: Record, job: str | None, attrs: str | None) -> Row:
    if r.instrument == HISTOGRAM:
        values = [v for v in r.values if v == v]  # NaN has no place in a distribution
        count = len(values)
        return (
            _time(r.time_unix_nano), job, r.name, r.instrument, r.unit, None, count,
            value_sum(values) if count else 0.0,
            min(values) if count else None, max(values) if count else None,
            f64_blob(values), _to_json(list(r.bounds)) if r.bounds else None, attrs,
        )  # fmt: skip
    return (
        _time(r.time_unix_nano), job, r.name, r.instrument, r.unit, r.value,
        None, None, None, None, None, None, attrs,
    )  # fmt: skip


_ROW_KINDS = frozenset((LOG, EVENT, SPAN, METRIC))


def rows_by_kind(recs: Iterable[Record]) -> list[list[Row]]:
    """Decoded records -> their rows, in four lists: logs, events, spans, metrics."""
    out: list[list[Row]] = [[], [], [], []]
    for r in recs:
        built = store_row(r)
        if built is not None:
            out[built[0]].append(built[1])
    return out
