"""The native transcoder (agent.transcode._transcode): raw records -> OTLP request bytes,
checked against the Python path (reference.decode_record + agent.otlp) by parsing both
with the official opentelemetry-proto classes. Inputs are generated (valid, mutated,
garbage); the Python decoder's verdict on each record is the reference for what is rejected.

The metric points (``metric_points``) are checked the same way against
``metrics.metric_point`` of decoded records, and behaviour both parsers must share runs
against each of them through the ``implementation`` fixture."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from emp_fastbuf.agent.batch import decode_batch
from emp_fastbuf.agent.otlp import reference as otlp
from emp_fastbuf.agent.otlp.metrics import MetricPoint, MetricsAggregator
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    GAUGE,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    UPDOWNCOUNTER,
    AttrValue,
    CorruptRecord,
    LaneChunk,
    Record,
    Resource,
    reference,
)
from support.parsers import (
    GOOD_METRIC,
    MALFORMED_METRICS,
    Implementation,
    Points,
    reference_metric_points,
    same_value,
)
from support.strategies import Chunks, batches, mutated, scalars, valid_metrics, valid_records

pytestmark = pytest.mark.native

OBSERVED = 1_700_000_000_123_456_789
T0 = 1_700_000_000_000_000_000

# ---- reference ------------------------------------------------------------------------


def _lane_chunks(chunks: Chunks) -> list[LaneChunk]:
    return [LaneChunk(meta, recs) for meta, recs in chunks]


def _decodes(raw: bytes) -> bool:
    try:
        reference.decode_record(raw)
    except ValueError:
        return False
    return True


def _expected_rejected(chunks: Chunks, kinds: tuple[int, ...], strays: bool) -> int:
    """Records the Python decoder rejects, among those the native function is in charge
    of: its own kinds by the kind byte, plus (for logs) records of no known kind."""
    n = 0
    for _meta, recs in chunks:
        for raw in recs:
            kind = raw[1] if len(raw) >= 2 else 0
            mine = kind in kinds or (strays and kind not in (LOG, EVENT, SPAN, METRIC))
            if mine and not _decodes(raw):
                n += 1
    return n


def check_logs(chunks: Chunks) -> None:
    groups = decode_batch(_lane_chunks(chunks))
    expected = otlp.build_logs_request(groups, observed_time_unix_nano=OBSERVED)
    payload, encoded, rejected = _transcode.logs_request(chunks, OBSERVED)
    want = sum(1 for _res, recs in groups for r in recs if r.kind in (LOG, EVENT))
    assert encoded == want
    assert rejected == _expected_rejected(chunks, (LOG, EVENT), True)
    if expected is None:
        assert payload == b""
    else:
        assert ExportLogsServiceRequest.FromString(payload) == expected


def check_spans(chunks: Chunks) -> None:
    groups = decode_batch(_lane_chunks(chunks))
    expected = otlp.build_traces_request(groups)
    payload, encoded, rejected = _transcode.spans_request(chunks)
    assert encoded == sum(1 for _res, recs in groups for r in recs if r.kind == SPAN)
    assert rejected == _expected_rejected(chunks, (SPAN,), False)
    if expected is None:
        assert payload == b""
    else:
        assert ExportTraceServiceRequest.FromString(payload) == expected


# ---- equivalence ----------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(batches(valid_records))
def test_logs_match_the_python_path(chunks: Chunks) -> None:
    check_logs(chunks)


@FAST
@given(batches(valid_records))
def test_spans_match_the_python_path(chunks: Chunks) -> None:
    check_spans(chunks)


@FAST
@given(batches(st.one_of(valid_records, mutated(), mutated())))
def test_malformed_records_are_rejected_like_the_python_decoder(chunks: Chunks) -> None:
    check_logs(chunks)
    check_spans(chunks)


@settings(max_examples=100, deadline=None)
@given(batches(st.binary(max_size=60)))
def test_garbage_never_crashes(chunks: Chunks) -> None:
    check_logs(chunks)
    check_spans(chunks)


UTF8_EDGES = [
    b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xe0\x80\x80", b"\xe0\xa0\x80",
    b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xef\xbf\xbf", b"\xe2\x82",
    b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"abcdefgh\xe2\x82\xac", b"abcdefg\xe2\x82",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(UTF8_EDGES), st.binary(max_size=12)))
def test_utf8_is_checked_exactly_as_python_does(text: bytes) -> None:
    """Arbitrary bytes in a log body, an event name, a span name and a key: rejected
    exactly when they are not UTF-8."""
    ids = {"trace_id": b"\x01" * 16, "span_id": b"\x02" * 8}
    log = reference.encode_record(Record(kind=LOG, time_unix_nano=1))
    event = reference.encode_record(Record(kind=EVENT, time_unix_nano=1, **ids))  # type: ignore[arg-type]
    span = reference.encode_record(Record(kind=SPAN, time_unix_nano=1, **ids))  # type: ignore[arg-type]
    n = len(text)
    raws = [
        log[:14] + struct.pack("<I", n) + text + log[18:],  # body
        event[:36] + struct.pack("<H", n) + text + event[38:],  # name
        span[:36] + struct.pack("<H", n) + text + span[38:],  # name
        log[:-2] + struct.pack("<HH", 1, n) + text + b"\x00",  # a key, value None
    ]
    chunks = [(b"", raws)]
    check_logs(chunks)
    check_spans(chunks)


def test_first_example_is_byte_identical() -> None:
    """Not required by the contract, but the writer follows protobuf's field order."""
    meta = reference.encode_resource(Resource({"service.name": "t"}, "emp_fastbuf", "0.1"))
    rec = Record(
        kind=LOG, time_unix_nano=T0, severity_number=9, severity_text="INFO", body="b",
        context={"job_id": "j"}, attributes={"n": 1, "f": 0.5, "s": "x", "l": [1, None]},
    )  # fmt: skip
    groups = decode_batch([LaneChunk(meta, [reference.encode_record(rec)])])
    py = otlp.build_logs_request(groups, observed_time_unix_nano=OBSERVED)
    assert py is not None
    payload, _, _ = _transcode.logs_request([(meta, [reference.encode_record(rec)])], OBSERVED)
    assert payload == py.SerializeToString()


# ---- attribute merging, hand-made attrlists ------------------------------------------


def _attrlist(items: Sequence[tuple[str, AttrValue]]) -> bytes:
    """An attrlist that may repeat keys (a dict cannot)."""
    return struct.pack("<H", len(items)) + b"".join(
        reference.encode_attrs({k: v})[2:] for k, v in items
    )


def _log_with(ctx: Sequence[tuple[str, AttrValue]], own: Sequence[tuple[str, AttrValue]]) -> bytes:
    head = reference.encode_record(Record(kind=LOG, time_unix_nano=T0, body="x"))
    assert head.endswith(b"\x00\x00\x00\x00")
    return head[:-4] + _attrlist(ctx) + _attrlist(own)


item_lists = st.lists(
    st.tuples(st.sampled_from(["job_id", "emp.job_id", "a", "b", "c"]), scalars), max_size=8
)


@FAST
@given(item_lists, item_lists)
def test_repeated_and_conflicting_keys(
    ctx: list[tuple[str, AttrValue]], own: list[tuple[str, AttrValue]]
) -> None:
    check_logs([(b"", [_log_with(ctx, own)])])


@pytest.mark.parametrize("n", [15, 16, 17, 40, 500])
def test_long_attribute_lists_with_repeats(n: int) -> None:
    """Past 16 entries the key lookups use a hash index: same result."""
    ctx = [(f"k{i % (n // 2 + 1)}", i) for i in range(n)] + [("job_id", "j")]
    own = [(f"k{(i * 7) % n}", f"v{i}") for i in range(n)] + [("emp.job_id", 1)]
    check_logs([(b"", [_log_with(ctx, own), _log_with(own, ctx)])])
    both = [*ctx, ("emp.job_id", 2.5), ("job_id", "again")]
    check_logs([(b"", [_log_with(both, own), _log_with(both, [])])])


# ---- resources ------------------------------------------------------------------------


def test_resources_group_by_equal_attributes_and_scopes_split_them() -> None:
    a = reference.encode_resource(Resource({"service.name": "s", "n": 1}, "emp_fastbuf", "1"))
    a_reordered = reference.encode_resource(
        Resource({"n": 1, "service.name": "s"}, "emp_fastbuf", "1")
    )
    a_other_scope = reference.encode_resource(Resource({"service.name": "s", "n": 1}, "x", "2"))
    b = reference.encode_resource(Resource({"service.name": "s", "n": True}, "emp_fastbuf", "1"))
    log = reference.encode_record(Record(kind=LOG, time_unix_nano=T0, body="x"))
    chunks = [(m, [log]) for m in (b"\x01\x05broken", a, b, a_reordered, a_other_scope, b"")]
    check_logs(chunks)
    payload, encoded, _ = _transcode.logs_request(chunks, OBSERVED)
    req = ExportLogsServiceRequest.FromString(payload)
    assert encoded == 6
    assert [len(r.scope_logs) for r in req.resource_logs] == [1, 2, 1, 1]
    corrupt = req.resource_logs[0].resource.attributes
    assert [(kv.key, kv.value.bool_value) for kv in corrupt] == [("emp.resource_corrupt", True)]
    assert req.resource_logs[0].scope_logs[0].scope.name == "emp_fastbuf"
    assert len(req.resource_logs[1].scope_logs[0].log_records) == 2  # a and a_reordered


def test_lane_chunks_and_tuples_are_both_accepted() -> None:
    log = reference.encode_record(Record(kind=EVENT, time_unix_nano=T0, name="e"))
    as_tuples = _transcode.logs_request([(b"", [log])], OBSERVED)
    assert _transcode.logs_request([LaneChunk(b"", [log])], OBSERVED) == as_tuples
    assert as_tuples[1:] == (1, 0)


def test_nothing_to_send() -> None:
    metric = reference.encode_record(Record(kind=METRIC, time_unix_nano=1, instrument=COUNTER))
    assert _transcode.logs_request([], OBSERVED) == (b"", 0, 0)
    assert _transcode.logs_request([(b"", [metric, b"\x01"])], OBSERVED) == (b"", 0, 1)
    assert _transcode.spans_request([(b"", [metric, b"junk"])]) == (b"", 0, 0)
    assert _transcode.logs_requests([], OBSERVED) == ([], 0, 0)


# ---- size cap and big batches ---------------------------------------------------------


def _big_batch(n: int, body: int) -> Chunks:
    metas = [
        reference.encode_resource(Resource({"service.name": f"s{i % 3}"}, "emp_fastbuf", "1"))
        for i in range(5)
    ]
    chunks: Chunks = []
    for c in range(10):
        recs = []
        for i in range(n // 10):
            kind = (LOG, EVENT, SPAN)[i % 3]
            recs.append(
                reference.encode_record(
                    Record(
                        kind=kind, time_unix_nano=T0 + i, trace_id=b"\x07" * 16,
                        span_id=struct.pack("<Q", i + 1), body="x" * body, name=f"n{i}",
                        context={"job_id": f"job{c}"}, attributes={"i": i, "c": c},
                    )
                )
            )  # fmt: skip
        chunks.append((metas[c % 5], recs))
    return chunks


def test_big_batch_parses() -> None:
    chunks = _big_batch(30_000, 600)
    payload, encoded, rejected = _transcode.logs_request(chunks, OBSERVED)
    assert len(payload) > 6 << 20 and encoded == 20_000 and rejected == 0
    req = ExportLogsServiceRequest.FromString(payload)
    assert sum(len(s.log_records) for r in req.resource_logs for s in r.scope_logs) == 20_000
    assert len(req.resource_logs) == 3  # five blobs, three distinct attribute sets
    spans, n_spans, _ = _transcode.spans_request(chunks)
    assert n_spans == 10_000
    assert len(ExportTraceServiceRequest.FromString(spans).resource_spans) == 3


@pytest.mark.parametrize("max_bytes", [1, 700, 5000, 60_000, 10 << 20])
def test_split_like_the_python_path(max_bytes: int) -> None:
    chunks = _big_batch(600, 300)
    groups = decode_batch(_lane_chunks(chunks))
    want_logs = list(otlp.iter_logs_requests(groups, max_bytes, observed_time_unix_nano=OBSERVED))
    got_logs, n, _ = _transcode.logs_requests(chunks, OBSERVED, max_bytes)
    assert n == 400 and len(got_logs) == len(want_logs)
    for got, want in zip(got_logs, want_logs, strict=True):
        assert ExportLogsServiceRequest.FromString(got) == ExportLogsServiceRequest.FromString(want)
    want_spans = list(otlp.iter_traces_requests(groups, max_bytes))
    got_spans, n, _ = _transcode.spans_requests(chunks, max_bytes)
    assert n == 200 and len(got_spans) == len(want_spans)
    for got, want in zip(got_spans, want_spans, strict=True):
        assert ExportTraceServiceRequest.FromString(got) == ExportTraceServiceRequest.FromString(
            want
        )


# ---- bad calls ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        [("not bytes", [b""])],
        [(b"", ["not bytes"])],
        [(b"", [bytearray(b"\x01\x01")])],
        [(b"",)],
        [42],
        None,
    ],
)
def test_wrong_types_raise_type_error(chunks: object) -> None:
    with pytest.raises(TypeError):
        _transcode.logs_request(chunks, OBSERVED)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _transcode.spans_request(chunks)  # type: ignore[arg-type]


@pytest.mark.parametrize("observed", [-1, 1 << 64, 1.5, "1", None])
def test_bad_observed_time(observed: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        _transcode.logs_request([], observed)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_bytes", [0, -5, 1.0, "10", None, True])
def test_bad_max_bytes(max_bytes: object) -> None:
    with pytest.raises(ValueError):
        _transcode.logs_requests([], OBSERVED, max_bytes)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _transcode.spans_requests([], max_bytes)  # type: ignore[arg-type]


# ---- metric points: native against reference -----------------------------------------


def check_metric_points(raws: list[bytes]) -> Points:
    got = _transcode.metric_points(raws)
    want = reference_metric_points(raws)
    metric_kind = [r for r in raws if len(r) > 1 and r[1] == METRIC]
    assert got[1] == want[1] == sum(1 for r in metric_kind if not _decodes(r))
    assert len(got[0]) == len(want[0])
    for g, w in zip(got[0], want[0], strict=True):
        assert same_value(g, w), (g, w)
        assert g[6] == otlp.freeze_attributes(g[5])
    return got


@FAST
@given(st.lists(valid_metrics, max_size=8))
def test_metric_points_match_the_reference(raws: list[bytes]) -> None:
    points, rejected = check_metric_points(raws)
    assert rejected == 0 and len(points) == len(raws)


@FAST
@given(
    st.lists(
        st.one_of(valid_metrics, mutated(valid_metrics), mutated(valid_metrics), valid_records),
        max_size=8,
    )
)
def test_mutated_metric_records_are_rejected_like_the_reference(raws: list[bytes]) -> None:
    check_metric_points(raws)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b"\x01\x04" + b), max_size=6))
def test_metric_garbage_never_crashes(raws: list[bytes]) -> None:
    check_metric_points(raws)


@FAST
@given(st.lists(st.one_of(valid_metrics, mutated(valid_metrics)), max_size=10))
def test_native_points_aggregate_as_decoded_records(raws: list[bytes]) -> None:
    """The agent's metric path (native points, ``feed_points``) against decoded records
    fed one by one: the same series, values, skips and request."""
    res = Resource({"service.name": "w"}, "emp_fastbuf", "1")
    by_record, by_points = MetricsAggregator(), MetricsAggregator()
    refused = 0
    for raw in raws:
        try:
            rec = reference.decode_record(raw)
        except CorruptRecord:
            continue
        try:
            by_record.feed(res, rec)
        except (TypeError, ValueError):
            refused += 1
    assert by_points.feed_points(res, _transcode.metric_points(raws)[0]) == refused
    assert same_value(by_points.snapshot(), by_record.snapshot())
    assert by_points.stats() == by_record.stats()
    want, got = by_record.collect(T0), by_points.collect(T0)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got.SerializeToString() == want.SerializeToString()


# ---- metric points: what both implementations do --------------------------------------


def test_the_malformed_metric_records_are_malformed() -> None:
    assert _decodes(GOOD_METRIC)
    assert not any(_decodes(raw) for raw in MALFORMED_METRICS.values())


def test_metric_points_of_each_instrument(implementation: Implementation) -> None:
    nan = math.nan
    raws = [
        reference.encode_record(
            Record(
                METRIC, T0, instrument=COUNTER, name="tokens", unit="{t}", description="d",
                value=512, context={"job_id": "j", "rank": 0}, attributes={"rank": 1, "g": "a"},
            )
        ),
        reference.encode_record(Record(METRIC, T0 + 1, instrument=UPDOWNCOUNTER, value=-(2**63))),
        reference.encode_record(Record(METRIC, T0 + 2, instrument=GAUGE, name="t", value=nan)),
        reference.encode_record(
            Record(
                METRIC, T0 + 3, instrument=HISTOGRAM, name="ms", values=[1.5, nan, -0.0],
                bounds=[10.0, math.inf], attributes={"l": [1, None, b"x"], "f": nan},
            )
        ),
        reference.encode_record(Record(METRIC, T0 + 4, instrument=HISTOGRAM, values=[2.0])),
    ]  # fmt: skip
    points, rejected = implementation.metric_points(raws)
    want: list[MetricPoint] = [
        (
            T0, COUNTER, "tokens", "{t}", "d", {"emp.job_id": "j", "rank": 1, "g": "a"},
            (("emp.job_id", ("str", "j")), ("g", ("str", "a")), ("rank", ("int", 1))),
            512, None,
        ),
        (T0 + 1, UPDOWNCOUNTER, "", "", "", {}, (), -(2**63), None),
        (T0 + 2, GAUGE, "t", "", "", {}, (), nan, None),
        (
            T0 + 3, HISTOGRAM, "ms", "", "", {"l": [1, None, b"x"], "f": nan},
            (
                ("f", ("float", "nan")),
                ("l", ("list", (("int", 1), ("none", None), ("bytes", b"x")))),
            ),
            [1.5, nan, -0.0], (10.0, math.inf),
        ),
        (T0 + 4, HISTOGRAM, "", "", "", {}, (), [2.0], ()),
    ]  # fmt: skip
    assert rejected == 0
    assert same_value(points, want), points


@pytest.mark.parametrize("raw", MALFORMED_METRICS.values(), ids=MALFORMED_METRICS.keys())
def test_malformed_metric_records_are_counted_and_skipped(
    implementation: Implementation, raw: bytes
) -> None:
    points, rejected = implementation.metric_points([GOOD_METRIC, raw, GOOD_METRIC])
    assert rejected == 1
    assert [p[:5] for p in points] == [(T0, COUNTER, "m", "", "")] * 2


def test_other_kinds_are_skipped_unchecked(implementation: Implementation) -> None:
    log = reference.encode_record(Record(kind=LOG, time_unix_nano=T0, body="x"))
    others = [b"", b"\x01", b"\x01\x01garbage", b"\x09\x03", b"\x01\x05resource", log]
    assert implementation.metric_points(others) == ([], 0)
    points, rejected = implementation.metric_points([*others, GOOD_METRIC, *others])
    assert (len(points), rejected) == (1, 0)
    assert implementation.metric_points([]) == ([], 0)


@pytest.mark.parametrize(
    ("context", "own", "want"),
    [
        ({"job_id": "j"}, {}, {"emp.job_id": "j"}),
        ({"job_id": "j", "a": 1}, {"a": 2, "b": 3}, {"emp.job_id": "j", "a": 2, "b": 3}),
        ({"emp.job_id": 1, "job_id": "j"}, {}, {"emp.job_id": "j"}),
        ({"job_id": "j", "emp.job_id": 1}, {"x": 0}, {"emp.job_id": 1, "x": 0}),
        ({"a": 1, "job_id": "j"}, {"emp.job_id": 2}, {"a": 1, "emp.job_id": 2}),
        ({}, {"job_id": "own"}, {"job_id": "own"}),
    ],
)
def test_context_first_with_job_id_renamed_then_own_attributes(
    implementation: Implementation,
    context: dict[str, AttrValue],
    own: dict[str, AttrValue],
    want: dict[str, AttrValue],
) -> None:
    raw = reference.encode_record(
        Record(METRIC, T0, instrument=COUNTER, value=1, context=context, attributes=own)
    )
    points, rejected = implementation.metric_points([raw, raw])
    assert rejected == 0 and len(points) == 2
    assert same_value(points[0][5], want) and same_value(points[1][5], want)
    assert points[0][6] == points[1][6] == otlp.freeze_attributes(want)


def test_equal_attribute_sets_have_one_key_whatever_their_order(
    implementation: Implementation,
) -> None:
    raws = [
        reference.encode_record(Record(METRIC, T0, instrument=GAUGE, value=1, attributes=a))
        for a in ({"a": 1, "b": 0.0}, {"b": -0.0, "a": 1}, {"a": True, "b": 0.0}, {"a": 1.0})
    ]
    keys = [p[6] for p in implementation.metric_points(raws)[0]]
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3


@pytest.mark.parametrize("element", ["text", 1, None, bytearray(b"\x01\x04"), [b"x"]])
def test_metric_points_take_bytes_only(implementation: Implementation, element: Any) -> None:
    with pytest.raises(TypeError, match="records must be bytes"):
        implementation.metric_points([GOOD_METRIC, element])
