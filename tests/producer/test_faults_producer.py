"""Producer faults: values at the edges of what the encoder can represent, text beyond
the record's fields, spans with more events and links than are kept, and a fork while
another thread configures. In every case the record is kept (coerced or truncated, and
counted), decodes with the strict reference decoder and with the agent's native parser,
and nothing raises into the host program."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.producer import _codec
from emp_fastbuf.records import EVENT, LOG, METRIC, SPAN, Record, reference

pytestmark = pytest.mark.native

OBSERVED = 1_700_000_000_000_000_000
DBL_MAX = sys.float_info.max


def raw_chunks(ring: fastbuf.Ring) -> list[tuple[bytes, list[bytes]]]:
    """Every lane's resource blob and raw records, acknowledged."""
    out: list[tuple[bytes, list[bytes]]] = []
    c = ring.consumer()
    try:
        while True:
            got = c.read_lanes(10_000)
            if not got:
                break
            out.extend((bytes(meta), [bytes(r) for r in recs]) for _lane, meta, recs in got)
        c.ack()
    finally:
        c.close()
    return out


def decoded(ring: fastbuf.Ring) -> list[Record]:
    """The ring's records, each accepted by both decoders the agent uses: the strict
    reference (``reference.decode_record``) and the native OTLP / store transcoders."""
    chunks = raw_chunks(ring)
    recs = [reference.decode_record(raw) for _meta, raws in chunks for raw in raws]
    kinds = [r.kind for r in recs]
    _payloads, n_logs, rejected = _transcode.logs_requests(chunks, OBSERVED)
    assert rejected == 0 and n_logs == kinds.count(LOG) + kinds.count(EVENT)
    _payloads, n_spans, rejected = _transcode.spans_requests(chunks)
    assert rejected == 0 and n_spans == kinds.count(SPAN)
    *tables, declined = _transcode.store_rows([raw for _meta, raws in chunks for raw in raws])
    assert declined == [] and sum(len(t) for t in tables) == len(recs)
    return recs


class RaisingGetattr:
    """Every attribute lookup that falls through raises (a proxy gone bad)."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"no {name}")


class RaisingStr(str):
    """A str subclass whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


HUGE = 10**5000  # beyond str(int)'s 4,300 digits


# ---- 13: producer API edge values ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (HUGE, "1.0000000000000000e+5000"),
        (-123456789012345678999 * 10**5000, "-1.2345678901234567e+5020"),  # truncated
        (RaisingStr("abc"), "abc"),
    ],
    ids=["int-over-4300-digits", "negative-huge-int", "str-subclass-raising-str"],
)
def test_edge_values_are_coerced_in_every_record_kind(
    ring: fastbuf.Ring, value: object, want: str
) -> None:
    with fastbuf.context(ctx=value):
        fastbuf.emit("e", v=value)
        fastbuf.log.info("m", v=value)
        with fastbuf.span("s", v=value):
            pass
    recs = decoded(ring)
    assert [r.kind for r in recs] == [EVENT, LOG, SPAN]
    for r in recs:
        assert r.attributes == {"v": want} and r.context == {"ctx": want}
    st = fastbuf.stats()
    assert st["errors"] == 0 and st["emitted"] == 3
    assert st["coerced_values"] == 4  # the context once, then each record's attribute


def test_object_whose_getattr_raises_is_coerced(ring: fastbuf.Ring) -> None:
    obj = RaisingGetattr()
    with fastbuf.context(ctx=obj):
        fastbuf.emit("e", v=obj, arr=[obj, 1])
        fastbuf.log.warning("m", v=obj)
        with fastbuf.span("s") as s:
            s.set(v=obj)
            s.add_event("ev", v=obj)
    recs = decoded(ring)
    assert [r.kind for r in recs] == [EVENT, LOG, SPAN]
    text = str(obj)
    assert recs[0].attributes == {"v": text, "arr": [text, 1]}
    assert all(r.context == {"ctx": text} for r in recs)
    assert recs[2].events[0].attributes == {"v": text}
    assert fastbuf.stats()["errors"] == 0


def test_int_within_str_limit_stays_exact_and_beyond_value_length_is_scientific(
    ring: fastbuf.Ring,
) -> None:
    fastbuf.emit("e", exact=2**100, long=7 * 10**4200 + 1)
    (rec,) = decoded(ring)
    assert rec.attributes == {"exact": str(2**100), "long": "7.0000000000000000e+4200"}
    assert rec.truncated_values == 0
    assert fastbuf.stats()["coerced_values"] == 1


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["positive", "negative"])
def test_metric_values_beyond_double_range_saturate(ring: fastbuf.Ring, value: int) -> None:
    fastbuf.metrics.updowncounter("ud").add(value)
    fastbuf.metrics.gauge("g").set(value)
    fastbuf.metrics.histogram("h").record(value)
    fastbuf.metrics.histogram("h").record_many([1.0, value])
    if value > 0:
        fastbuf.metrics.counter("c").inc(value)
    recs = decoded(ring)
    want = DBL_MAX if value > 0 else -DBL_MAX
    assert [r.kind for r in recs] == [METRIC] * len(recs)
    assert recs[0].value == want and recs[1].value == want
    assert recs[2].values == [want] and recs[3].values == [1.0, want]
    if value > 0:
        assert recs[4].value == want
    st = fastbuf.stats()
    assert st["coerced_values"] == len(recs) and st["errors"] == 0


def test_malformed_calls_still_raise_type_error(ring: fastbuf.Ring) -> None:
    with pytest.raises(TypeError):
        fastbuf.emit(RaisingGetattr())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastbuf.metrics.counter("c").inc("10")
    with pytest.raises(TypeError):
        fastbuf.metrics.histogram("h").record_many([RaisingGetattr()])
    with fastbuf.span("s") as s:
        with pytest.raises(TypeError):
            s.set_status("error", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            s.add_event(None)  # type: ignore[arg-type]
    (rec,) = decoded(ring)
    assert rec.name == "s" and fastbuf.stats()["errors"] == 0


# ---- 17: text and lists beyond what a record carries --------------------------------


def test_long_cjk_instrument_name_and_description_are_truncated(ring: fastbuf.Ring) -> None:
    text = "测量" * 3000  # 6,000 characters, 18,000 bytes of UTF-8
    c = fastbuf.metrics.counter(text, unit="毫秒" * 40, description=text)
    c.inc(1)
    c.inc(2, gpu="0")
    recs = decoded(ring)
    assert [r.value for r in recs] == [1, 2]
    for r in recs:
        assert text.startswith(r.name) and len(r.name.encode()) <= 1024
        assert len(r.name.encode()) > 1024 - 3  # cut at the last whole character
        assert text.startswith(r.description) and len(r.description.encode()) <= 2048
        assert r.unit == ("毫秒" * 40)[:63]
        assert r.truncated_values == 3
    assert c.name == text  # the instrument keeps its name; records carry the cut one
    st = fastbuf.stats()
    assert st["truncated_values"] == 6 and st["errors"] == 0 and st["dropped"] == 0


@pytest.mark.parametrize("length", [65_520, 65_536, 100_000])
def test_log_body_beyond_the_record_is_cut_and_counted(ring: fastbuf.Ring, length: int) -> None:
    fastbuf.log.info("b" * length)
    fastbuf.log.info("测" * length)
    recs = decoded(ring)
    assert len(recs) == 2
    for r in recs:
        assert 0 < len(r.body) < length and r.truncated_values == 1
    st = fastbuf.stats()
    assert st["truncated_values"] == 2 and st["dropped"] == 0


def test_span_with_many_links_and_events_is_truncated_not_dropped(ring: fastbuf.Ring) -> None:
    with fastbuf.span("many") as s:
        for i in range(3000):
            s.add_link(bytes([1] * 16), i.to_bytes(8, "little"), i=i)
            s.add_event(f"ev{i}")
    links = [(bytes([2] * 16), i.to_bytes(8, "little"), {"i": i}) for i in range(3000)]
    _codec.write_span(
        "bridged", bytes([3] * 16), bytes([4] * 8), None, 1, 2, 0, 1, "", {}, None, links
    )
    a, b = decoded(ring)
    assert len(a.links) == 128 and [ln.attributes["i"] for ln in a.links] == list(range(128))
    assert [ev.name for ev in a.events] == [f"ev{i}" for i in range(128)]
    assert a.truncated_values == 2
    assert len(b.links) == 128 and b.truncated_values == 1
    st = fastbuf.stats()
    assert st["by_kind"]["span"] == 2 and st["dropped"] == 0
    assert st["truncated_values"] == 3


def test_span_links_with_large_attributes_are_reduced_to_fit(ring: fastbuf.Ring) -> None:
    with fastbuf.span("big") as s:
        for i in range(100):
            s.add_link(bytes([1] * 16), (i + 1).to_bytes(8, "little"), blob="x" * 4000)
    (rec,) = decoded(ring)
    assert 0 < len(rec.links) < 100 and rec.truncated_values >= 1
    assert fastbuf.stats()["dropped"] == 0


# ---- 15: fork while another thread is inside configure() ----------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_during_configure_in_another_thread_does_not_deadlock(
    ring: fastbuf.Ring, ring_name: str
) -> None:
    stop = threading.Event()

    def reconfigure() -> None:
        while not stop.is_set():
            fastbuf.configure(service="test-svc", ring=ring_name, agent="external")

    t = threading.Thread(target=reconfigure)
    t.start()
    pids: list[int] = []
    try:
        for i in range(10):
            time.sleep(0.002)  # let the other thread get back into configure()
            pid = os.fork()
            if pid == 0:  # the child: one record, then out
                try:
                    fastbuf.emit("child", n=i)
                    os._exit(0)
                finally:
                    os._exit(1)
            pids.append(pid)
    finally:
        stop.set()
        t.join()
    stuck = []
    statuses = []
    deadline = time.monotonic() + 30.0  # a deadlock detector, not a timing assertion
    for pid in pids:
        while (got := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                stuck.append(pid)
                break
            time.sleep(0.01)
        else:
            statuses.append(os.waitstatus_to_exitcode(got[1]))
    assert stuck == [], f"{len(stuck)} of {len(pids)} children deadlocked in their first emit"
    assert statuses == [0] * len(pids)
    children = sorted(r.attributes["n"] for r in decoded(ring) if r.name == "child")
    assert children == list(range(10))
