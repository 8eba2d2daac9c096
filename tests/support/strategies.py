"""The hypothesis strategies the tests share: attribute values, records of every kind and
their encodings, resource blobs, lane batches, and valid encodings damaged the way a
broken producer or a flipped bit would damage them. The reference codec's tests, the
native transcoder's and the store rows' differential tests and the OTLP builders' tests
all draw from these."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

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
    Record,
    Resource,
    SpanEvent,
    SpanLink,
    reference,
)

Chunks = list[tuple[bytes, list[bytes]]]  # per lane: (resource blob, raw records)

# ---- numbers, ids, names ------------------------------------------------------------------

u16 = st.integers(min_value=0, max_value=0xFFFF)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
ids16 = st.binary(min_size=16, max_size=16).filter(any)  # trace ids are never all zero
ids8 = st.binary(min_size=8, max_size=8).filter(any)
names = st.text(max_size=30)
sorted_bounds = st.lists(
    st.floats(allow_nan=False, allow_infinity=True), max_size=8, unique=True
).map(sorted)

# ---- attributes ---------------------------------------------------------------------------

# A small pool makes context/own conflicts, the job_id rename and repeated keys likely.
KEY_POOL = ["job_id", "emp.job_id", "a", "b", "", "\u00e9t\u00e9", "ключ", "k" * 40]
keys = st.one_of(st.sampled_from(KEY_POOL), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.text(max_size=30),
    int64s,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=24),
)
values: st.SearchStrategy[AttrValue] = st.one_of(scalars, st.lists(scalars, max_size=5))
attr_dicts = st.dictionaries(keys, values, max_size=6)

# What a caller may pass the API, which the record format cannot always hold as it is:
# integers past 64 bits too (written as text). Keys from the pool only, so that the
# encoders' caches see repeats.
api_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
api_attr_dicts = st.dictionaries(
    st.sampled_from(KEY_POOL), st.one_of(api_scalars, st.lists(api_scalars, max_size=4)), max_size=5
)

# ---- records ------------------------------------------------------------------------------


@st.composite
def records(draw: st.DrawFn, kinds: Sequence[int] = (LOG, LOG, EVENT, SPAN, METRIC)) -> Record:
    """A valid record of one of ``kinds``, every field over its whole range (by default
    logs twice as likely as each other kind, as in real traffic)."""
    kind = draw(st.sampled_from(kinds))
    traced = kind == SPAN or draw(st.booleans())
    common = {
        "time_unix_nano": draw(u64),
        "trace_id": draw(ids16) if traced else None,
        "span_id": draw(ids8) if traced else None,
        # The edges (0: no limits block at all) and anything else.
        "dropped_attributes": draw(st.one_of(st.sampled_from([0, 0, 1, 300, 0xFFFF]), u16)),
        "truncated_values": draw(st.one_of(st.sampled_from([0, 0, 2]), u16)),
        "context": draw(attr_dicts),
        "attributes": draw(attr_dicts),
    }
    if traced and kind != SPAN:
        # A SPAN's flags are in its body; another record's in the header, 01 most often.
        common["trace_flags"] = draw(st.one_of(st.just(1), st.integers(0, 255)))
    if kind == LOG:
        return Record(
            kind=LOG,
            severity_number=draw(st.integers(0, 24)),
            severity_text=draw(st.text(max_size=10)),
            body=draw(st.text(max_size=200)),
            **common,  # type: ignore[arg-type]
        )
    if kind == EVENT:
        return Record(kind=EVENT, name=draw(names), **common)  # type: ignore[arg-type]
    if kind == SPAN:
        return Record(
            kind=SPAN,
            name=draw(names),
            parent_span_id=draw(st.one_of(st.none(), ids8)),
            start_unix_nano=draw(u64),
            status_code=draw(st.integers(0, 2)),
            span_kind=draw(st.integers(0, 5)),
            trace_flags=draw(st.integers(0, 255)),
            status_message=draw(names),
            events=draw(st.lists(st.builds(SpanEvent, names, u64, attr_dicts), max_size=3)),
            links=draw(
                st.lists(
                    st.builds(
                        SpanLink,
                        st.binary(min_size=16, max_size=16),
                        st.binary(min_size=8, max_size=8),
                        attr_dicts,
                    ),
                    max_size=3,
                )
            ),
            **common,  # type: ignore[arg-type]
        )
    instrument = draw(st.sampled_from([COUNTER, UPDOWNCOUNTER, GAUGE, HISTOGRAM]))
    metric = {
        "instrument": instrument,
        "name": draw(names),
        "unit": draw(st.text(max_size=8)),
        "description": draw(names),
    }
    if instrument == HISTOGRAM:
        metric["values"] = draw(st.lists(st.floats(), min_size=1, max_size=20))
        metric["bounds"] = draw(sorted_bounds)
    else:
        metric["value"] = draw(st.one_of(int64s, st.floats()))
    return Record(kind=METRIC, **metric, **common)  # type: ignore[arg-type]


valid_records = records().map(reference.encode_record)
valid_metrics = records(kinds=(METRIC,)).map(reference.encode_record)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes] = valid_records) -> bytes:
    """A valid encoding (of ``base``) with one edit (or none): cut short, a bit flipped, a
    byte overwritten, or bytes appended."""
    raw = bytearray(draw(base))
    how = draw(st.sampled_from(["truncate", "flip", "byte", "extend", "keep"]))
    if how == "truncate":
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    elif how == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "byte":
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif how == "extend":
        raw += draw(st.binary(min_size=1, max_size=3))
    return bytes(raw)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Several edits of a valid encoding: flips, overwrites, cuts, splices, insertions."""
    raw = bytearray(draw(valid_records))
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete", "len"]))
        if how == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "byte":
            raw[i] = draw(st.integers(0, 255))
        elif how == "cut":
            del raw[i:]
        elif how == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif how == "delete":
            del raw[i : i + draw(st.integers(1, 4))]
        else:  # a length or count field pushed to an extreme
            raw[i : i + 2] = draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\xff\x7f"]))
    return bytes(raw)


# ---- resources and lane batches -----------------------------------------------------------

resource_attrs = st.dictionaries(
    st.sampled_from(["service.name", "host.name", "process.pid", "x", "emp.resource_corrupt"]),
    st.one_of(
        st.sampled_from(["a", "b"]),
        st.integers(0, 2),
        st.sampled_from([0.0, -0.0, float("nan"), 1.0]),
        st.booleans(),
        st.lists(st.sampled_from([0.0, -0.0, float("nan"), 1, True]), max_size=2),
    ),
    max_size=3,
)


@st.composite
def metas(draw: st.DrawFn) -> bytes:
    """A lane's resource blob: mostly valid (few distinct values, so that lanes share
    them), sometimes empty or garbage."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return b""
    if choice == 1:
        return draw(st.binary(max_size=12))  # almost always corrupt
    attributes: dict[str, AttrValue] = {**draw(resource_attrs)}
    res = Resource(
        attributes=attributes,
        scope_name=draw(st.sampled_from(["emp_fastbuf", "", "other"])),
        scope_version=draw(st.sampled_from(["0.1.0", "", "0.2"])),
    )
    return reference.encode_resource(res)


@st.composite
def batches(draw: st.DrawFn, record_bytes: st.SearchStrategy[bytes]) -> Chunks:
    """What one drain hands the agent: a few lanes' chunks of ``record_bytes``."""
    pool = draw(st.lists(metas(), min_size=1, max_size=4))
    return [
        (draw(st.sampled_from(pool)), draw(st.lists(record_bytes, max_size=6)))
        for _ in range(draw(st.integers(0, 5)))
    ]
