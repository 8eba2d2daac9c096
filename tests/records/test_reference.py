"""The pure-Python reference codec: round trips, strict encoding, and a decoder that turns
every malformed input into ``CorruptRecord`` (docs/record-format.md)."""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emp_fastbuf.records import (
    COUNTER,
    DEFAULT_HISTOGRAM_BOUNDS,
    EVENT,
    FLAG_HAS_LIMITS,
    FLAG_HAS_TRACE,
    FLAG_HAS_TRACE_FLAGS,
    GAUGE,
    HISTOGRAM,
    LOG,
    MAX_HISTOGRAM_VALUES,
    METRIC,
    SPAN,
    STATUS_ERROR,
    UPDOWNCOUNTER,
    CorruptRecord,
    Record,
    Resource,
    SpanEvent,
    SpanLink,
    reference,
)
from support import CORPUS
from support.strategies import keys, records, values

TRACE = bytes(range(1, 17))
SPAN_ID = bytes(range(0xA1, 0xA9))
PARENT = bytes(range(0xB1, 0xB9))
T0 = 1_700_000_000_123_456_789
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
INTERNAL = "internal decoder error"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- helpers ---------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (records compare field by field)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and type(a) is type(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (Record, SpanEvent, SpanLink, Resource)):
        return type(a) is type(b) and all(
            same(getattr(a, f), getattr(b, f)) for f in type(a).__slots__
        )
    return type(a) is type(b) and bool(a == b)


def roundtrip(rec: Record) -> Record:
    buf = reference.encode_record(rec)
    out = reference.decode_record(buf)
    # The encoding is canonical: encoding the decoded record gives the same bytes.
    assert reference.encode_record(out) == buf
    return out


def decode_or_corrupt(buf: bytes) -> Record | None:
    """Decode; a CorruptRecord (never another exception) gives None."""
    try:
        return reference.decode_record(buf)
    except CorruptRecord as exc:
        assert INTERNAL not in str(exc), str(exc)
        assert str(exc)
        return None


# Hand-building blocks for malformed inputs.
def head(kind: int = LOG, flags: int = 0, version: int = 1, reserved: int = 0) -> bytes:
    return struct.pack("<BBBBQ", version, kind, flags, reserved, T0)


def s8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def s16(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def s32(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def alist(*entries: bytes) -> bytes:
    return struct.pack("<H", len(entries)) + b"".join(entries)


def entry(key: bytes, tag: int, value: bytes = b"") -> bytes:
    return s16(key) + bytes([tag]) + value


NO_ATTRS = alist()
LOG_BODY = bytes([9]) + s8(b"INFO") + s32(b"hello")
GOOD_LOG = head() + LOG_BODY + NO_ATTRS + NO_ATTRS


def log_with(attrs: bytes) -> bytes:
    return head() + LOG_BODY + NO_ATTRS + attrs


def span_body(
    status: int = 0, span_kind: int = 1, events: bytes = b"\x00\x00", links: bytes = b"\x00\x00"
) -> bytes:
    return (
        s16(b"step")
        + PARENT
        + struct.pack("<QBBB", T0 - 1000, status, span_kind, 1)
        + s16(b"")
        + events
        + links
    )


def span_rec(body: bytes) -> bytes:
    return head(SPAN, 1) + TRACE + SPAN_ID + body + NO_ATTRS + NO_ATTRS


def metric_rec(instrument: int, value: bytes) -> bytes:
    return (
        head(METRIC)
        + bytes([instrument])
        + s16(b"m")
        + s8(b"ms")
        + s16(b"")
        + value
        + NO_ATTRS
        + NO_ATTRS
    )


def hist(values: list[float], bounds: list[float], n: int | None = None) -> bytes:
    count = len(values) if n is None else n
    return (
        struct.pack("<I", count)
        + struct.pack(f"<{len(values)}d", *values)
        + struct.pack("<H", len(bounds))
        + struct.pack(f"<{len(bounds)}d", *bounds)
    )


def resource_blob(version: int = 1, kind: int = 5, tail: bytes = b"") -> bytes:
    return bytes([version, kind]) + s16(b"emp_fastbuf") + s16(b"1.0") + NO_ATTRS + tail


# ---- the hand-built inputs are themselves right -----------------------------------------


def test_hand_built_baselines_decode() -> None:
    """The malformed inputs below are each one change away from these valid ones."""
    rec = reference.decode_record(GOOD_LOG)
    assert (rec.kind, rec.severity_number, rec.severity_text, rec.body) == (LOG, 9, "INFO", "hello")
    assert reference.encode_record(rec) == GOOD_LOG
    assert reference.decode_record(span_rec(span_body())).parent_span_id == PARENT
    assert reference.decode_record(metric_rec(COUNTER, b"\x02" + struct.pack("<q", 5))).value == 5
    assert reference.decode_record(metric_rec(HISTOGRAM, hist([1.0], [0.0, 1.0]))).bounds == [
        0.0,
        1.0,
    ]
    assert reference.decode_resource(resource_blob()).scope_version == "1.0"
    assert reference.decode_record(log_with(alist(entry(b"k", 4, b"\x01")))).attributes == {
        "k": True
    }


# ---- round trips -------------------------------------------------------------------------


def test_log_round_trip_with_trace_and_limits() -> None:
    rec = Record(
        kind=LOG,
        time_unix_nano=T0,
        trace_id=TRACE,
        span_id=SPAN_ID,
        dropped_attributes=3,
        truncated_values=65535,
        context={"job_id": "job-42"},
        attributes={"step": 7, "loss": 0.25},
        severity_number=17,
        severity_text="ERROR",
        body="boom: ünïcödé ✓ 🚀\n" * 3,
    )
    buf = reference.encode_record(rec)
    assert buf[:4] == bytes([1, LOG, FLAG_HAS_TRACE | FLAG_HAS_LIMITS, 0])
    assert buf[12:28] == TRACE and buf[28:36] == SPAN_ID
    assert struct.unpack_from("<HH", buf, 36) == (3, 65535)
    out = roundtrip(rec)
    assert same(out, rec)
    assert out.job_id == "job-42"


@pytest.mark.parametrize("kind", [LOG, EVENT, METRIC])
def test_a_record_in_an_unsampled_trace_carries_its_trace_flags(kind: int) -> None:
    fields = {LOG: {"body": "x"}, EVENT: {"name": "e"}, METRIC: {"instrument": COUNTER}}
    rec = Record(
        kind=kind, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID, trace_flags=0, **fields[kind]
    )
    buf = reference.encode_record(rec)
    assert buf[2] == FLAG_HAS_TRACE | FLAG_HAS_TRACE_FLAGS
    assert buf[12:28] == TRACE and buf[28:36] == SPAN_ID and buf[36] == 0
    out = roundtrip(rec)
    assert same(out, rec) and out.trace_flags == 0
    # Sampled (01), the common case, is written as before: no flags byte.
    sampled = reference.encode_record(dataclasses.replace(rec, trace_flags=1))
    assert sampled[2] == FLAG_HAS_TRACE and len(sampled) == len(buf) - 1
    assert reference.decode_record(sampled).trace_flags == 1


def test_trace_flags_need_a_trace() -> None:
    with pytest.raises(ValueError, match="trace_flags other than 1"):
        reference.encode_record(Record(kind=LOG, time_unix_nano=T0, trace_flags=0))


def test_flags_are_clear_without_trace_or_limits() -> None:
    rec = Record(kind=EVENT, time_unix_nano=0, name="epoch_end")
    buf = reference.encode_record(rec)
    assert buf[2] == 0
    assert buf == head(EVENT)[:4] + bytes(8) + s16(b"epoch_end") + NO_ATTRS + NO_ATTRS
    out = roundtrip(rec)
    assert out.trace_id is None and out.span_id is None
    assert (out.dropped_attributes, out.truncated_values) == (0, 0)


def test_event_round_trip() -> None:
    rec = Record(
        kind=EVENT,
        time_unix_nano=(1 << 64) - 1,
        name="checkpoint.saved",
        context={"job_id": "j", "worker": 3},
        attributes={"path": "/ckpt/0001", "size": 123_456_789},
    )
    assert same(roundtrip(rec), rec)


def test_span_round_trip_with_events_links_status() -> None:
    rec = Record(
        kind=SPAN,
        time_unix_nano=T0,
        trace_id=TRACE,
        span_id=SPAN_ID,
        name="train_step",
        parent_span_id=PARENT,
        start_unix_nano=T0 - 5_000_000,
        status_code=STATUS_ERROR,
        span_kind=3,
        trace_flags=0,
        status_message="CUDA out of memory",
        events=[
            SpanEvent("exception", T0 - 10, {"exception.type": "RuntimeError"}),
            SpanEvent("retry", T0 - 5, {}),
        ],
        links=[
            SpanLink(bytes(range(16, 32)), bytes(range(40, 48)), {"link.kind": "batch"}),
            SpanLink(bytes(16), bytes(8), {"invalid.context": True}),
        ],
        context={"job_id": "job-1"},
        attributes={"gpu": 0},
    )
    assert same(roundtrip(rec), rec)


def test_root_span_parent_decodes_as_none() -> None:
    rec = Record(
        kind=SPAN, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID, name="root", trace_flags=1
    )
    buf = reference.encode_record(rec)
    assert bytes(8) in buf
    assert roundtrip(rec).parent_span_id is None
    # An explicit all-zero parent is the same thing: a root span.
    zero_parent = Record(
        kind=SPAN, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID, parent_span_id=bytes(8)
    )
    assert reference.encode_record(zero_parent) == reference.encode_record(
        Record(kind=SPAN, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID)
    )


@pytest.mark.parametrize(
    ("instrument", "value"),
    [
        (COUNTER, 1),
        (COUNTER, INT64_MAX),
        (UPDOWNCOUNTER, INT64_MIN),
        (UPDOWNCOUNTER, -2.5),
        (GAUGE, 71.5),
        (GAUGE, 0),
        (GAUGE, math.inf),
    ],
)
def test_metric_round_trip_each_instrument(instrument: int, value: int | float) -> None:
    rec = Record(
        kind=METRIC,
        time_unix_nano=T0,
        instrument=instrument,
        name="gpu.memory.used",
        unit="By",
        description="device memory in use",
        value=value,
        attributes={"gpu": 1},
    )
    out = roundtrip(rec)
    assert same(out, rec)
    assert type(out.value) is type(value)


def test_metric_nan_gauge() -> None:
    rec = Record(kind=METRIC, time_unix_nano=1, instrument=GAUGE, name="g", value=math.nan)
    out = roundtrip(rec)
    assert isinstance(out.value, float) and math.isnan(out.value)


def test_histogram_round_trip_custom_bounds() -> None:
    rec = Record(
        kind=METRIC,
        time_unix_nano=T0,
        instrument=HISTOGRAM,
        name="step.duration",
        unit="ms",
        values=[0.5, 12.0, 12.0, 900.25, -1.0],
        bounds=[-math.inf, 0.0, 1.0, 10.0, 100.0, math.inf],
    )
    assert same(roundtrip(rec), rec)


def test_histogram_round_trip_default_bounds() -> None:
    rec = Record(kind=METRIC, time_unix_nano=T0, instrument=HISTOGRAM, name="latency", values=[3.0])
    buf = reference.encode_record(rec)
    # n_bounds = 0 (the default bounds) sits right before the two empty attrlists.
    assert buf.endswith(b"\x00\x00" + NO_ATTRS + NO_ATTRS)
    out = roundtrip(rec)
    assert out.values == [3.0] and out.bounds == []
    # Spelling the default bounds out is a different (explicit) encoding.
    explicit = Record(
        kind=METRIC,
        time_unix_nano=T0,
        instrument=HISTOGRAM,
        name="latency",
        values=[3.0],
        bounds=list(DEFAULT_HISTOGRAM_BOUNDS),
    )
    assert roundtrip(explicit).bounds == list(DEFAULT_HISTOGRAM_BOUNDS)


def test_histogram_int_values_are_stored_as_floats() -> None:
    rec = Record(kind=METRIC, time_unix_nano=1, instrument=HISTOGRAM, name="h", values=[1, 2])
    out = reference.decode_record(reference.encode_record(rec))
    assert out.values == [1.0, 2.0] and all(type(v) is float for v in out.values)


class Color(enum.IntEnum):
    RED = 3


class Mode(enum.StrEnum):
    FAST = "fast"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", ""),
        ("plain", "plain"),
        ("ünïcödé ✓ 日本語 🚀", "ünïcödé ✓ 日本語 🚀"),
        (0, 0),
        (-1, -1),
        (INT64_MIN, INT64_MIN),
        (INT64_MAX, INT64_MAX),
        (INT64_MAX + 1, str(INT64_MAX + 1)),  # beyond 64 bits: its decimal string
        (INT64_MIN - 1, str(INT64_MIN - 1)),
        (1.5, 1.5),
        (-0.0, -0.0),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
        (5e-324, 5e-324),
        (True, True),
        (False, False),
        (b"", b""),
        (b"\x00\xff\x80", b"\x00\xff\x80"),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"cd"), b"cd"),
        ([], []),
        ([None, "s", 1, 2.5, True, b"\x01"], [None, "s", 1, 2.5, True, b"\x01"]),
        ((1, "two"), [1, "two"]),
        ([INT64_MAX + 1], [str(INT64_MAX + 1)]),
        (Color.RED, 3),
        (Mode.FAST, "fast"),
    ],
)
def test_attribute_types_round_trip(value: Any, expected: Any) -> None:
    rec = Record(kind=EVENT, time_unix_nano=1, name="e", attributes={"k": value, "": value})
    out = reference.decode_record(reference.encode_record(rec))
    assert same(out.attributes, {"k": expected, "": expected})


def test_nan_attribute_round_trips_as_nan() -> None:
    rec = Record(kind=EVENT, time_unix_nano=1, attributes={"x": math.nan, "a": [math.nan, 1.0]})
    out = roundtrip(rec)
    x = out.attributes["x"]
    a = out.attributes["a"]
    assert isinstance(x, float) and math.isnan(x)
    assert isinstance(a, list) and isinstance(a[0], float) and math.isnan(a[0]) and a[1] == 1.0


def test_non_ascii_keys_and_order_are_kept() -> None:
    attrs = {"z": 1, "ключ": "значение", "a": 2, "🔑": None}
    out = roundtrip(Record(kind=EVENT, time_unix_nano=1, attributes=attrs))
    assert list(out.attributes.items()) == list(attrs.items())


def test_resource_round_trip() -> None:
    res = Resource(
        attributes={
            "service.name": "trainer",
            "service.instance.id": "i-1",
            "host.name": "gpu-node-7",
            "process.pid": 4242,
            "emp.machine_id": "m-1",
            "emp.worker_id": 3,
            "deployment.environment": "prod",
        },
        scope_name="emp_fastbuf",
        scope_version="0.1.0",
    )
    buf = reference.encode_resource(res)
    assert buf[:2] == b"\x01\x05"
    assert reference.decode_resource(buf) == res
    assert reference.decode_resource(memoryview(bytearray(buf))) == res


@pytest.mark.native
def test_resource_bytes_match_the_native_encoder() -> None:
    """Parity: the Cython producer's resource blob is byte-identical to the reference."""
    native = pytest.importorskip("emp_fastbuf.producer._codec")
    attrs = {
        "service.name": "trainer",
        "process.pid": 4242,
        "ratio": 0.5,
        "gpu": True,
        "none": None,
        "raw": b"\x00\xff",
        "list": [1, "a", 2.5],
        "huge": 1 << 70,
        "ключ": "значение",
    }
    ours = reference.encode_resource(Resource(attrs, "emp_fastbuf", "9.9.9"))
    assert native.encode_resource(attrs, "emp_fastbuf", "9.9.9") == ours
    assert reference.decode_resource(ours).attributes["huge"] == str(1 << 70)


def test_attrs_helpers_round_trip() -> None:
    attrs = {"a": [1, "x"], "b": b"\x00", "c": None}
    buf = reference.encode_attrs(attrs)
    assert buf[:2] == b"\x03\x00"
    assert reference.decode_attrs(buf) == attrs
    with pytest.raises(CorruptRecord, match="trailing"):
        reference.decode_attrs(buf + b"\x00")
    with pytest.raises(CorruptRecord, match="truncated"):
        reference.decode_attrs(buf[:-1])


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert reference.decode_record(bytearray(GOOD_LOG)) == reference.decode_record(GOOD_LOG)
    padded = b"xx" + GOOD_LOG + b"yy"
    assert reference.decode_record(memoryview(padded)[2:-2]).body == "hello"


@pytest.mark.parametrize("bad", ["text", 123, None, [1, 2]])
def test_decode_rejects_non_bytes_with_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        reference.decode_record(bad)
    with pytest.raises(TypeError):
        reference.decode_resource(bad)


# ---- the encoder refuses what the format cannot hold -------------------------------------


def _span(**kw: Any) -> Record:
    base: dict[str, Any] = {
        "kind": SPAN,
        "time_unix_nano": T0,
        "trace_id": TRACE,
        "span_id": SPAN_ID,
    }
    base.update(kw)
    return Record(**base)


def _metric(**kw: Any) -> Record:
    base: dict[str, Any] = {"kind": METRIC, "time_unix_nano": T0, "instrument": GAUGE}
    base.update(kw)
    return Record(**base)


def _event(**kw: Any) -> Record:
    base: dict[str, Any] = {"kind": EVENT, "time_unix_nano": T0}
    base.update(kw)
    return Record(**base)


@pytest.mark.parametrize(
    ("rec", "exc", "match"),
    [
        (_event(kind=0), ValueError, "kind"),
        (_event(kind=5), ValueError, "kind"),
        (_event(kind=1.0), TypeError, "kind"),
        (_event(time_unix_nano=-1), ValueError, "time_unix_nano"),
        (_event(time_unix_nano=1 << 64), ValueError, "time_unix_nano"),
        (_event(time_unix_nano=1.5), TypeError, "time_unix_nano"),
        (_event(trace_id=TRACE), ValueError, "both"),
        (_event(span_id=SPAN_ID), ValueError, "both"),
        (_event(trace_id=TRACE[:15], span_id=SPAN_ID), ValueError, "16 bytes"),
        (_event(trace_id=bytes(16), span_id=SPAN_ID), ValueError, "all zero"),
        (_event(trace_id=TRACE, span_id=bytes(8)), ValueError, "all zero"),
        (_event(trace_id=TRACE.hex(), span_id=SPAN_ID), TypeError, "trace_id"),
        (_event(dropped_attributes=65536), ValueError, "dropped_attributes"),
        (_event(truncated_values=-1), ValueError, "truncated_values"),
        (_event(name="x" * 65536), ValueError, "str16"),
        (_event(name="\ud800"), ValueError, "UTF-8"),
        (_event(name=b"bytes"), TypeError, "name"),
        (_event(attributes={"k": object()}), TypeError, "cannot encode"),
        (_event(attributes={"k": [[1]]}), TypeError, "nested"),
        (_event(attributes={"k": [object()]}), TypeError, "cannot encode"),
        (_event(attributes={"k": {"a": 1}}), TypeError, "cannot encode"),
        (_event(attributes={1: "v"}), TypeError, "key"),
        (_event(attributes={"k" * 65536: 1}), ValueError, "str16"),
        (_event(attributes={"k": list(range(65536))}), ValueError, "65535"),
        (_event(attributes={str(i): i for i in range(65536)}), ValueError, "65535"),
        (_event(context=[("job_id", "x")]), TypeError, "dict"),
        (Record(kind=LOG, time_unix_nano=1, severity_number=25), ValueError, "severity"),
        (Record(kind=LOG, time_unix_nano=1, severity_text="x" * 256), ValueError, "str8"),
        (Record(kind=SPAN, time_unix_nano=1), ValueError, "SPAN"),
        (_span(status_code=3), ValueError, "status_code"),
        (_span(span_kind=6), ValueError, "span_kind"),
        (_span(trace_flags=256), ValueError, "trace_flags"),
        (_span(parent_span_id=b"short"), ValueError, "parent_span_id"),
        (_span(start_unix_nano=-5), ValueError, "start_unix_nano"),
        (_span(events=[("e", 1, {})]), TypeError, "SpanEvent"),
        (_span(links=[SpanLink(TRACE, b"\x01")]), ValueError, "span_id"),
        (_span(links=["link"]), TypeError, "SpanLink"),
        (_metric(instrument=0), ValueError, "instrument"),
        (_metric(instrument=5), ValueError, "instrument"),
        (_metric(value=True), TypeError, "bool"),
        (_metric(value="1"), TypeError, "metric value"),
        (_metric(value=INT64_MAX + 1), ValueError, "64-bit"),
        (_metric(unit="u" * 256), ValueError, "str8"),
        (_metric(instrument=HISTOGRAM, values=[]), ValueError, "1..1048576"),
        (_metric(instrument=HISTOGRAM, values=["1"]), TypeError, "histogram value"),
        (_metric(instrument=HISTOGRAM, values=[10**400]), ValueError, "too large"),
        (_metric(instrument=HISTOGRAM, values=[1.0], bounds=[1.0, 1.0]), ValueError, "increasing"),
        (_metric(instrument=HISTOGRAM, values=[1.0], bounds=[2.0, 1.0]), ValueError, "increasing"),
        (_metric(instrument=HISTOGRAM, values=[1.0], bounds=[math.nan]), ValueError, "NaN"),
    ],
)
def test_encode_rejects(rec: Record, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        reference.encode_record(rec)


def test_encode_rejects_too_many_histogram_values() -> None:
    rec = _metric(instrument=HISTOGRAM, values=[0.0] * (MAX_HISTOGRAM_VALUES + 1))
    with pytest.raises(ValueError, match=r"1\.\.1048576"):
        reference.encode_record(rec)


def test_encode_largest_histogram_round_trips() -> None:
    values = [float(i) for i in range(MAX_HISTOGRAM_VALUES)]
    out = roundtrip(_metric(instrument=HISTOGRAM, values=values))
    assert out.values == values


def test_encode_rejects_non_records() -> None:
    with pytest.raises(TypeError):
        reference.encode_record(Resource())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reference.encode_resource(Record(kind=LOG, time_unix_nano=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str16"):
        reference.encode_resource(Resource(scope_name="s" * 70000))


# ---- the decoder: one hand-built malformed input per rule ---------------------------------

MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "truncated: record header"),
    "header cut short": (GOOD_LOG[:11], "truncated: record header"),
    "version 0": (head(version=0) + GOOD_LOG[12:], "version 0"),
    "version 2": (head(version=2) + GOOD_LOG[12:], "version 2"),
    "kind 0": (head(kind=0) + GOOD_LOG[12:], "kind 0"),
    "kind 5 (a resource)": (head(kind=5) + GOOD_LOG[12:], "resource"),
    "kind 200": (head(kind=200) + GOOD_LOG[12:], "kind 200"),
    "flag bit 3": (head(flags=8) + GOOD_LOG[12:], "flag bits 0x08"),
    "HAS_TRACE_FLAGS without HAS_TRACE": (head(flags=4) + GOOD_LOG[12:], "without HAS_TRACE"),
    "HAS_TRACE_FLAGS on a SPAN": (
        head(SPAN, flags=5) + TRACE + SPAN_ID + b"\x00" + span_body() + NO_ATTRS * 2,
        "on a SPAN",
    ),
    "trace_flags cut short": (head(flags=5) + TRACE + SPAN_ID, "trace_flags"),
    "flag bit 7": (head(flags=0x81) + TRACE + SPAN_ID + GOOD_LOG[12:], "flag bits 0x80"),
    "reserved byte": (head(reserved=1) + GOOD_LOG[12:], "reserved"),
    "ids cut short": (head(flags=1) + TRACE + SPAN_ID[:7], "trace_id and span_id"),
    "all-zero trace_id": (head(flags=1) + bytes(16) + SPAN_ID + GOOD_LOG[12:], "zero trace_id"),
    "all-zero span_id": (head(flags=1) + TRACE + bytes(8) + GOOD_LOG[12:], "zero span_id"),
    "limits cut short": (head(flags=2) + b"\x01\x00\x00", "limits"),
    "SPAN without HAS_TRACE": (head(SPAN) + span_body() + NO_ATTRS + NO_ATTRS, "HAS_TRACE"),
    "severity 25": (head() + bytes([25]) + s8(b"X") + s32(b"") + NO_ATTRS * 2, "severity"),
    "severity_text past end": (head() + bytes([9, 200]) + b"INFO", "severity_text"),
    "body length past end": (head() + bytes([9]) + s8(b"") + b"\xff\xff\xff\xff" + b"x", "body"),
    "body invalid UTF-8": (head() + bytes([9]) + s8(b"") + s32(b"\xff") + NO_ATTRS * 2, "UTF-8"),
    "body overlong UTF-8": (
        head() + bytes([9]) + s8(b"") + s32(b"\xc0\xaf") + NO_ATTRS * 2,
        "UTF-8",
    ),
    "body encoded surrogate": (
        head() + bytes([9]) + s8(b"") + s32(b"\xed\xa0\x80") + NO_ATTRS * 2,
        "UTF-8",
    ),
    "no attrlists": (head() + LOG_BODY, "context count"),
    "attributes missing": (head() + LOG_BODY + NO_ATTRS, "attributes count"),
    "attr count beyond entries": (log_with(b"\x02\x00" + entry(b"k", 0)), r"attributes\[1\]"),
    "attr key past end": (log_with(b"\x01\x00" + s16(b"key")[:-1]), "key"),
    "attr key without tag": (log_with(b"\x01\x00" + s16(b"key")), "key and tag"),
    "attr key invalid UTF-8": (log_with(alist(entry(b"k\xfe", 0))), "key .* UTF-8"),
    "attr unknown tag 7": (log_with(alist(entry(b"k", 7))), "unknown value tag 7"),
    "attr unknown tag 255": (log_with(alist(entry(b"k", 255))), "unknown value tag 255"),
    "attr str past end": (log_with(alist(entry(b"k", 1, b"\x05\x00\x00\x00abc"))), "string"),
    "attr str invalid UTF-8": (log_with(alist(entry(b"k", 1, s32(b"\x80")))), "UTF-8"),
    "attr int cut short": (log_with(alist(entry(b"k", 2, b"\x01\x02\x03"))), "int"),
    "attr float cut short": (log_with(alist(entry(b"k", 3, b"\x00" * 7))), "float"),
    "attr bool 2": (log_with(alist(entry(b"k", 4, b"\x02"))), "bool byte"),
    "attr bool missing": (log_with(alist(entry(b"k", 4))), "bool"),
    "attr bytes past end": (log_with(alist(entry(b"k", 5, b"\x09\x00\x00\x00ab"))), "bytes"),
    "array length cut": (log_with(alist(entry(b"k", 6, b"\x01"))), "array length"),
    "array shorter than n": (log_with(alist(entry(b"k", 6, b"\x02\x00\x00"))), r"\[1\] tag"),
    "nested array": (log_with(alist(entry(b"k", 6, b"\x01\x00\x06\x00\x00"))), "nested"),
    "array unknown tag": (log_with(alist(entry(b"k", 6, b"\x01\x00\x09"))), "unknown value tag"),
    "array bool 7": (log_with(alist(entry(b"k", 6, b"\x01\x00\x04\x07"))), "bool byte"),
    "array str invalid UTF-8": (
        log_with(alist(entry(b"k", 6, b"\x01\x00\x01" + s32(b"\xff")))),
        "UTF-8",
    ),
    "trailing byte": (GOOD_LOG + b"\x00", "1 trailing bytes"),
    "trailing bytes": (GOOD_LOG + b"junk", "4 trailing bytes"),
    "event name past end": (head(EVENT) + b"\x10\x00abc", "event name"),
    "event name invalid UTF-8": (head(EVENT) + s16(b"\xc3") + NO_ATTRS * 2, "UTF-8"),
    "span fixed part cut": (head(SPAN, 1) + TRACE + SPAN_ID + s16(b"s") + PARENT, "span parent"),
    "span status 3": (span_rec(span_body(status=3)), "status_code 3"),
    "span kind 6": (span_rec(span_body(span_kind=6)), "span_kind 6"),
    "span events past end": (span_rec(span_body(events=b"\x01\x00")), "span event 0"),
    "span event time cut": (span_rec(span_body(events=b"\x01\x00" + s16(b"e") + b"\x00")), "time"),
    "span event attrs bad": (
        span_rec(span_body(events=b"\x01\x00" + s16(b"e") + bytes(8) + alist(entry(b"k", 8)))),
        "span event 0 attributes",
    ),
    "span link cut": (span_rec(span_body(links=b"\x01\x00" + TRACE)), "span link 0"),
    "span link count cut": (head(SPAN, 1) + TRACE + SPAN_ID + span_body()[:-1], "link count"),
    "metric instrument 0": (metric_rec(0, b"\x02" + bytes(8)), "instrument 0"),
    "metric instrument 5": (metric_rec(5, b"\x02" + bytes(8)), "instrument 5"),
    "metric unit past end": (head(METRIC) + b"\x01" + s16(b"m") + b"\x09ms", "unit"),
    "metric value tag 1": (metric_rec(COUNTER, b"\x01" + bytes(8)), "value tag 1"),
    "metric value tag 4": (metric_rec(GAUGE, b"\x04\x01"), "value tag 4"),
    "metric value cut": (
        head(METRIC) + b"\x01" + s16(b"m") + s8(b"") + s16(b"") + b"\x02\x01",
        "int value",
    ),
    "histogram n 0": (metric_rec(HISTOGRAM, hist([], [])), "count 0"),
    "histogram n too big": (metric_rec(HISTOGRAM, hist([1.0], [], n=1_048_577)), "1048577"),
    "histogram n huge": (metric_rec(HISTOGRAM, b"\xff\xff\xff\xff"), "4294967295"),
    "histogram values past end": (metric_rec(HISTOGRAM, hist([1.0], [], n=3)), "histogram values"),
    "histogram bounds past end": (
        metric_rec(HISTOGRAM, struct.pack("<Id", 1, 1.0) + b"\x05\x00" + bytes(8)),
        "histogram bounds",
    ),
    "histogram equal bounds": (metric_rec(HISTOGRAM, hist([1.0], [1.0, 1.0])), "increasing"),
    "histogram decreasing bounds": (metric_rec(HISTOGRAM, hist([1.0], [2.0, 1.0])), "increasing"),
    "histogram NaN bound": (metric_rec(HISTOGRAM, hist([1.0], [math.nan])), "increasing"),
    "histogram NaN among bounds": (
        metric_rec(HISTOGRAM, hist([1.0], [0.0, math.nan, 5.0])),
        "increasing",
    ),
}


@pytest.mark.parametrize("case", MALFORMED.keys())
def test_decode_rejects_malformed(case: str) -> None:
    buf, match = MALFORMED[case]
    with pytest.raises(CorruptRecord, match=match) as info:
        reference.decode_record(buf)
    assert INTERNAL not in str(info.value)
    assert isinstance(info.value, ValueError)


RESOURCE_MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "resource header"),
    "version 2": (resource_blob(version=2), "version 2"),
    "kind 1 (a record)": (resource_blob(kind=1), "kind 1"),
    "trailing": (resource_blob(tail=b"\x00"), "trailing"),
    "scope_name past end": (b"\x01\x05\x20\x00emp", "scope_name"),
    "scope_version invalid UTF-8": (b"\x01\x05" + s16(b"") + s16(b"\xff") + NO_ATTRS, "UTF-8"),
    "attributes cut": (resource_blob()[:-1], "resource attributes count"),
    "attribute bad tag": (
        b"\x01\x05" + s16(b"") + s16(b"") + alist(entry(b"k", 6, b"\x01\x00\x06")),
        "nested",
    ),
}


@pytest.mark.parametrize("case", RESOURCE_MALFORMED.keys())
def test_decode_resource_rejects_malformed(case: str) -> None:
    buf, match = RESOURCE_MALFORMED[case]
    with pytest.raises(CorruptRecord, match=match) as info:
        reference.decode_resource(buf)
    assert INTERNAL not in str(info.value)


def test_decode_never_reads_past_a_memoryview_slice() -> None:
    """The byte after the slice would make the record valid; the decoder must not see it."""
    view = memoryview(GOOD_LOG)[:-1]
    with pytest.raises(CorruptRecord, match="truncated"):
        reference.decode_record(view)


# ---- hypothesis --------------------------------------------------------------------------

PREFIXES = [
    b"",
    head(LOG),
    head(EVENT),
    head(SPAN, 1) + TRACE + SPAN_ID,
    head(METRIC),
    head(METRIC) + b"\x04",
    head(LOG, 3) + TRACE + SPAN_ID,
]


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_give_corrupt_record_only(data: bytes) -> None:
    decode_or_corrupt(data)
    try:
        reference.decode_resource(data)
    except CorruptRecord as exc:
        assert INTERNAL not in str(exc)


@FUZZ
@given(st.sampled_from(PREFIXES), st.binary(max_size=200))
def test_random_bodies_after_valid_headers(prefix: bytes, tail: bytes) -> None:
    decode_or_corrupt(prefix + tail)


@FUZZ
@given(records())
def test_generated_records_round_trip(rec: Record) -> None:
    out = roundtrip(rec)
    assert same(out, rec)
    buf = reference.encode_record(rec)
    assert bool(buf[2] & FLAG_HAS_TRACE) == (rec.trace_id is not None)
    assert bool(buf[2] & FLAG_HAS_LIMITS) == bool(rec.dropped_attributes or rec.truncated_values)


@FUZZ
@given(records())
def test_every_truncation_is_corrupt(rec: Record) -> None:
    buf = reference.encode_record(rec)
    for cut in range(len(buf)):
        with pytest.raises(CorruptRecord) as info:
            reference.decode_record(buf[:cut])
        assert INTERNAL not in str(info.value)


@FUZZ
@given(records(), st.data())
def test_byte_flips_give_record_or_corrupt(rec: Record, data: st.DataObject) -> None:
    buf = bytearray(reference.encode_record(rec))
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(buf) - 1), st.integers(1, 255)), min_size=1, max_size=4
        )
    )
    for at, xor in flips:
        buf[at] ^= xor
    out = decode_or_corrupt(bytes(buf))
    if out is not None:
        # Whatever decodes must be a record the encoder accepts.
        reference.encode_record(out)


@FUZZ
@given(st.dictionaries(keys, values, max_size=8), st.text(max_size=20), st.text(max_size=20))
def test_generated_resources_round_trip(attrs: Any, name: str, version: str) -> None:
    res = Resource(attributes=attrs, scope_name=name, scope_version=version)
    buf = reference.encode_resource(res)
    assert same(reference.decode_resource(buf), res)
    for cut in range(len(buf)):
        with pytest.raises(CorruptRecord):
            reference.decode_resource(buf[:cut])


# ---- corpus replay -----------------------------------------------------------------------


def corpus_files(prefix: str) -> list[Path]:
    return sorted(CORPUS.glob(f"{prefix}*.bin"))


def test_corpus_is_present() -> None:
    assert len(corpus_files("valid_")) >= 5
    assert len(corpus_files("bad_")) >= 5
    names = {p.name for p in CORPUS.glob("*.bin")}
    assert names == {p.name for p in corpus_files("valid_") + corpus_files("bad_")}


@pytest.mark.parametrize("path", corpus_files("valid_"), ids=lambda p: p.name)
def test_corpus_valid_records_decode(path: Path) -> None:
    buf = path.read_bytes()
    rec = reference.decode_record(buf)
    assert reference.encode_record(rec) == buf


@pytest.mark.parametrize("path", corpus_files("bad_"), ids=lambda p: p.name)
def test_corpus_bad_records_are_corrupt(path: Path) -> None:
    with pytest.raises(CorruptRecord) as info:
        reference.decode_record(path.read_bytes())
    assert INTERNAL not in str(info.value)
