"""emp_fastbuf.agent.transcode._transcode.store_rows: raw records -> the store's row tuples, checked
against the Python path (``store.store_row(reference.decode_record(raw))``), types and JSON
bytes included. Inputs are generated (valid, mutated, garbage); the Python path's verdict
on each record decides what must be declined."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    GAUGE,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    STATUS_ERROR,
    AttrValue,
    LaneChunk,
    Record,
    SpanEvent,
    SpanLink,
    reference,
)
from emp_fastbuf.store import store_row
from support import CORPUS
from support.parsers import GOOD_METRIC, MALFORMED_METRICS, Implementation
from support.strategies import damaged, mutated, valid_metrics, valid_records

pytestmark = pytest.mark.native

T0 = 1_700_000_000_000_000_000
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")
Rows = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- reference -------------------------------------------------------------------------


def reference_row(raw: bytes) -> tuple[int, tuple[Any, ...]] | None:
    """What the caller's Python path makes of ``raw``: (table, row), or None where it
    raises (a corrupt record)."""
    try:
        rec = reference.decode_record(raw)
    except ValueError:
        return None
    out = store_row(rec)
    assert out is not None  # every kind the decoder accepts has a table
    return out


def same(a: Any, b: Any) -> bool:
    """Equal with equal types; floats by repr (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check(raws: Sequence[bytes]) -> Rows:
    """store_rows(raws) against the reference, record by record: a record is declined
    exactly when the Python path raises, and every other row is the reference row."""
    out = _transcode.store_rows(raws)
    got_tables = [list(rows) for rows in out[:4]]
    declined = out[4]
    want_tables: list[list[tuple[Any, ...]]] = [[], [], [], []]
    want_declined = []
    for raw in raws:
        ref = reference_row(raw)
        if ref is None:
            want_declined.append(raw)
        else:
            want_tables[ref[0]].append(ref[1])
    assert len(declined) == len(want_declined)
    assert all(a is b for a, b in zip(declined, want_declined, strict=True))
    for got, want in zip(got_tables, want_tables, strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert same(g, w), (g, w)
    return out


def enc(rec: Record) -> bytes:
    return reference.encode_record(rec)


def log(**kw: Any) -> bytes:
    return enc(Record(kind=LOG, time_unix_nano=T0, **kw))


def only_row(raw: bytes) -> tuple[Any, ...]:
    out = check([raw])
    (row,) = [row for rows in out[:4] for row in rows]
    return tuple(row)


def attrs_json(raw: bytes) -> Any:
    return only_row(raw)[-1]


# Hand-built pieces for what the encoder cannot write (repeated keys).
def s16(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def alist(*entries: bytes) -> bytes:
    return struct.pack("<H", len(entries)) + b"".join(entries)


def int_entry(key: bytes, value: int) -> bytes:
    return s16(key) + b"\x02" + struct.pack("<q", value)


def str_entry(key: bytes, value: bytes) -> bytes:
    return s16(key) + b"\x01" + struct.pack("<I", len(value)) + value


def raw_log(context: bytes, attributes: bytes) -> bytes:
    head = struct.pack("<BBBBQ", 1, LOG, 0, 0, T0) + b"\x09" + b"\x00" + struct.pack("<I", 0)
    return head + context + attributes


# ---- equivalence -----------------------------------------------------------------------


@FAST
@given(st.lists(valid_records, max_size=8))
def test_valid_records_match_the_python_path(raws: list[bytes]) -> None:
    out = check(raws)
    assert out[4] == []  # every valid record is handled natively


floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@FAST
@given(
    st.lists(floats, min_size=1, max_size=30),
    st.lists(st.floats(allow_nan=False), max_size=6, unique=True).map(sorted),
)
def test_floats_everywhere_match(values: list[float], bounds: list[float]) -> None:
    """Floats as attributes, array elements, context values, event and link attributes,
    metric values, histogram values and bounds."""
    attrs: dict[str, AttrValue] = {f"f{i}": v for i, v in enumerate(values)}
    attrs["arr"] = list(values[:5])
    ctx: dict[str, AttrValue] = {"job_id": values[0], "c": values[-1]}
    span = Record(
        kind=SPAN, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID, name="s",
        events=[SpanEvent("e", 1, attrs)], links=[SpanLink(TRACE, SPAN_ID, attrs)],
    )  # fmt: skip
    raws = [
        log(context=ctx, attributes=attrs),
        enc(span),
        enc(Record(METRIC, T0, instrument=GAUGE, name="g", value=values[0])),
        enc(Record(METRIC, T0, instrument=HISTOGRAM, name="h", values=values, bounds=bounds)),
    ]
    check(raws)


def test_many_floats_print_as_repr() -> None:
    """Random bit patterns and typical magnitudes: the JSON of every float is repr's."""
    rng = np.random.default_rng(7)
    pools = [
        rng.integers(0, 2**64, size=30000, dtype=np.uint64).view(np.float64),
        10 ** rng.uniform(-6, 18, size=30000) * rng.choice([-1.0, 1.0], size=30000),
        rng.standard_normal(30000).astype(np.float32).astype(np.float64),
        np.round(rng.uniform(-1e4, 1e4, size=30000), rng.integers(0, 8)),
        np.array([2.0**k for k in range(-20, 60)] + [2.0**k + 2.0 ** (k - 52) for k in range(60)]),
        np.array([1e-4, 0.0001000000000000001, 9.999999999999999e-05, 2.0**53 - 1, 2.0**53]),
        # Two shortest decimals equally close (repr takes the even one): 1125899906842624.2
        np.array([2.0**50 + 0.25, 2.0**49 + 0.125, 2.0**52 + 0.5, 0.1, 1 / 3, 5e-324, 1e16]),
    ]
    values = [float(v) for pool in pools for v in pool]
    values += [float(np.nextafter(v, 0.0)) for v in values[-200:]]
    for i in range(0, len(values), 20000):
        chunk = values[i : i + 20000]
        check([log(attributes={str(j): v for j, v in enumerate(chunk)})])


@FAST
@given(st.lists(st.one_of(valid_records, mutated(), mutated()), max_size=8))
def test_mutated_records_are_declined_exactly_when_python_rejects_them(
    raws: list[bytes],
) -> None:
    check(raws)


@FAST
@given(
    st.lists(st.one_of(valid_metrics, mutated(valid_metrics), mutated(valid_metrics)), max_size=8)
)
def test_metric_records_match_the_python_path(raws: list[bytes]) -> None:
    """Every instrument, value type, unit and description, bounds and attributes, valid
    and mutated: the rows of ``parse_metric``, which the agent's metric points share."""
    check(raws)


@FAST
@given(st.lists(st.one_of(damaged(), st.binary(max_size=80)), max_size=8))
def test_damaged_and_garbage_records_never_crash(raws: list[bytes]) -> None:
    check(raws)


def test_corpus_records() -> None:
    raws = [p.read_bytes() for p in sorted(CORPUS.glob("*.bin"))]
    assert raws
    out = check(raws)
    assert out[4], "the corpus holds malformed records"


# ---- exact rows ------------------------------------------------------------------------


def test_log_row_with_job_and_attributes() -> None:
    """The LOG example of docs/record-format.md."""
    raw = log(
        severity_number=9, severity_text="INFO", body="loss=0.25",
        context={"job_id": "j1"}, attributes={"step": 7, "loss": 0.25},
    )  # fmt: skip
    assert only_row(raw) == (T0, "j1", "loss=0.25", 9, "INFO", None, None, '{"step":7,"loss":0.25}')
    bare = log()
    assert only_row(bare) == (T0, None, "", 0, None, None, None, None)


def test_event_row_with_trace() -> None:
    raw = enc(
        Record(
            kind=EVENT, time_unix_nano=T0, trace_id=TRACE, span_id=SPAN_ID, name="ckpt",
            dropped_attributes=1, attributes={"ok": True, "tags": ["a", 2]},
        )
    )  # fmt: skip
    assert only_row(raw) == (T0, None, "ckpt", TRACE, SPAN_ID, '{"ok":true,"tags":["a",2]}')


def test_span_row_with_events_and_links() -> None:
    """The SPAN example of docs/record-format.md."""
    link_trace = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    link_span = bytes.fromhex("b7ad6b7169203331")
    raw = enc(
        Record(
            kind=SPAN, time_unix_nano=T0 + 500, trace_id=TRACE, span_id=SPAN_ID, name="step",
            parent_span_id=bytes.fromhex("53995c3f42cd8ad8"), start_unix_nano=T0,
            status_code=STATUS_ERROR, span_kind=1, trace_flags=1, status_message="oom",
            events=[SpanEvent("retry", T0 + 250, {})],
            links=[SpanLink(link_trace, link_span, {"n": None})],
            attributes={"blob": b"\x01\x02"},
        )
    )  # fmt: skip
    assert only_row(raw) == (
        T0 + 500, None, "step", TRACE, SPAN_ID, bytes.fromhex("53995c3f42cd8ad8"), T0,
        STATUS_ERROR, "oom", 1, '{"blob":"0102"}',
        f'[{{"name":"retry","time_unix_nano":{T0 + 250},"attributes":{{}}}}]',
        f'[{{"trace_id":"{link_trace.hex()}","span_id":"{link_span.hex()}",'
        '"attributes":{"n":null}}]',
    )  # fmt: skip


def test_metric_rows() -> None:
    counter = enc(Record(METRIC, T0, instrument=COUNTER, name="tokens", unit="{t}", value=512))
    assert only_row(counter) == (
        T0, None, "tokens", COUNTER, "{t}", 512, None, None, None, None, None, None, None,
    )  # fmt: skip
    gauge = enc(Record(METRIC, T0, instrument=GAUGE, name="temp", value=-1.5))
    row = only_row(gauge)
    assert row[4] == "" and row[5] == -1.5 and type(row[5]) is float
    hist = enc(
        Record(
            METRIC, T0, instrument=HISTOGRAM, name="ms", unit="ms",
            values=[1.5, math.nan, 40.0, -0.0], bounds=[10.0, 100.0, math.inf],
            context={"job_id": b"\xab\x01"},
        )
    )  # fmt: skip
    row = only_row(hist)
    assert row[:6] == (T0, "ab01", "ms", HISTOGRAM, "ms", None)
    assert row[6:8] == (3, 41.5)
    assert repr(row[8]) == "-0.0" and row[9] == 40.0
    assert row[10] == struct.pack("<3d", 1.5, 40.0, -0.0)
    assert row[11:] == ('[10.0,100.0,"Infinity"]', None)
    only_nan = enc(Record(METRIC, T0, instrument=HISTOGRAM, name="h", values=[math.nan]))
    assert only_row(only_nan)[5:] == (None, 0, 0.0, None, None, b"", None, None)


@pytest.mark.parametrize("raw", MALFORMED_METRICS.values(), ids=MALFORMED_METRICS.keys())
def test_malformed_metric_records_are_declined(implementation: Implementation, raw: bytes) -> None:
    """As the metric points reject them (the METRIC parser is theirs too)."""
    logs, events, spans, metrics, declined = implementation.store_rows([GOOD_METRIC, raw])
    assert (logs, events, spans) == ([], [], [])
    assert [tuple(row[:6]) for row in metrics] == [(T0, None, "m", COUNTER, "", 1)]
    assert declined == [raw] and declined[0] is raw


@pytest.mark.parametrize(
    ("values", "total"), [([math.inf, -math.inf], "nan"), ([1e308, 1e308], "inf")]
)
def test_histograms_math_fsum_refuses_are_stored(values: list[float], total: str) -> None:
    """math.fsum raises for these; the sum falls back to float addition on both paths
    (a crafted record must not stop the store)."""
    raw = enc(Record(METRIC, T0, instrument=HISTOGRAM, name="h", values=values))
    ref = store_row(reference.decode_record(raw))
    assert ref is not None and repr(ref[1][7]) == total
    assert same(only_row(raw), ref[1])


def test_unicode_and_escapes_in_json() -> None:
    raw = log(
        context={"job_id": "ジョブ"},
        attributes={"ключ": 'é\n"\\\t\r\b\f\x00\x1f\x7f~ 😀', "b": b"\x01\xff", "e": ""},
    )
    row = only_row(raw)
    assert row[1] == "ジョブ"
    assert row[-1] == (
        '{"\\u043a\\u043b\\u044e\\u0447":"\\u00e9\\n\\"\\\\\\t\\r\\b\\f\\u0000\\u001f'
        '\\u007f~ \\ud83d\\ude00","b":"01ff","e":""}'
    )


def test_non_finite_floats_become_strings() -> None:
    raw = log(attributes={"n": math.nan, "i": math.inf, "m": -math.inf, "a": [math.nan, 1.0]})
    assert attrs_json(raw) == '{"n":"NaN","i":"Infinity","m":"-Infinity","a":["NaN",1.0]}'


@pytest.mark.parametrize(
    ("job", "text"),
    [
        ("j", "j"),
        (b"\x00\xff", "00ff"),
        (42, "42"),
        (True, "True"),
        (1.5, "1.5"),
        (math.nan, "nan"),
        (["a", 2, None, b"\x01"], "['a', 2, None, b'\\x01']"),
        (None, None),
    ],
)
def test_job_is_the_context_job_id_as_text(job: AttrValue, text: str | None) -> None:
    row = only_row(log(context={"job_id": job}, attributes={"x": 1}))
    assert row[1] == text
    assert row[-1] == '{"x":1}'


def test_context_then_own_attributes_with_dict_semantics() -> None:
    """Context first (less job_id); an own key already there keeps its place and takes
    the own value; an own job_id is an ordinary attribute."""
    raw = log(
        context={"a": 1, "job_id": "j", "b": 2},
        attributes={"b": 3, "c": 4, "a": 5, "job_id": "own"},
    )
    row = only_row(raw)
    assert row[1] == "j"
    assert row[-1] == '{"a":5,"b":3,"c":4,"job_id":"own"}'


def test_repeated_keys_in_one_list_keep_the_first_place_and_the_last_value() -> None:
    ctx = alist(str_entry(b"job_id", b"first"), int_entry(b"k", 1), str_entry(b"job_id", b"j"))
    own = alist(int_entry(b"x", 1), int_entry(b"y", 2), int_entry(b"x", 3), int_entry(b"k", 4))
    row = only_row(raw_log(ctx, own))
    assert row[1] == "j"
    assert row[-1] == '{"k":4,"x":3,"y":2}'


def test_many_attributes_merge_like_a_dict() -> None:
    """Lists long enough for the hashed key index, with overlaps between them."""
    ctx_ints = {f"k{i}": i for i in range(300)}
    own = {f"k{i}": -i for i in range(150, 450, 2)}
    row = only_row(log(context={**ctx_ints, "job_id": "j"}, attributes={**own}))
    merged = ctx_ints | own
    expected = "{" + ",".join(f'"{k}":{v}' for k, v in merged.items()) + "}"
    assert row[-1] == expected


# ---- arguments -------------------------------------------------------------------------


def test_declined_are_the_same_objects_in_order() -> None:
    good = log(body="ok")
    bad1, bad2 = b"\x01", log()[:-1]
    out = _transcode.store_rows([bad1, good, bad2, good])
    assert [len(rows) for rows in out[:4]] == [2, 0, 0, 0]
    assert out[4][0] is bad1 and out[4][1] is bad2


def test_accepts_tuples_iterables_and_bytes_likes() -> None:
    raws = [log(body="a"), enc(Record(METRIC, T0, instrument=COUNTER, name="n", value=1))]
    want = _transcode.store_rows(raws)
    assert _transcode.store_rows(tuple(raws)) == want
    assert _transcode.store_rows(r for r in raws) == want
    assert _transcode.store_rows(LaneChunk(b"", raws).records) == want
    assert _transcode.store_rows([bytearray(r) for r in raws])[:4] == want[:4]
    assert _transcode.store_rows([memoryview(r) for r in raws])[:4] == want[:4]
    assert _transcode.store_rows([]) == ([], [], [], [], [])


def test_unreadable_buffers_are_declined() -> None:
    strided = memoryview(log(body="ab") * 2)[::2]
    released = memoryview(log())
    released.release()
    out = _transcode.store_rows([strided, released])
    assert out[:4] == ([], [], [], []) and out[4][0] is strided and out[4][1] is released


@pytest.mark.parametrize("arg", [b"\x01\x01", bytearray(b"x"), "text", 5, None])
def test_wrong_argument_types_raise_type_error(arg: Any) -> None:
    with pytest.raises(TypeError, match="store_rows expects a list of records"):
        _transcode.store_rows(arg)


@pytest.mark.parametrize("element", ["text", 1, None, [b"x"], object()])
def test_wrong_element_types_raise_type_error(element: Any) -> None:
    with pytest.raises(TypeError, match="records must be bytes, bytearray or memoryview"):
        _transcode.store_rows([log(), element])


# ---- the agent's store path ------------------------------------------------------------


def test_agent_store_groups_build_what_the_python_path_builds(tmp_path: Path) -> None:
    """``agent.batch.store_groups`` (native rows, Python for what is declined) against
    ``decode_batch`` + ``Store.ingest``'s rows: the same rows per resource, the corrupt
    record counted once, a corrupt resource blob flagged as the Python path flags it."""
    from emp_fastbuf.agent.batch import decode_batch, store_groups
    from emp_fastbuf.agent.runner import Counters
    from emp_fastbuf.records import Resource
    from emp_fastbuf.store import Store, rows_by_kind

    res = Resource({"service.name": "w", "emp.machine_id": "m", "emp.worker_id": "1"})
    good = [
        log(body="hi", context={"job_id": "j"}, attributes={"k": 1}),
        enc(Record(kind=EVENT, time_unix_nano=T0, name="job.completed")),
        enc(Record(METRIC, T0, instrument=HISTOGRAM, name="h", values=[1.0, 2.0])),
        enc(Record(METRIC, T0, instrument=COUNTER, name="c", value=3)),
    ]
    corrupt = good[0][:-3]
    batch = [
        LaneChunk(reference.encode_resource(res), [good[0], corrupt, *good[1:]]),
        LaneChunk(b"\xff\x00garbage", [good[0]]),
        LaneChunk(b"", [corrupt]),  # nothing left: no group
    ]
    native_counters, python_counters = Counters(), Counters()
    got = store_groups(batch, native_counters)
    want = [(r, rows_by_kind(recs)) for r, recs in decode_batch(batch, python_counters)]
    assert native_counters.corrupt_records == python_counters.corrupt_records == 2
    assert [r for r, _ in got] == [r for r, _ in want]
    assert got[1][0].attributes == {"emp.resource_corrupt": True}
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert all(same(tuple(a), tuple(b)) for a, b in zip(g, w, strict=True))
    with Store(tmp_path / "store.sqlite") as store:
        assert store.ingest_rows(got) == 5
        assert [r.body for r in store.logs()][:1] == ["hi"]


@pytest.mark.parametrize("t", [2**63 - 1, 2**63, 10**19, 2**64 - 1])
def test_times_past_2262_are_clamped_alike(t: int) -> None:
    """SQLite integers are signed 64-bit: a record time (a span's start and its events'
    times too) from 2**63 ns on becomes MAX_TIME_UNIX_NANO on both paths."""
    from emp_fastbuf.store import MAX_TIME_UNIX_NANO

    raws = [
        enc(Record(kind=LOG, time_unix_nano=t, body="far")),
        enc(Record(kind=EVENT, time_unix_nano=t, name="e")),
        enc(
            Record(
                kind=SPAN,
                time_unix_nano=t,
                start_unix_nano=t,
                trace_id=TRACE,
                span_id=SPAN_ID,
                name="s",
                events=[SpanEvent("ev", t, {})],
            )
        ),
        enc(Record(METRIC, t, instrument=GAUGE, name="g", value=1.0)),
        enc(Record(METRIC, t, instrument=HISTOGRAM, name="h", values=[1.0])),
    ]
    logs, events, spans, metrics, declined = check(raws)
    assert declined == []
    for row in (*logs, *events, *spans, *metrics):
        assert row[0] == MAX_TIME_UNIX_NANO
    assert spans[0][6] == MAX_TIME_UNIX_NANO  # the start
    assert f'"time_unix_nano":{MAX_TIME_UNIX_NANO}' in spans[0][11]  # the event
