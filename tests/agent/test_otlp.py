"""emp_fastbuf.agent.otlp.reference: decoded records -> OTLP requests, checked by parsing the bytes
back with the official opentelemetry-proto classes, and against the OpenTelemetry SDK's own
OTLP encoder for the same logical data."""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

from emp_fastbuf.agent.otlp.reference import (
    DEFAULT_MAX_BYTES,
    build_logs_request,
    build_traces_request,
    fill_attributes,
    freeze_attributes,
    iter_logs_requests,
    iter_traces_requests,
    record_attributes,
    set_any_value,
)
from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    LOG,
    METRIC,
    SPAN,
    STATUS_ERROR,
    STATUS_OK,
    Record,
    Resource,
    SpanEvent,
    SpanLink,
)
from support.strategies import api_attr_dicts

T0 = 1_700_000_000_000_000_000
TID = bytes(range(1, 17))
SID = bytes(range(21, 29))
SID2 = bytes(range(31, 39))
OTHER_TID = b"\xaa" * 16
OTHER_SID = b"\xbb" * 8


def res(name: str = "worker", **extra: Any) -> Resource:
    return Resource(
        attributes={"service.name": name, "service.instance.id": f"{name}-1", **extra},
        scope_name="emp_fastbuf",
        scope_version="0.1.0",
    )


def log(i: int = 0, **kw: Any) -> Record:
    fields: dict[str, Any] = {
        "kind": LOG,
        "time_unix_nano": T0 + i,
        "severity_number": 9,
        "severity_text": "INFO",
        "body": f"message {i}",
    }
    fields.update(kw)
    return Record(**fields)


def parse_logs(data: bytes) -> ExportLogsServiceRequest:
    out = ExportLogsServiceRequest()
    out.ParseFromString(data)
    return out


def parse_traces(data: bytes) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    out.ParseFromString(data)
    return out


def attrs(kvs: Any) -> dict[str, tuple[str | None, Any]]:
    """KeyValues -> {key: (oneof name, python value)}, keeping the value's OTLP type."""
    out: dict[str, tuple[str | None, Any]] = {}
    for kv in kvs:
        assert kv.key not in out, f"duplicate attribute key {kv.key!r}"
        out[kv.key] = any_value(kv.value)
    return out


def any_value(v: AnyValue) -> tuple[str | None, Any]:
    which = v.WhichOneof("value")
    if which is None:
        return (None, None)
    if which == "array_value":
        return (which, [any_value(x) for x in v.array_value.values])
    return (which, getattr(v, which))


def keys(kvs: Any) -> list[str]:
    return [kv.key for kv in kvs]


# --- logs -------------------------------------------------------------------------------


def test_log_and_event_records_round_trip_every_field() -> None:
    r = res()
    rec = log(
        5,
        severity_number=17,
        severity_text="ERROR",
        body="it broke: \u00e9\u4e2d",
        trace_id=TID,
        span_id=SID,
        dropped_attributes=3,
        context={"job_id": "job-7", "tenant": "acme"},
        attributes={
            "s": "x",
            "b": True,
            "f0": False,
            "i": -42,
            "big": 1 << 70,
            "d": 0.25,
            "raw": b"\x00\xff",
            "none": None,
            "arr": ["a", 1, 2.5, True, None, b"z"],
            "empty": [],
        },
    )
    ev = Record(kind=EVENT, time_unix_nano=T0 + 6, name="job.finished", attributes={"n": 3})
    data = build_logs_request([(r, [rec, ev])], observed_time_unix_nano=T0 + 99)
    assert data is not None
    req = parse_logs(data.SerializeToString())

    assert len(req.resource_logs) == 1
    rl = req.resource_logs[0]
    assert attrs(rl.resource.attributes) == {
        "service.name": ("string_value", "worker"),
        "service.instance.id": ("string_value", "worker-1"),
    }
    assert len(rl.scope_logs) == 1
    sl = rl.scope_logs[0]
    assert (sl.scope.name, sl.scope.version) == ("emp_fastbuf", "0.1.0")
    assert len(sl.log_records) == 2

    lr = sl.log_records[0]
    assert lr.time_unix_nano == T0 + 5
    assert lr.observed_time_unix_nano == T0 + 99
    assert lr.severity_number == 17
    assert lr.severity_text == "ERROR"
    assert lr.body.WhichOneof("value") == "string_value"
    assert lr.body.string_value == "it broke: \u00e9\u4e2d"
    assert lr.trace_id == TID
    assert lr.span_id == SID
    assert lr.dropped_attributes_count == 3
    assert lr.event_name == ""
    assert lr.flags == 1  # the trace's W3C flags: sampled
    # context first (job_id renamed), then the record's own attributes
    assert keys(lr.attributes)[:2] == ["emp.job_id", "tenant"]
    assert attrs(lr.attributes) == {
        "emp.job_id": ("string_value", "job-7"),
        "tenant": ("string_value", "acme"),
        "s": ("string_value", "x"),
        "b": ("bool_value", True),
        "f0": ("bool_value", False),
        "i": ("int_value", -42),
        "big": ("string_value", str(1 << 70)),
        "d": ("double_value", 0.25),
        "raw": ("bytes_value", b"\x00\xff"),
        "none": (None, None),
        "arr": (
            "array_value",
            [
                ("string_value", "a"),
                ("int_value", 1),
                ("double_value", 2.5),
                ("bool_value", True),
                (None, None),
                ("bytes_value", b"z"),
            ],
        ),
        "empty": ("array_value", []),
    }
    none_kv = next(kv for kv in lr.attributes if kv.key == "none")
    assert none_kv.HasField("value")  # present, and empty: OTLP's null

    er = sl.log_records[1]
    assert er.event_name == "job.finished"
    assert er.time_unix_nano == T0 + 6
    assert er.observed_time_unix_nano == T0 + 99
    assert not er.HasField("body")
    assert er.severity_number == 0 and er.severity_text == ""
    assert er.trace_id == b"" and er.span_id == b"" and er.flags == 0
    assert attrs(er.attributes) == {"n": ("int_value", 3)}  # no event.name attribute


def test_a_log_in_an_unsampled_trace_keeps_its_trace_and_flags() -> None:
    rec = log(5, trace_id=TID, span_id=SID, trace_flags=0)
    odd = log(6, trace_id=TID, span_id=SID, trace_flags=0x03)
    data = build_logs_request([(res(), [rec, odd])], observed_time_unix_nano=T0 + 99)
    assert data is not None
    lr, lr_odd = parse_logs(data.SerializeToString()).resource_logs[0].scope_logs[0].log_records
    assert (lr.trace_id, lr.span_id, lr.flags) == (TID, SID, 0)
    assert lr_odd.flags == 0x03


def test_observed_time_defaults_to_now() -> None:
    before = time.time_ns()
    req = build_logs_request([(res(), [log()])])
    after = time.time_ns()
    assert req is not None
    observed = req.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano
    assert before <= observed <= after


def test_own_attributes_win_and_job_id_is_namespaced() -> None:
    rec = log(
        context={"job_id": "ctx-job", "step": "ctx", "emp.job_id": "explicit"},
        attributes={"step": "own", "x": 1},
    )
    assert record_attributes(rec) == {"emp.job_id": "explicit", "step": "own", "x": 1}
    req = build_logs_request([(res(), [rec])])
    assert req is not None
    got = attrs(req.resource_logs[0].scope_logs[0].log_records[0].attributes)
    assert got == {
        "emp.job_id": ("string_value", "explicit"),
        "step": ("string_value", "own"),
        "x": ("int_value", 1),
    }
    # the record's own emp.job_id beats the context's job_id
    rec2 = log(context={"job_id": "ctx-job"}, attributes={"emp.job_id": "own-job"})
    req2 = build_logs_request([(res(), [rec2])])
    assert req2 is not None
    got2 = attrs(req2.resource_logs[0].scope_logs[0].log_records[0].attributes)
    assert got2 == {"emp.job_id": ("string_value", "own-job")}
    # a record without context: its attributes as they are; other context keys kept
    assert record_attributes(log(attributes={"job_id": 1})) == {"job_id": 1}
    assert record_attributes(log(context={"worker": "w"})) == {"worker": "w"}


def test_values_that_compare_equal_keep_their_own_type() -> None:
    """1, 1.0 and True are equal in Python and must not share an encoding; neither may
    0.0 and -0.0. The same key/value pairs repeat across records of one request."""
    values: list[Any] = [1, 1.0, True, 0.0, -0.0, False, 0, math.nan, "1", b"1", -1]
    records = [log(i, attributes={"v": v, "k": "same"}) for i, v in enumerate(values * 2)]
    req = build_logs_request([(res(), records)])
    assert req is not None
    out = req.resource_logs[0].scope_logs[0].log_records
    assert len(out) == len(values) * 2
    for v, lr in zip(values * 2, out, strict=True):
        kind, got = attrs(lr.attributes)["v"]
        expected_kind = {
            int: "int_value",
            float: "double_value",
            bool: "bool_value",
            str: "string_value",
            bytes: "bytes_value",
        }[type(v)]
        assert kind == expected_kind
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got)
        else:
            assert got == v
            if isinstance(v, float):
                assert math.copysign(1.0, got) == math.copysign(1.0, v)
        assert attrs(lr.attributes)["k"] == ("string_value", "same")


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(api_attr_dicts, api_attr_dicts), min_size=1, max_size=6))
def test_fast_attribute_encoding_matches_the_generated_classes(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """The hot path writes KeyValues in wire format and caches them; it must give exactly
    what the generated classes give for the same attributes (records repeat on purpose, to
    go through the cache)."""
    records = [log(i, context=c, attributes=a) for i, (c, a) in enumerate(pairs * 2)]
    req = build_logs_request([(res(), records)])
    assert req is not None
    for rec, lr in zip(records, req.resource_logs[0].scope_logs[0].log_records, strict=True):
        reference = ExportLogsServiceRequest().resource_logs.add().scope_logs.add()
        ref_record = reference.log_records.add()
        fill_attributes(ref_record.attributes, record_attributes(rec))
        ours = {kv.key: kv.SerializeToString() for kv in lr.attributes}
        expected = {kv.key: kv.SerializeToString() for kv in ref_record.attributes}
        assert len(ours) == len(lr.attributes)  # no duplicate keys
        assert ours == expected


def test_enum_subclasses_are_stored_as_their_base_type() -> None:
    import enum

    class Color(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    req = build_logs_request([(res(), [log(attributes={"c": Color.RED, "l": Level.HIGH})])])
    assert req is not None
    got = attrs(req.resource_logs[0].scope_logs[0].log_records[0].attributes)
    assert got == {"c": ("string_value", "red"), "l": ("int_value", 3)}


def test_resources_are_grouped_by_equal_attributes_in_first_seen_order() -> None:
    a1 = res("a")
    b = res("b")
    a2 = res("a")  # equal to a1, another object
    a_other_scope = Resource(attributes=dict(a1.attributes), scope_name="plugin", scope_version="2")
    a_int = Resource(attributes={"service.name": "a", "n": 1})
    a_bool = Resource(attributes={"service.name": "a", "n": True})  # not equal to a_int in OTLP
    groups = [
        (a1, [log(1)]),
        (b, [log(2)]),
        (a2, [log(3)]),
        (a_other_scope, [log(4)]),
        (a_int, [log(5)]),
        (a_bool, [log(6)]),
    ]
    req = build_logs_request(groups)
    assert req is not None
    req = parse_logs(req.SerializeToString())
    assert [attrs(rl.resource.attributes)["service.name"][1] for rl in req.resource_logs] == [
        "a",
        "b",
        "a",
        "a",
    ]
    ra, rb, rint, rbool = req.resource_logs
    assert [(s.scope.name, s.scope.version) for s in ra.scope_logs] == [
        ("emp_fastbuf", "0.1.0"),
        ("plugin", "2"),
    ]
    assert [lr.time_unix_nano - T0 for lr in ra.scope_logs[0].log_records] == [1, 3]
    assert [lr.time_unix_nano - T0 for lr in ra.scope_logs[1].log_records] == [4]
    assert [lr.time_unix_nano - T0 for lr in rb.scope_logs[0].log_records] == [2]
    assert attrs(rint.resource.attributes)["n"] == ("int_value", 1)
    assert attrs(rbool.resource.attributes)["n"] == ("bool_value", True)
    assert freeze_attributes({"n": 1}) != freeze_attributes({"n": True})
    assert freeze_attributes({"a": 1, "b": 2}) == freeze_attributes({"b": 2, "a": 1})


def test_no_records_of_the_signal_means_no_request() -> None:
    span = span_record()
    metric = Record(kind=METRIC, time_unix_nano=T0, name="m", instrument=COUNTER, value=1)
    assert build_logs_request([]) is None
    assert build_logs_request([(res(), [])]) is None
    assert build_logs_request([(res(), [span, metric])]) is None
    assert build_traces_request([(res(), [log(), metric])]) is None
    assert list(iter_logs_requests([(res(), [span])])) == []
    assert list(iter_traces_requests([(res(), [log()])])) == []
    # a resource with no log record produces no ResourceLogs
    req = build_logs_request([(res("spans-only"), [span]), (res("logs"), [log()])])
    assert req is not None
    assert len(req.resource_logs) == 1
    assert attrs(req.resource_logs[0].resource.attributes)["service.name"][1] == "logs"


def test_bad_records_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="trace_id"):
        build_logs_request([(res(), [log(trace_id=b"short")])])
    with pytest.raises(ValueError, match="span_id"):
        build_logs_request([(res(), [log(trace_id=TID, span_id=b"\x01" * 9)])])
    with pytest.raises(ValueError, match="trace_id"):
        build_logs_request([(res(), [log(trace_id="0" * 16)])])
    with pytest.raises(TypeError, match="dict"):
        build_logs_request([(res(), [log(attributes={"d": {"nested": 1}})])])
    with pytest.raises(TypeError, match="object"):
        build_logs_request([(res(), [log(context={"job_id": object()})])])
    with pytest.raises(ValueError, match="trace_id and span_id"):
        build_traces_request([(res(), [span_record(trace_id=None)])])
    with pytest.raises(ValueError, match="parent_span_id"):
        build_traces_request([(res(), [span_record(parent_span_id=b"\x00")])])
    with pytest.raises(ValueError, match="link"):
        build_traces_request([(res(), [span_record(links=[SpanLink(TID, b"")])])])
    with pytest.raises(ValueError, match="max_bytes"):
        list(iter_logs_requests([(res(), [log()])], 0))
    with pytest.raises(ValueError, match="max_bytes"):
        list(iter_traces_requests([(res(), [span_record()])], -5))
    target = AnyValue()
    with pytest.raises(TypeError, match="set"):
        set_any_value(target, {1, 2})  # type: ignore[arg-type]


# --- traces -----------------------------------------------------------------------------


def span_record(**kw: Any) -> Record:
    fields: dict[str, Any] = {
        "kind": SPAN,
        "time_unix_nano": T0 + 500,
        "start_unix_nano": T0 + 100,
        "trace_id": TID,
        "span_id": SID,
        "name": "render",
        "span_kind": 1,
    }
    fields.update(kw)
    return Record(**fields)


def test_spans_round_trip_every_field() -> None:
    root = span_record(
        name="job",
        span_kind=2,
        status_code=STATUS_OK,
        context={"job_id": "j1"},
        attributes={"gpu": 0, "model": "sdxl"},
        dropped_attributes=2,
    )
    child = span_record(
        span_id=SID2,
        parent_span_id=SID,
        name="step",
        span_kind=3,
        trace_flags=0,
        start_unix_nano=T0 + 200,
        time_unix_nano=T0 + 300,
        status_code=STATUS_ERROR,
        status_message="CUDA out of memory",
        events=[
            SpanEvent("exception", T0 + 250, {"exception.type": "OOM", "bytes": 1 << 30}),
            SpanEvent("retry", T0 + 260),
        ],
        links=[SpanLink(OTHER_TID, OTHER_SID, {"link.kind": "follows"}), SpanLink(TID, SID)],
    )
    odd_flags = span_record(span_id=b"\x05" * 8, trace_flags=0x1FF)
    req = build_traces_request([(res(), [root, log(), child, odd_flags])])
    assert req is not None
    req = parse_traces(req.SerializeToString())
    assert len(req.resource_spans) == 1
    ss = req.resource_spans[0].scope_spans
    assert len(ss) == 1
    assert (ss[0].scope.name, ss[0].scope.version) == ("emp_fastbuf", "0.1.0")
    s_root, s_child, s_odd = ss[0].spans

    assert s_root.trace_id == TID and s_root.span_id == SID
    assert s_root.parent_span_id == b""
    assert s_root.name == "job"
    assert s_root.kind == Span.SPAN_KIND_SERVER
    assert s_root.start_time_unix_nano == T0 + 100
    assert s_root.end_time_unix_nano == T0 + 500
    assert s_root.flags == 1
    assert s_root.status.code == Status.STATUS_CODE_OK and s_root.status.message == ""
    assert s_root.dropped_attributes_count == 2
    assert attrs(s_root.attributes) == {
        "emp.job_id": ("string_value", "j1"),
        "gpu": ("int_value", 0),
        "model": ("string_value", "sdxl"),
    }
    assert list(s_root.events) == [] and list(s_root.links) == []

    assert s_child.trace_id == TID and s_child.span_id == SID2
    assert s_child.parent_span_id == SID
    assert s_child.kind == Span.SPAN_KIND_CLIENT
    assert s_child.flags == 0
    assert (s_child.start_time_unix_nano, s_child.end_time_unix_nano) == (T0 + 200, T0 + 300)
    assert s_child.status.code == Status.STATUS_CODE_ERROR
    assert s_child.status.message == "CUDA out of memory"
    assert [(e.name, e.time_unix_nano) for e in s_child.events] == [
        ("exception", T0 + 250),
        ("retry", T0 + 260),
    ]
    assert attrs(s_child.events[0].attributes) == {
        "exception.type": ("string_value", "OOM"),
        "bytes": ("int_value", 1 << 30),
    }
    assert list(s_child.events[1].attributes) == []
    assert [(ln.trace_id, ln.span_id) for ln in s_child.links] == [
        (OTHER_TID, OTHER_SID),
        (TID, SID),
    ]
    assert attrs(s_child.links[0].attributes) == {"link.kind": ("string_value", "follows")}
    assert len(s_child.attributes) == 0

    assert s_odd.flags == 0xFF  # only the W3C trace flags, in the low 8 bits
    assert not s_odd.HasField("status")  # UNSET without a message: no status at all


# --- splitting --------------------------------------------------------------------------


def _flatten_logs(chunks: list[bytes]) -> list[tuple[str, str, int, str]]:
    out = []
    for chunk in chunks:
        req = parse_logs(chunk)
        for rl in req.resource_logs:
            service = attrs(rl.resource.attributes)["service.name"][1]
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    out.append((service, sl.scope.name, lr.time_unix_nano, lr.body.string_value))
    return out


def test_logs_split_under_a_small_cap_keeps_everything_in_order() -> None:
    groups = []
    expected = []
    n = 0
    for g in range(4):
        resource = res(f"svc{g % 3}")  # svc0 appears twice: one ResourceLogs
        if g == 2:
            resource.scope_name = "other"
        records = []
        for _ in range(60):
            body = "x" * (n % 97)
            records.append(log(n, body=body, context={"job_id": f"j{n % 5}"}, attributes={"n": n}))
            n += 1
        groups.append((resource, records))
    one = build_logs_request(groups, observed_time_unix_nano=T0)
    assert one is not None
    whole = one.SerializeToString()
    for rl in one.resource_logs:
        service = attrs(rl.resource.attributes)["service.name"][1]
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                expected.append((service, sl.scope.name, lr.time_unix_nano, lr.body.string_value))

    max_bytes = 1500
    chunks = list(iter_logs_requests(groups, max_bytes, observed_time_unix_nano=T0))
    assert len(chunks) > 5
    assert all(len(c) <= max_bytes for c in chunks)
    assert _flatten_logs(chunks) == expected
    # every record keeps its attributes through the re-packing
    for chunk in chunks:
        for rl in parse_logs(chunk).resource_logs:
            assert attrs(rl.resource.attributes)["service.instance.id"][1].endswith("-1")
            for sl in rl.scope_logs:
                assert sl.scope.version == "0.1.0"
                for lr in sl.log_records:
                    n_attr = attrs(lr.attributes)["n"][1]
                    assert lr.time_unix_nano == T0 + n_attr
                    assert attrs(lr.attributes)["emp.job_id"][1] == f"j{n_attr % 5}"
    # under the cap: one request, byte-identical to the plain build
    assert list(iter_logs_requests(groups, len(whole), observed_time_unix_nano=T0)) == [whole]
    assert list(iter_logs_requests(groups, observed_time_unix_nano=T0)) == [whole]
    assert DEFAULT_MAX_BYTES == 64 * 1024 * 1024


def test_a_record_larger_than_the_cap_goes_alone() -> None:
    groups = [(res(), [log(0), log(1, body="B" * 5000), log(2), log(3)])]
    chunks = list(iter_logs_requests(groups, 1000, observed_time_unix_nano=T0))
    sizes = [len(c) for c in chunks]
    bodies = [[lr.body.string_value for lr in _records(c)] for c in chunks]
    big = [i for i, b in enumerate(bodies) if "B" * 5000 in b]
    assert len(big) == 1
    assert bodies[big[0]] == ["B" * 5000]
    assert sizes[big[0]] > 1000
    assert all(s <= 1000 for i, s in enumerate(sizes) if i != big[0])
    assert [b for bs in bodies for b in bs] == ["message 0", "B" * 5000, "message 2", "message 3"]


def _records(chunk: bytes) -> list[Any]:
    return [
        lr
        for rl in parse_logs(chunk).resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    ]


def test_traces_split_under_a_small_cap() -> None:
    spans = [
        span_record(
            span_id=struct.pack(">Q", i + 1),
            name=f"s{i}",
            attributes={"i": i, "pad": "p" * (i % 50)},
            events=[SpanEvent("e", T0 + i)],
        )
        for i in range(150)
    ]
    groups = [(res("a"), spans[:70]), (res("b"), spans[70:])]
    chunks = list(iter_traces_requests(groups, 2000))
    assert len(chunks) > 3
    assert all(len(c) <= 2000 for c in chunks)
    got = []
    for c in chunks:
        for rs in parse_traces(c).resource_spans:
            service = attrs(rs.resource.attributes)["service.name"][1]
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    got.append((service, sp.name, sp.span_id, len(sp.events)))
    assert got == [
        ("a" if i < 70 else "b", f"s{i}", struct.pack(">Q", i + 1), 1) for i in range(150)
    ]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=600), min_size=1, max_size=40),
    services=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=40),
    max_bytes=st.integers(min_value=1, max_value=4000),
)
def test_split_invariants(sizes: list[int], services: list[str], max_bytes: int) -> None:
    groups = []
    for i, size in enumerate(sizes):
        groups.append((res(services[i % len(services)]), [log(i, body="y" * size)]))
    one = build_logs_request(groups, observed_time_unix_nano=T0)
    assert one is not None
    expected = [
        lr.time_unix_nano
        for rl in one.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    ]
    chunks = list(iter_logs_requests(groups, max_bytes, observed_time_unix_nano=T0))
    got = []
    for c in chunks:
        recs = _records(c)
        assert recs, "no empty request"
        assert len(c) <= max_bytes or len(recs) == 1
        got.extend(lr.time_unix_nano for lr in recs)
    assert got == expected


def test_split_never_overshoots_for_any_cap() -> None:
    """Every cap from tiny to roomy over one fixed mix of resources, scopes and sizes: the
    size estimate must never undercount, not even by a byte."""
    a, b = res("a"), res("b")
    b_plugin = Resource(attributes=dict(b.attributes), scope_name="plugin-scope", scope_version="9")
    groups = [
        (a, [log(i, body="z" * (7 * i % 53)) for i in range(6)]),
        (b_plugin, [log(10 + i, body="q" * (11 * i % 41)) for i in range(5)]),
        (b, [log(20 + i, attributes={"i": i}) for i in range(4)]),
    ]
    one = build_logs_request(groups, observed_time_unix_nano=T0)
    assert one is not None
    expected = [lr.time_unix_nano for c in [one.SerializeToString()] for lr in _records(c)]
    total = len(one.SerializeToString())
    for max_bytes in range(60, total + 2):
        chunks = list(iter_logs_requests(groups, max_bytes, observed_time_unix_nano=T0))
        got = []
        for c in chunks:
            recs = _records(c)
            assert len(c) <= max_bytes or len(recs) == 1, (max_bytes, len(c), len(recs))
            got.extend(lr.time_unix_nano for lr in recs)
        assert got == expected
    assert len(list(iter_logs_requests(groups, total, observed_time_unix_nano=T0))) == 1


# --- interop with the OpenTelemetry SDK's encoder ----------------------------------------


class _FixedIds(IdGenerator):
    def __init__(self, trace_id: bytes, span_ids: list[bytes]) -> None:
        self._trace_id = int.from_bytes(trace_id, "big")
        self._span_ids = [int.from_bytes(s, "big") for s in span_ids]

    def generate_trace_id(self) -> int:
        return self._trace_id

    def generate_span_id(self) -> int:
        return self._span_ids.pop(0)


_SDK_DEFAULT_KEYS = ("telemetry.sdk.",)


def _norm_resource(kvs: Any) -> dict[str, Any]:
    return {k: v for k, v in attrs(kvs).items() if not k.startswith(_SDK_DEFAULT_KEYS)}


def _norm_kvs(kvs: Any) -> dict[str, Any]:
    return attrs(kvs)


def _norm_traces(req: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(
                    {
                        "resource": _norm_resource(rs.resource.attributes),
                        "trace_id": sp.trace_id,
                        "span_id": sp.span_id,
                        "parent": sp.parent_span_id,
                        "name": sp.name,
                        "kind": sp.kind,
                        "start": sp.start_time_unix_nano,
                        "end": sp.end_time_unix_nano,
                        "attributes": _norm_kvs(sp.attributes),
                        "status": (sp.status.code, sp.status.message),
                        "events": [
                            (e.name, e.time_unix_nano, _norm_kvs(e.attributes)) for e in sp.events
                        ],
                        "links": [
                            (ln.trace_id, ln.span_id, _norm_kvs(ln.attributes)) for ln in sp.links
                        ],
                        "dropped_attributes": sp.dropped_attributes_count,
                    }
                )
    return out


def test_spans_match_the_sdk_encoder() -> None:
    from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode
    from opentelemetry.trace.status import Status as SdkStatus

    resource_attrs = {"service.name": "gpu-worker", "service.instance.id": "w-1"}
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=SdkResource.create(resource_attrs),
        id_generator=_FixedIds(TID, [SID, SID2]),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        tracer = provider.get_tracer("emp_fastbuf", "0.1.0")
        root = tracer.start_span(
            "job",
            kind=SpanKind.SERVER,
            attributes={"emp.job_id": "j1", "gpu": 0, "ratio": 0.5, "ok": True},
            start_time=T0 + 100,
        )
        child = tracer.start_span(
            "step",
            context=otel_trace.set_span_in_context(root),
            kind=SpanKind.CLIENT,
            attributes={"emp.job_id": "j1", "tags": ["a", "b"]},
            links=[
                Link(
                    SpanContext(
                        int.from_bytes(OTHER_TID, "big"),
                        int.from_bytes(OTHER_SID, "big"),
                        is_remote=False,
                    ),
                    {"link.kind": "follows"},
                )
            ],
            start_time=T0 + 200,
        )
        child.add_event("exception", {"exception.type": "OOM"}, timestamp=T0 + 250)
        child.set_status(SdkStatus(StatusCode.ERROR, "CUDA out of memory"))
        child.end(end_time=T0 + 300)
        root.set_status(SdkStatus(StatusCode.OK))
        root.end(end_time=T0 + 500)
        sdk_req = encode_spans(exporter.get_finished_spans())
    finally:
        provider.shutdown()

    ours_root = span_record(
        name="job",
        span_kind=2,
        start_unix_nano=T0 + 100,
        time_unix_nano=T0 + 500,
        status_code=STATUS_OK,
        context={"job_id": "j1"},
        attributes={"gpu": 0, "ratio": 0.5, "ok": True},
    )
    ours_child = span_record(
        name="step",
        span_id=SID2,
        parent_span_id=SID,
        span_kind=3,
        start_unix_nano=T0 + 200,
        time_unix_nano=T0 + 300,
        status_code=STATUS_ERROR,
        status_message="CUDA out of memory",
        context={"job_id": "j1"},
        attributes={"tags": ["a", "b"]},
        events=[SpanEvent("exception", T0 + 250, {"exception.type": "OOM"})],
        links=[SpanLink(OTHER_TID, OTHER_SID, {"link.kind": "follows"})],
    )
    resource = Resource(attributes=resource_attrs, scope_name="emp_fastbuf", scope_version="0.1.0")
    ours = build_traces_request([(resource, [ours_child, ours_root])])  # SDK order: end order
    assert ours is not None
    ours = parse_traces(ours.SerializeToString())

    # Normalised away: the SDK's own resource keys (telemetry.sdk.*) and span flags (the SDK
    # encoder sets only the is-remote bits there; we carry the W3C flags in the low byte).
    assert _norm_traces(ours) == _norm_traces(sdk_req)
    assert len(_norm_traces(ours)) == 2
    sdk_scope = sdk_req.resource_spans[0].scope_spans[0].scope
    our_scope = ours.resource_spans[0].scope_spans[0].scope
    assert (our_scope.name, our_scope.version) == (sdk_scope.name, sdk_scope.version)
    assert all(sp.flags & 0xFF == 1 for sp in ours.resource_spans[0].scope_spans[0].spans)


def _norm_logs(req: ExportLogsServiceRequest) -> list[dict[str, Any]]:
    out = []
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                out.append(
                    {
                        "resource": _norm_resource(rl.resource.attributes),
                        "scope": (sl.scope.name, sl.scope.version),
                        "time": lr.time_unix_nano,
                        "severity": (lr.severity_number, lr.severity_text),
                        "body": any_value(lr.body),
                        "attributes": _norm_kvs(lr.attributes),
                        "trace_id": lr.trace_id,
                        "span_id": lr.span_id,
                        "event_name": lr.event_name,
                        "dropped_attributes": lr.dropped_attributes_count,
                        "flags": lr.flags,
                    }
                )
    return out


def test_logs_and_events_match_the_sdk_encoder() -> None:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    resource_attrs = {"service.name": "gpu-worker", "service.instance.id": "w-2", "host.name": "h1"}
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=SdkResource.create(resource_attrs), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    try:
        logger = provider.get_logger("emp_fastbuf", "0.1.0")
        span_ctx = SpanContext(
            int.from_bytes(TID, "big"),
            int.from_bytes(SID, "big"),
            is_remote=False,
            trace_flags=TraceFlags(1),
        )
        ctx = otel_trace.set_span_in_context(NonRecordingSpan(span_ctx))
        logger.emit(
            timestamp=T0 + 1,
            observed_timestamp=T0 + 50,
            context=ctx,
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body="disk almost full",
            attributes={"emp.job_id": "j9", "free_gb": 1.5, "disk": "/data", "n": 3},
        )
        logger.emit(
            timestamp=T0 + 2,
            observed_timestamp=T0 + 50,
            context=otel_trace.set_span_in_context(otel_trace.INVALID_SPAN),
            event_name="job.finished",
            attributes={"emp.job_id": "j9", "ok": True},
        )
        sdk_req = encode_logs(exporter.get_finished_logs())
    finally:
        provider.shutdown()

    resource = Resource(attributes=resource_attrs, scope_name="emp_fastbuf", scope_version="0.1.0")
    ours = build_logs_request(
        [
            (
                resource,
                [
                    log(
                        1,
                        severity_number=13,
                        severity_text="WARN",
                        body="disk almost full",
                        trace_id=TID,
                        span_id=SID,
                        context={"job_id": "j9"},
                        attributes={"free_gb": 1.5, "disk": "/data", "n": 3},
                    ),
                    Record(
                        kind=EVENT,
                        time_unix_nano=T0 + 2,
                        name="job.finished",
                        context={"job_id": "j9"},
                        attributes={"ok": True},
                    ),
                ],
            )
        ],
        observed_time_unix_nano=T0 + 50,
    )
    assert ours is not None
    ours = parse_logs(ours.SerializeToString())
    # Normalised away: telemetry.sdk.* resource keys. LogRecord.flags is compared: the SDK
    # copies the span's trace flags there, as our records do.
    assert _norm_logs(ours) == _norm_logs(sdk_req)
    assert len(_norm_logs(ours)) == 2
    sdk_records = sdk_req.resource_logs[0].scope_logs[0].log_records
    our_records = ours.resource_logs[0].scope_logs[0].log_records
    assert [r.observed_time_unix_nano for r in our_records] == [
        r.observed_time_unix_nano for r in sdk_records
    ]
