"""The embedded store: ingest, queries, retention, schema checks, permissions, and reading
while another process writes."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emp_fastbuf import records
from emp_fastbuf.errors import HomeError
from emp_fastbuf.paths import check_home, home, store_path
from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    GAUGE,
    HISTOGRAM,
    LOG,
    RESOURCE,
    Record,
    Resource,
)
from emp_fastbuf.store import (
    MAX_TIME_UNIX_NANO,
    SCHEMA_VERSION,
    Store,
    StoreDamaged,
    StoreError,
)
from emp_fastbuf.values import percentile
from support.store import (
    JOB_A,
    M1,
    MS,
    ROOT,
    SAMPLE_COUNT,
    T0,
    TRACE_A,
    TRACE_B,
    TRAIN,
    W1,
    W2,
    W3,
    S,
    damage_pages,
    log,
    metric,
    sample_groups,
    span,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "home" / "store.sqlite")
    assert s.ingest(sample_groups()) == SAMPLE_COUNT
    return s


# ---- ingest -------------------------------------------------------------------------------


def test_ingest_counts_and_skips_unknown_kinds(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    recs = [
        log("a", 1),
        Record(kind=RESOURCE, time_unix_nano=T0),
        Record(kind=99, time_unix_nano=T0),
    ]
    assert s.ingest([(W1, recs)]) == 1
    assert s.ingest([]) == 0
    assert s.ingest([(W1, [])]) == 0
    assert [r.body for r in s.logs()] == ["a"]


def test_attributes_merge_context_and_encode_values(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    rec = log(
        "x",
        1,
        context={"job_id": 42, "tenant": "acme", "step": 1},
        attributes={
            "step": 2,
            "blob": b"\x00\xff",
            "list": [1, b"\x01", None, True],
            "nan": math.nan,
            "inf": -math.inf,
            "big": 2**70,
        },
    )
    s.ingest([(W1, [rec])])
    (got,) = s.logs()
    assert got.job_id == "42"
    assert got.attributes == {
        "tenant": "acme",
        "step": 2,  # the record's own attribute wins over the context
        "blob": "00ff",
        "list": [1, "01", None, True],
        "nan": "NaN",
        "inf": "-Infinity",
        "big": 2**70,
    }
    assert (got.machine_id, got.worker_id, got.service) == ("m1", "w1", "trainer")


def test_strings_that_cannot_be_encoded_are_stored_with_replacements(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    n = s.ingest([(W1, [log("ok", 1), log("bad \udc80 body", 2)])])
    assert n == 2
    assert [r.body for r in s.logs()] == ["ok", "bad ? body"]


def test_resource_without_ids_and_record_without_context(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    s.ingest([(Resource({}), [log("bare", 1)])])
    (got,) = s.logs()
    assert (got.machine_id, got.worker_id, got.service, got.job_id) == (None, None, None, None)
    assert got.attributes == {}


# ---- logs ---------------------------------------------------------------------------------


def bodies(recs: list) -> list[str]:
    return [r.body if r.kind == "log" else r.name for r in recs]


def test_logs_all_in_time_order_without_spans(store: Store) -> None:
    got = store.logs()
    assert bodies(got) == [
        "idle",
        "loading data",
        "job b running",
        "job b event",
        "slow step",
        "epoch_end",
        "train failed",
        "lost span",
        "heartbeat",
    ]
    assert [r.time_unix_nano for r in got] == sorted(r.time_unix_nano for r in got)
    assert {r.kind for r in got} == {"log", "event"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"job": "job-b"}, ["job b running", "job b event"]),
        (
            {"trace": TRACE_A.hex()},
            ["loading data", "slow step", "epoch_end", "train failed", "lost span"],
        ),
        ({"machine": "m2"}, ["job b running", "job b event"]),
        ({"worker": "w2"}, ["idle", "heartbeat"]),
        ({"level": 13}, ["slow step", "train failed"]),
        ({"level": 17}, ["train failed"]),
        ({"since_ns": T0 + 4 * S}, ["epoch_end", "train failed", "lost span", "heartbeat"]),
        ({"grep": "job b"}, ["job b running", "job b event"]),
        ({"grep": "JOB B"}, []),  # case-sensitive
        ({"grep": "epoch"}, ["epoch_end"]),
        ({"limit": 2}, ["lost span", "heartbeat"]),  # the newest, oldest first
        ({"machine": "m1", "level": 9, "limit": 3}, ["slow step", "train failed", "lost span"]),
        ({"job": "job-a", "worker": "w3"}, []),
        ({"trace": TRACE_B.hex()}, []),
    ],
)
def test_logs_filters(store: Store, filters: dict, expected: list[str]) -> None:
    assert bodies(store.logs(**filters)) == expected


def test_logs_fields(store: Store) -> None:
    (failed,) = store.logs(grep="train failed")
    assert failed.kind == "log"
    assert failed.severity == "ERROR"  # from the number: the record had no text
    assert failed.trace_id == TRACE_A.hex()
    assert failed.span_id == TRAIN.hex()
    assert failed.job_id == "job-a"
    (loading,) = store.logs(grep="loading")
    assert loading.attributes == {"tenant": "acme"}


def test_logs_bad_trace_id_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="not a hex id"):
        store.logs(trace="zz")


# ---- trace ----------------------------------------------------------------------------------


def test_trace_ids_by_prefix_from_the_index(tmp_path: Path) -> None:
    """A prefix matches the trace ids that start with it, an odd number of digits too:
    ``abc`` is not ``abb...`` nor ``abd...`` (the byte ``bc`` and ``bd`` sit either side);
    all-``f`` prefixes have no next prefix."""
    ids = [
        "abbfffffffffffffffffffffffffffff",
        "abc00000000000000000000000000000",
        "abc7aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "abcfffffffffffffffffffffffffffff",
        "abd00000000000000000000000000000",
        "ffffffffffffffffffffffffffffff00",
        "ffffffffffffffffffffffffffffffff",
    ]
    with Store(tmp_path / "store.sqlite") as s:
        s.ingest([(W1, [log(f"in {t}", 1, trace=bytes.fromhex(t)) for t in ids])])
        assert s.trace_ids("abc") == ids[1:4]
        assert s.trace_ids("ABC7") == [ids[2]]
        assert s.trace_ids("abb") == [ids[0]]
        assert s.trace_ids("ab") == ids[:5]
        assert s.trace_ids("ab", limit=2) == ids[:2]
        assert s.trace_ids("abd0") == [ids[4]]
        assert s.trace_ids("fff") == ids[5:]
        assert s.trace_ids("f" * 31) == ids[6:]
        assert s.trace_ids(ids[3]) == [ids[3]]
        assert s.trace_ids("abe") == []
        # The log filters take the same prefixes (``tail --trace`` before its trace exists).
        assert [r.body for r in s.logs(trace="abc")] == [f"in {t}" for t in ids[1:4]]
        assert s.count_logs(trace="abc") == 3
        assert [r.body for r in s.tail(0, trace="fff")[0]] == [f"in {t}" for t in ids[5:]]
        with pytest.raises(StoreError, match="not a hex id"):
            s.trace_ids("abx")


def test_trace_ids_skip_traces_retention_deleted(tmp_path: Path) -> None:
    """A trace whose records are gone is no match, also when its index entry stays (its
    record was stored after one that is kept: ids are not in time order)."""
    with Store(tmp_path / "store.sqlite", retention_s=3600) as s:
        s.ingest([(W1, [log("new", 10_000, trace=TRACE_B)]), (W1, [log("old", 0, trace=TRACE_A)])])
        assert s.trace_ids("") == sorted([TRACE_A.hex(), TRACE_B.hex()])
        assert s.enforce(T0 + 10_000 * S) == 1
        assert s.trace_ids("") == [TRACE_B.hex()]
        assert s.trace_ids(TRACE_A.hex()[:6]) == []


def test_trace_tree_order_depth_and_items(store: Store) -> None:
    view = store.trace(TRACE_A.hex())
    assert view is not None
    assert [(n.span.name, n.depth) for n in view.spans] == [
        ("job", 0),
        ("load", 1),
        ("train", 1),
        ("step", 2),
    ]
    by_name = {n.span.name: n for n in view.spans}
    assert by_name["step"].span.parent_span_id == TRAIN.hex()
    assert by_name["train"].span.parent_span_id == ROOT.hex()
    assert by_name["job"].span.parent_span_id is None
    assert bodies(by_name["load"].items) == ["loading data"]
    assert bodies(by_name["step"].items) == ["checkpoint", "slow step"]
    assert by_name["step"].items[0].kind == "event"
    assert by_name["step"].items[0].attributes == {"path": "/ckpt/1"}
    assert bodies(by_name["train"].items) == ["epoch_end", "train failed"]
    assert by_name["job"].items == []
    assert bodies(view.orphans) == ["lost span"]
    assert by_name["train"].span.status == "error"
    assert by_name["job"].span.status == "ok"
    assert by_name["load"].span.status == "unset"
    assert view.start_unix_nano == T0 + 1 * S
    assert view.end_unix_nano == T0 + 5 * S


def test_trace_unknown_is_none(store: Store) -> None:
    assert store.trace(TRACE_B.hex()) is None


def test_trace_missing_parent_and_parent_cycle(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    a, b, c = b"\x0a" * 8, b"\x0b" * 8, b"\x0c" * 8
    s.ingest(
        [
            (
                W1,
                [
                    # Parent from another process that never reached this store.
                    span("remote child", c, b"\x0f" * 8, 0.0, 1.0, trace=TRACE_B),
                    # A parent cycle (corrupt ids): both still appear, once each.
                    span("a", a, b, 2.0, 3.0, trace=TRACE_B),
                    span("b", b, a, 2.5, 3.0, trace=TRACE_B),
                ],
            )
        ]
    )
    view = s.trace(TRACE_B.hex())
    assert view is not None
    assert [(n.span.name, n.depth) for n in view.spans] == [
        ("remote child", 0),
        ("a", 0),
        ("b", 1),
    ]


# ---- metrics --------------------------------------------------------------------------------


def series_by(store: Store, **filters: object) -> dict[tuple, object]:
    out = {}
    for s in store.metrics(**filters):  # type: ignore[arg-type]
        key = (s.name, s.machine_id, s.worker_id, tuple(sorted(s.attributes.items())))
        assert key not in out
        out[key] = s
    return out


def test_metrics_latest_per_series(store: Store) -> None:
    got = series_by(store)
    req_w1 = got[("requests", "m1", "w1", ())]
    assert (req_w1.instrument, req_w1.value, req_w1.updates) == ("counter", 6, 3)
    assert req_w1.recent == [1.0, 3.0, 6.0]  # running totals
    assert req_w1.time_unix_nano == T0 + int(3.1 * S)
    assert got[("requests", "m1", "w2", ())].value == 10
    depth = got[("queue.depth", "m1", "w1", ())]
    assert (depth.instrument, depth.value) == ("updowncounter", 4)
    assert depth.recent == [5.0, 3.0, 4.0]
    gpu0 = got[("gpu.temp", "m1", "w1", (("gpu", 0),))]
    gpu1 = got[("gpu.temp", "m1", "w1", (("gpu", 1),))]
    assert (gpu0.instrument, gpu0.value, gpu0.recent) == ("gauge", 61.5, [60.5, 61.5])
    assert gpu1.value == 70.0
    cpu_m1 = got[("system.cpu.utilization", "m1", None, ())]
    assert cpu_m1.value == 0.7
    assert cpu_m1.service == "emp-fastbuf-agent"
    assert got[("system.cpu.utilization", "m2", None, ())].value == 0.9
    assert len(got) == 9


def test_metrics_histogram_percentiles_and_default_buckets(store: Store) -> None:
    (lat,) = store.metrics(name="latency")
    assert lat.instrument == "histogram"
    assert lat.unit == "ms"
    assert (lat.count, lat.sum, lat.min, lat.max) == (100, 5050.0, 1.0, 100.0)
    assert (lat.p50, lat.p90, lat.p99) == (50.0, 90.0, 99.0)
    assert lat.bounds == list(records.DEFAULT_HISTOGRAM_BOUNDS)
    # (-inf,0] (0,5] (5,10] (10,25] (25,50] (50,75] (75,100] then empty buckets.
    assert lat.bucket_counts == [0, 5, 5, 15, 25, 25, 25] + [0] * 9
    assert len(lat.bucket_counts) == len(lat.bounds) + 1
    assert lat.recent == [float(v) for v in range(69, 101)]


def test_metrics_histogram_explicit_bounds_upper_inclusive(store: Store) -> None:
    (sizes,) = store.metrics(name="sizes")
    assert sizes.count == 6
    assert sizes.updates == 2
    assert sizes.bounds == [10.0, 20.0]
    # 5 and 10 in (-inf, 10]; 10.000001, 15 and 20 in (10, 20]; 25 above.
    assert sizes.bucket_counts == [2, 3, 1]
    assert sizes.p50 == 10.000001
    assert sizes.max == 25.0


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({"name": "gpu.*"}, {"gpu.temp"}),
        ({"name": "requests"}, {"requests"}),
        ({"machine": "m2"}, {"system.cpu.utilization"}),
        ({"worker": "w2"}, {"requests"}),
        ({"name": "nothing"}, set()),
    ],
)
def test_metrics_filters(store: Store, filters: dict, names: set[str]) -> None:
    assert {s.name for s in store.metrics(**filters)} == names


def test_metrics_since_counts_only_newer_updates(store: Store) -> None:
    got = series_by(store, since_ns=T0 + 2 * S)
    assert got[("requests", "m1", "w1", ())].value == 5  # 2 + 3
    assert ("requests", "m1", "w2", ()) not in got
    assert got[("system.cpu.utilization", "m1", None, ())].value == 0.7


def test_metrics_nan_values(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    s.ingest(
        [
            (
                W1,
                [
                    metric("g", GAUGE, 1, math.nan),
                    metric("h", HISTOGRAM, 1, values=[1.0, math.nan, 3.0]),
                ],
            )
        ]
    )
    got = {m.name: m for m in s.metrics()}
    assert got["g"].value is None
    assert (got["h"].count, got["h"].sum, got["h"].max) == (2, 4.0, 3.0)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


# ---- correlate ------------------------------------------------------------------------------


def test_correlate_timeline(store: Store) -> None:
    view = store.correlate("job-a")
    assert view is not None
    got = view.records
    assert [r.sort_time for r in got] == sorted(r.sort_time for r in got)
    names = [
        (r.kind, r.body if r.kind == "log" else r.name, r.machine_id, r.worker_id, r.job_id)
        for r in got
    ]
    # Spans sit at their start. The job's own records and metric updates are in; of the
    # rest only the machine-level gauge of m1 inside the window: not the ones before and
    # after it, nor m2's, nor w1's and w2's series made in no job's context.
    assert names == [
        ("span", "job", "m1", "w1", "job-a"),
        ("span", "load", "m1", "w1", "job-a"),
        ("metric", "requests", "m1", "w1", "job-a"),
        ("log", "loading data", "m1", "w1", "job-a"),
        ("span", "train", "m1", "w1", "job-a"),
        ("metric", "requests", "m1", "w1", "job-a"),
        ("metric", "system.cpu.utilization", "m1", None, None),
        ("span", "step", "m1", "w1", "job-a"),
        ("metric", "requests", "m1", "w1", "job-a"),
        ("event", "checkpoint", "m1", "w1", "job-a"),  # same time as the next: records first
        ("log", "slow step", "m1", "w1", "job-a"),
        ("event", "epoch_end", "m1", "w1", "job-a"),
        ("log", "train failed", "m1", "w1", "job-a"),
        ("log", "lost span", "m1", "w1", "job-a"),
    ]
    assert [view.is_machine(r) for r in got].count(True) == view.machine_updates == 1
    cpu = next(r for r in got if view.is_machine(r))
    assert (cpu.name, cpu.instrument, cpu.value) == ("system.cpu.utilization", "gauge", 0.5)
    assert view.machine_ids == ["m1"]
    assert (view.start_unix_nano, view.end_unix_nano) == (T0 + 1 * S, T0 + 5 * S)  # the job span


def test_correlate_leaves_out_what_other_jobs_tagged(store: Store) -> None:
    """Two jobs at the same time on the same worker and machine: each one's timeline has
    its own metric updates, never the other's, and only untagged machine metrics."""
    other = {"job_id": "job-c"}
    store.ingest(
        [
            (W1, [log("job c step", 2.0, context=other)]),
            (W1, [metric("requests", COUNTER, 2.2, 50, context=other)]),
            (M1, [metric("system.memory.utilization", GAUGE, 2.3, 0.4, context=other)]),
            (W1, [metric("latency", HISTOGRAM, 2.4, values=[3.0, 4.0], context=JOB_A)]),
        ]
    )
    view = store.correlate("job-a")
    assert view is not None
    assert {r.job_id for r in view.records} == {"job-a", None}
    assert [r.value for r in view.records if r.name == "requests"] == [1, 2, 3]
    assert "system.memory.utilization" not in {r.name for r in view.records}
    lat = next(r for r in view.records if r.name == "latency")  # a tagged histogram
    assert (lat.instrument, lat.count, lat.sum, lat.min, lat.max) == (
        "histogram",
        2,
        7.0,
        3.0,
        4.0,
    )
    c = store.correlate("job-c")
    assert c is not None
    assert [(r.name or r.body, r.job_id) for r in c.records] == [
        ("job c step", "job-c"),
        ("requests", "job-c"),
        ("system.memory.utilization", "job-c"),  # tagged with the job: the job's own
    ]
    assert c.machine_updates == 0  # m1's cpu gauges are at 0.5 s, 2.5 s and 6 s


def test_correlate_other_job_and_unknown_job(store: Store) -> None:
    view = store.correlate("job-b")
    assert view is not None
    assert [(r.kind, r.machine_id, view.is_machine(r)) for r in view.records] == [
        ("log", "m2", False),
        ("metric", "m2", True),  # m2's machine-level gauge at 2.5 s
        ("event", "m2", False),
    ]
    assert store.correlate("job-zzz") is None


# ---- tail cursor ----------------------------------------------------------------------------


def test_tail_cursor(store: Store, tmp_path: Path) -> None:
    start = store.last_id()
    assert start > 0
    assert store.tail(start) == ([], start)
    store.ingest([(W1, [log("new one", 9), span("s", b"\x07" * 8, None, 9, 9.5)])])
    store.ingest([(W2, [log("new two", 9.1, severity=17, text="ERROR")])])
    recs, cursor = store.tail(start)
    assert bodies(recs) == ["new one", "new two"]
    assert cursor == store.last_id()
    assert store.tail(cursor) == ([], cursor)
    recs, cursor2 = store.tail(start, level=17)
    assert bodies(recs) == ["new two"]
    assert cursor2 == cursor  # moved past the records that did not match
    recs, _ = store.tail(start, limit=1)
    assert bodies(recs) == ["new one"]


def test_tail_cursor_after_the_store_was_emptied(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite", retention_s=1)
    s.ingest([(W1, [log("old", 0)])])
    cursor = s.last_id()
    assert s.enforce(T0 + 100 * S) == 1
    assert s.last_id() == 0
    s.ingest([(W1, [log("fresh", 101)])])
    recs, _ = s.tail(cursor)
    assert bodies(recs) == ["fresh"]


# ---- retention ------------------------------------------------------------------------------


def test_retention_by_age(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite", retention_s=10)
    s.ingest(
        [
            (W1, [log("old", 0), log("new", 20), span("old span", ROOT, None, 1, 2)]),
            (M1, [metric("cpu", GAUGE, 0, 1.0), metric("cpu", GAUGE, 20, 2.0)]),
        ]
    )
    assert s.enforce(T0 + 25 * S) == 3
    assert bodies(s.logs()) == ["new"]
    assert s.trace(TRACE_A.hex()) is None
    (cpu,) = s.metrics()
    assert (cpu.value, cpu.updates) == (2.0, 1)
    assert s.enforce(T0 + 25 * S) == 0


def test_retention_by_size_deletes_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    max_bytes = 512 * 1024
    s = Store(path, max_bytes=max_bytes)
    n = 6000
    batch = [log(f"record {i:05d} " + "x" * 200, i / 1000, attributes={"i": i}) for i in range(n)]
    for k in range(0, n, 1000):
        s.ingest(
            [
                (W1, batch[k : k + 1000]),
                (M1, [metric("cpu", GAUGE, (k + 999) / 1000 + 0.0001, float(k))]),
            ]
        )
    assert s.size_bytes() > max_bytes
    deleted = s.enforce(T0 + 10 * S)
    assert deleted > 0
    assert s.size_bytes() <= max_bytes
    kept = s.logs(limit=None)
    assert 0 < len(kept) < n
    # What is left is the newest stretch, without gaps.
    assert kept[-1].body.startswith(f"record {n - 1:05d}")
    assert [r.attributes["i"] for r in kept] == list(range(n - len(kept), n))
    (cpu,) = s.metrics()
    assert cpu.value == float(n - 1000)  # the newest update survives, older ones went first
    # Oldest first, whole chunks at a time, across both tables: everything kept is newer
    # than everything deleted.
    metric_times = [T0 + (k + 999) * MS + 100_000 for k in range(0, n, 1000)]
    gone = len(metric_times) - cpu.updates
    kept_times = [kept[0].time_unix_nano, *metric_times[gone:]]
    deleted_times = [kept[0].time_unix_nano - MS, *metric_times[:gone]]
    assert min(kept_times) > max(deleted_times)
    s.close()
    assert path.stat().st_size <= max_bytes  # free pages were given back to the file system


def test_enforce_on_readonly_store_is_refused(store: Store) -> None:
    ro = Store(store.path, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        ro.enforce(T0)
    with pytest.raises(StoreError, match="read-only"):
        ro.ingest(sample_groups())


# ---- opening: schema checks and permissions -------------------------------------------------


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMP_FASTBUF_HOME", str(tmp_path / "h"))
    assert store_path(home()) == tmp_path / "h" / "store.sqlite"
    monkeypatch.delenv("EMP_FASTBUF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert store_path(home()) == tmp_path / "user/.local/share/emp-fastbuf/store.sqlite"


def test_permissions_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = tmp_path / "fresh" / "home"
        s = Store(home / "store.sqlite")
        s.ingest(sample_groups())
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for suffix in ("", "-wal", "-shm"):
            p = home / f"store.sqlite{suffix}"
            assert p.exists(), p
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        s.close()
        # A store file someone loosened is tightened again when the writer opens it.
        os.chmod(home / "store.sqlite", 0o644)
        Store(home / "store.sqlite").close()
        assert stat.S_IMODE((home / "store.sqlite").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_not_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not a database at all\x00" * 100)
    for readonly in (True, False):
        with pytest.raises(StoreError, match="is not an emp-fastbuf store"):
            Store(path, readonly=readonly)
    assert path.read_bytes().startswith(b"this is not")  # left alone


def test_corrupt_sqlite_body(store: Store) -> None:
    path = store.path
    store.close()
    data = bytearray(path.read_bytes())
    data[100:] = os.urandom(len(data) - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        Store(path, readonly=True).logs()
    assert "\n" not in str(err.value)


def test_damaged_pages_are_store_damaged_for_every_query(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with Store(path) as s:
        for _ in range(20):
            s.ingest(sample_groups())
    damage_pages(path)
    reader = Store(path, readonly=True)
    queries = [
        lambda: reader.logs(),
        lambda: reader.logs(limit=5),
        lambda: reader.metrics(),
        lambda: reader.trace(TRACE_A.hex()),
        lambda: reader.correlate("job-a"),
        lambda: reader.tail(0),
    ]
    for query in queries:
        with pytest.raises(StoreDamaged) as err:
            query()
        assert "damaged" in str(err.value) and "\n" not in str(err.value)
    reader.close()


def test_a_writer_with_recover_moves_a_damaged_file_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreDamaged):
        Store(path)  # without recover the file is left alone
    with Store(path, recover=True) as s:
        assert s.ingest(sample_groups()) > 0
    moved = list(tmp_path.glob("store.sqlite.corrupt-*"))
    assert [m.read_bytes()[:14] for m in moved] == [b"not a database"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(moved[0]) in errors[0].getMessage()
    assert len(Store(path, readonly=True).logs()) == 9


def test_an_ingest_into_damaged_pages_raises_and_quarantine_starts_a_new_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.sqlite"
    with Store(path) as s:
        for _ in range(20):
            s.ingest(sample_groups())
    damage_pages(path)
    s = Store(path, recover=True)  # the header is intact: the damage shows on writing
    with pytest.raises(StoreDamaged):
        s.ingest(sample_groups())
    assert s.write_failures == 1 and s.retry_in() > 0
    moved = s.quarantine()
    assert moved.name.startswith("store.sqlite.corrupt-") and moved.exists()
    assert s.ingest(sample_groups()) > 0
    assert s.write_failures == 0 and s.retry_in() == 0
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
    s.close()
    assert len(Store(path, readonly=True).logs()) == 9


def test_times_past_2262_are_stored_as_the_latest_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "store.sqlite") as s:
        recs = [
            log("before", 1),
            Record(kind=LOG, time_unix_nano=2**63, body="poison"),
            Record(kind=LOG, time_unix_nano=2**64 - 1, body="poison too"),
            log("after", 2),
        ]
        assert s.ingest([(W1, recs)]) == 4
        assert s.clamped_times == 2
        got = {r.body: r.time_unix_nano for r in s.logs()}
    assert got == {
        "before": T0 + S,
        "after": T0 + 2 * S,
        "poison": MAX_TIME_UNIX_NANO,
        "poison too": MAX_TIME_UNIX_NANO,
    }


def test_check_home(tmp_path: Path) -> None:
    check_home(tmp_path / "not-yet")  # the agent creates it
    check_home(tmp_path)
    (tmp_path / "file").touch()
    with pytest.raises(HomeError, match="is not a directory"):
        check_home(tmp_path / "file")
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(HomeError, match="writable by every user"):
        check_home(loose)
    if os.geteuid() == 0:
        loose.chmod(0o700)
        os.chown(loose, 12345, 12345)
        with pytest.raises(HomeError, match="belongs to uid 12345"):
            check_home(loose)


def test_foreign_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    for readonly in (True, False):
        with pytest.raises(StoreError, match=r"is not an emp-fastbuf store \(SQLite application"):
            Store(path, readonly=readonly)


@pytest.mark.parametrize(
    ("version", "hint"),
    [(7, ""), (1, ": move it away and the agent starts a new one")],
)
def test_other_schema_version(store: Store, version: int, hint: str) -> None:
    path = store.path
    store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    expected = (
        f"store.sqlite at {path} has schema version {version}, this emp-fastbuf reads version "
        f"{SCHEMA_VERSION}{hint}"
    )
    for readonly in (True, False):
        with pytest.raises(StoreError) as err:
            Store(path, readonly=readonly)
        assert str(err.value) == expected


def test_missing_store_readonly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nothing" / "store.sqlite", readonly=True)
    assert not (tmp_path / "nothing").exists()


def test_empty_file_becomes_a_store_for_the_writer_only(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    path.touch()
    with pytest.raises(StoreError, match="not an emp-fastbuf store"):
        Store(path, readonly=True)
    Store(path).close()
    Store(path, readonly=True).close()


def test_reopen_keeps_data(store: Store) -> None:
    store.close()
    again = Store(store.path)
    assert len(again.logs()) == 9
    again.ingest([(W1, [log("after reopen", 7)])])
    assert bodies(Store(store.path, readonly=True).logs(limit=1)) == ["after reopen"]


# ---- readers while a writer process writes --------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from emp_fastbuf.records import LOG, Record, Resource
    from emp_fastbuf.store import Store

    store = Store(sys.argv[1])
    res = Resource({"service.name": "w", "emp.machine_id": "m", "emp.worker_id": "w9"})
    t0 = time.time_ns()
    print("ready", flush=True)
    for b in range(int(sys.argv[2])):
        recs = [
            Record(kind=LOG, time_unix_nano=t0 + b * 1000 + i, body=f"b{b} r{i}",
                   severity_number=9, attributes={"b": b, "i": i})
            for i in range(200)
        ]
        store.ingest([(res, recs)])
        store.enforce(time.time_ns())
        time.sleep(0.005)
    store.close()
    """
)


@pytest.mark.stress
def test_concurrent_read_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    Store(path).close()
    batches = 60
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batches)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        reader = Store(path, readonly=True)
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            recs = reader.logs(limit=None)
            # Whole batches only: a reader never sees half a transaction.
            assert len(recs) % 200 == 0
            seen.append(len(recs))
            reader.metrics()
        assert proc.wait(timeout=60) == 0
        assert seen == sorted(seen)
        assert len(set(seen)) > 2, seen  # the reader saw the store grow
        assert len(reader.logs(limit=None)) == batches * 200
        reader.close()


def test_bulk_ingest_keeps_every_log_in_order(tmp_path: Path) -> None:
    # 250 logs: two 99-row statements and a remainder of 52, mixed with other kinds.
    res = Resource(attributes={"service.name": "bulk", "emp.machine_id": "m", "emp.worker_id": "w"})
    recs: list[Record] = []
    for i in range(250):
        recs.append(
            Record(
                kind=LOG,
                time_unix_nano=1_000 + i,
                severity_number=9,
                severity_text="INFO",
                body=f"line {i}",
                context={"job_id": "bulk-job"},
                attributes={"i": i},
            )
        )
        if i % 50 == 0:
            recs.append(Record(kind=EVENT, time_unix_nano=1_000 + i, name=f"ev{i}"))
    with Store(tmp_path / "store.sqlite") as store:
        assert store.ingest([(res, recs)]) == 255
        got = store.logs(job="bulk-job", limit=None)
    logs = [r for r in got if r.kind == "log"]
    assert [r.body for r in logs] == [f"line {i}" for i in range(250)]
    assert [r.attributes["i"] for r in logs] == list(range(250))


# ---- the chunk index -------------------------------------------------------------------------


def _chunk_rows(path: Path) -> list[tuple[int, int, int, str | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT tbl, first_id, last_id, job_id FROM chunks ORDER BY tbl, first_id"
        ).fetchall()


def test_one_chunk_per_run_of_a_job(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite")
    a = [log(f"a{i}", i, context={"job_id": "a"}, trace=TRACE_A) for i in range(500)]
    b = [log(f"b{i}", 600 + i, context={"job_id": "b"}, trace=TRACE_B) for i in range(300)]
    free = [log("free", 1000)]
    gauge = [metric("gpu", GAUGE, t, 1.0, context={"job_id": "a"}) for t in range(3)]
    assert s.ingest([(W1, a + b + free), (W2, gauge)]) == 804
    s.close()
    # A whole run of a job is one index entry, not one per record: what keeps ingest fast.
    assert _chunk_rows(tmp_path / "store.sqlite") == [
        (0, 1, 500, "a"),
        (0, 501, 800, "b"),
        (0, 801, 801, None),
        (1, 1, 3, "a"),
    ]
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        assert conn.execute("SELECT * FROM trace_chunks ORDER BY first_id").fetchall() == [
            (TRACE_A, 1, 500),
            (TRACE_B, 501, 800),
        ]


def _brute_logs(
    stored: list[tuple[int, Resource, Record]], limit: int | None, **f: object
) -> list[str]:
    """What ``logs`` must answer, computed from everything ingested."""
    out = []
    for rid, res, r in stored:
        if r.kind not in (LOG, EVENT):
            continue
        if f.get("job") is not None and r.context.get("job_id") != f["job"]:
            continue
        if f.get("machine") is not None and res.attributes.get("emp.machine_id") != f["machine"]:
            continue
        if f.get("worker") is not None and res.attributes.get("emp.worker_id") != f["worker"]:
            continue
        if f.get("since_ns") is not None and r.time_unix_nano < f["since_ns"]:  # type: ignore[operator]
            continue
        if f.get("trace") is not None and (r.trace_id or b"").hex() != f["trace"]:
            continue
        level = f.get("level")
        if level is not None and (r.kind != LOG or r.severity_number < level):  # type: ignore[operator]
            continue
        out.append((r.time_unix_nano, rid, r.body or r.name))
    out.sort()
    if limit is not None:
        out = out[-limit:] if limit else []
    return [body for _t, _rid, body in out]


def test_logs_match_a_full_scan_across_many_chunks(tmp_path: Path) -> None:
    """Many small ingests whose times overlap and go backwards (late records, several
    producers): the chunk-by-chunk search for the newest records must give what a full scan
    gives, for every filter and limit."""
    import random

    rnd = random.Random(7)
    s = Store(tmp_path / "store.sqlite")
    sources = [W1, W2, W3, M1]
    traces = [TRACE_A, TRACE_B, None]
    stored: list[tuple[int, Resource, Record]] = []
    next_id = 1
    for batch in range(300):
        groups = []
        for res in rnd.sample(sources, rnd.randint(1, 3)):
            recs = []
            for _ in range(rnd.randint(1, 6)):
                # Mostly on time; some late by up to 200 batches (a stalled producer).
                late = 2000 if rnd.random() < 0.3 else 40
                t = batch * 10 + rnd.uniform(-late, 10)
                job = rnd.choice(["j1", "j2", "j3", None])
                ctx = {"job_id": job} if job else {}
                if rnd.random() < 0.8:
                    rec = log(
                        f"L{len(stored) + len(recs)}",
                        t,
                        severity=rnd.choice([9, 9, 9, 13, 17]),
                        context=ctx,
                        trace=rnd.choice(traces),
                    )
                else:
                    rec = Record(
                        kind=EVENT,
                        time_unix_nano=T0 + int(t * S),
                        name=f"E{len(stored) + len(recs)}",
                        context=ctx,
                        trace_id=rnd.choice(traces),
                    )
                recs.append(rec)
            groups.append((res, recs))
        s.ingest(groups)
        # Ids go logs first, then events, group by group (the store's insertion order).
        for kind in (LOG, EVENT):
            for res, recs in groups:
                for r in recs:
                    if r.kind == kind:
                        stored.append((next_id, res, r))
                        next_id += 1
    assert len(_chunk_rows(tmp_path / "store.sqlite")) > 4 * 64  # several pages of chunks
    cases: list[dict[str, object]] = [
        {},
        {"job": "j2"},
        {"machine": "m1"},
        {"worker": "w3"},
        {"machine": "m1", "job": "j1"},
        {"since_ns": T0 + 1500 * S},
        {"trace": TRACE_B.hex()},
        {"trace": TRACE_A.hex(), "job": "j3"},
        {"level": 13},
        {"level": 17, "machine": "m2"},
        {"level": 21},  # none
    ]
    for f in cases:
        for limit in (None, 0, 1, 7, *range(50, 400, 7), 1000, 10_000):
            got = [r.body or r.name for r in s.logs(limit=limit, **f)]  # type: ignore[arg-type]
            assert got == _brute_logs(stored, limit, **f), (f, limit)


def test_retention_splits_a_chunk_that_straddles_the_cutoff(tmp_path: Path) -> None:
    s = Store(tmp_path / "store.sqlite", retention_s=10)
    # One ingest, one source, one job: one chunk holding old and new records.
    s.ingest([(W1, [log("old", 0, context=JOB_A), log("new", 20, context=JOB_A)])])
    assert s.enforce(T0 + 25 * S) == 1
    assert bodies(s.logs(job="job-a")) == ["new"]
    assert s.enforce(T0 + 25 * S) == 0  # the chunk now starts at the cutoff: nothing to redo
    assert s.enforce(T0 + 31 * S) == 1
    assert s.logs() == []
    s.close()
    assert _chunk_rows(tmp_path / "store.sqlite") == []


def test_retention_forgets_traces_of_deleted_records(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    s = Store(path, retention_s=10)
    s.ingest([(W1, [log("old", 0, trace=TRACE_A)])])
    s.ingest([(W1, [log("new", 20, trace=TRACE_B)])])
    assert s.enforce(T0 + 25 * S) == 1
    s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT trace_id FROM trace_chunks").fetchall() == [(TRACE_B,)]


@pytest.mark.parametrize(
    "groups",
    [
        [(W1, [[], [], []])],  # three row lists, not four
        [(W1,)],
        [(W1, [[], [], [], []], "extra")],
    ],
)
def test_ingest_rows_rejects_malformed_groups(store: Store, groups: list) -> None:
    with pytest.raises(TypeError, match="logs, events, spans, metrics"):
        store.ingest_rows(groups)


def test_histogram_whose_exact_sum_overflows_is_stored_and_queried(store: Store) -> None:
    """math.fsum raises for these values; ingest and the query fall back to float sums."""
    store.ingest([(W1, [metric("big", HISTOGRAM, 1, values=[1e308, 1e308])])])
    (big,) = store.metrics(name="big")
    assert (big.count, big.sum, big.max) == (2, math.inf, 1e308)


def test_bulk_ingest_of_every_kind_across_statement_boundaries(tmp_path: Path) -> None:
    """More rows of each kind than one multi-row INSERT takes (99 logs, 124 events, 66 spans,
    66 metric updates), plus a remainder: every row stored once, with its own values."""
    n = 300
    recs: list[Record] = []
    for i in range(n):
        ctx = {"job_id": "bulk"}
        recs.append(log(f"line {i}", i, context=ctx, attributes={"i": i}))
        recs.append(Record(kind=EVENT, time_unix_nano=T0 + i * S, name=f"ev{i}", context=ctx))
        recs.append(span(f"s{i}", i.to_bytes(8, "big"), None, i, i + 0.5))
        recs.append(metric("steps", COUNTER, i, i, context=ctx))
    with Store(tmp_path / "store.sqlite") as store:
        assert store.ingest([(W1, recs)]) == 4 * n
        got = store.logs(limit=None)
        assert [r.body for r in got if r.kind == "log"] == [f"line {i}" for i in range(n)]
        assert [r.attributes["i"] for r in got if r.kind == "log"] == list(range(n))
        assert [r.name for r in got if r.kind == "event"] == [f"ev{i}" for i in range(n)]
        view = store.trace(TRACE_A.hex())
        assert view is not None
        assert [node.span.name for node in view.spans] == [f"s{i}" for i in range(n)]
        (steps,) = store.metrics(name="steps")
        assert (steps.value, steps.updates) == (sum(range(n)), n)


def test_multi_step_queries_read_one_snapshot(tmp_path: Path) -> None:
    """logs (chunk pages), metrics and correlate read in several queries: a commit made
    between them must not show up in half of them."""
    path = tmp_path / "store.sqlite"
    writer = Store(path)
    writer.ingest([(W1, [log("first", 1, context=JOB_A)])])
    reader = Store(path, readonly=True)
    with reader._snapshot():
        assert bodies(reader.logs()) == ["first"]
        writer.ingest([(W1, [log("second", 2, context=JOB_A)])])
        assert bodies(reader.logs()) == ["first"]
        view = reader.correlate("job-a")
        assert view is not None and [r.body for r in view.records] == ["first"]
    assert bodies(reader.logs()) == ["first", "second"]
    reader.close()
    writer.close()
