"""The shared-memory ring in one process: round trips, wrap-around, full lanes and their
accounting, every kind of bad input, damaged segments, lanes and the consumer role.

Tests that need several processes (crashes, fork, many producers) are in
test_ring_processes.py; the model-based test is in test_ring_hypothesis.py.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import support.ring_workers as w
from emp_fastbuf.errors import (
    RecordTooLarge,
    RingBusy,
    RingCorrupt,
    RingError,
    RingExists,
    RingNotFound,
    RingPermissionError,
    RingVersionError,
)
from emp_fastbuf.ring._ring import DEFAULT_MAX_RECORD, MAX_LANES, Consumer, Ring
from support import TESTS

pytestmark = pytest.mark.native
needs_shm = pytest.mark.skipif(not w.SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")


@pytest.fixture
def small(ring_name: str) -> Iterator[Ring]:
    """One 4 KiB lane, records up to 1 KiB."""
    ring = Ring.create(ring_name, 4096, lanes=1, max_record=1024)
    yield ring
    ring.close()


def drain(consumer: Consumer, max_records: int = 100_000) -> list[bytes]:
    """Everything readable now, acknowledged."""
    out = consumer.read(max_records)
    consumer.ack()
    return out


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("max_record", [1024, DEFAULT_MAX_RECORD])
def test_every_size_round_trips_and_wraps_many_times(ring_name: str, max_record: int) -> None:
    # Lanes four times the largest frame: the sweep wraps around hundreds of times.
    lane = 4 * ((max_record + 8 + 7) & ~7)
    ring = Ring.create(ring_name, lane, lanes=1, max_record=max_record)
    block = os.urandom(max_record + 256)
    consumer = ring.consumer()
    pending: list[bytes] = []
    for n in range(max_record + 1):
        rec = block[n % 251 : n % 251 + n]
        if not ring.write(rec):
            assert drain(consumer) == pending
            pending = []
            assert ring.write(rec), f"record of {n} bytes refused by an empty lane"
        pending.append(rec)
    assert drain(consumer) == pending
    stats = ring.stats()
    assert stats["accepted"] == stats["acked"] == max_record + 1
    assert stats["bytes_written"] == stats["bytes_acked"] == max_record * (max_record + 1) // 2
    assert stats["bytes_written"] > 100 * stats["lane_size"]  # wrapped > 100 times
    assert stats["in_flight"] == 0
    w.check_invariant(stats)
    consumer.close()
    ring.close()


def test_bytes_like_inputs(small: Ring) -> None:
    data = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        array.array("I", [1, 2, 3]),
        np.arange(4, dtype=np.int64),
        memoryview(b"0123456789")[2:5],
        b"",
    ]
    for d in data:
        assert small.write(d)
    with small.consumer() as c:
        assert c.read() == [bytes(memoryview(d).cast("B")) for d in data]


def test_record_too_large_is_raised_and_counted(small: Ring) -> None:
    assert small.write(b"x" * small.max_record)
    with pytest.raises(RecordTooLarge, match="1025 bytes exceeds the ring's maximum of 1024"):
        small.write(b"x" * (small.max_record + 1))
    with pytest.raises(ValueError):  # RecordTooLarge is a ValueError too
        small.write(bytearray(5000))
    stats = small.stats()
    assert stats["dropped_too_large"] == 2
    assert stats["written"] == 3 and stats["accepted"] == 1
    w.check_invariant(stats)
    with small.consumer() as c:
        assert c.read() == [b"x" * small.max_record]


# ---- full lanes and accounting --------------------------------------------------------


def test_full_lane_returns_false_and_counts_every_drop(small: Ring) -> None:
    rec = b"r" * 120  # 128-byte frames: exactly 32 fill the 4 KiB lane
    results = [small.write(rec) for _ in range(32)]
    assert all(results)
    assert small.pending() == 4096
    falses = sum(not small.write(rec) for _ in range(50))
    assert falses == 50
    assert not small.write(b"")  # not even an empty record fits
    falses += 1
    stats = small.stats()
    assert stats["dropped_full"] == falses
    assert stats["written"] == 32 + falses and stats["accepted"] == 32
    assert stats["in_flight"] == 32
    w.check_invariant(stats)
    c = small.consumer()
    assert c.read(10) == [rec] * 10
    # Read is not ack: the space is still taken.
    assert not small.write(rec)
    falses += 1
    c.ack()
    assert small.flush(timeout=0.01) is False  # 22 records still unacknowledged
    assert small.pending() == 22 * 128
    assert sum(small.write(rec) for _ in range(11)) == 10  # ten slots free, then full
    falses += 1
    assert drain(c) == [rec] * 32
    assert small.flush(timeout=1.0) is True
    assert small.pending() == 0
    stats = small.stats()
    assert stats["dropped_full"] == falses
    assert stats["acked"] == stats["accepted"] == 42
    assert stats["in_flight"] == 0
    w.check_invariant(stats)
    c.close()


def test_block_budget_still_drops_when_nobody_frees_room(small: Ring) -> None:
    small.block_ns = 2_000_000
    while small.write(b"z" * 500):
        pass
    assert not small.write(b"z" * 500)
    stats = small.stats()
    assert stats["dropped_full"] == 2
    w.check_invariant(stats)


def test_lanes_exhausted_counts_no_lane_and_close_hands_lane_back(ring_name: str) -> None:
    first = Ring.create(ring_name, 4096, lanes=1, max_record=1024)
    second = Ring.open(ring_name)
    assert first.lane_index is None
    assert first.write(b"first")
    assert first.lane_index == 0
    refused = sum(not second.write(b"second") for _ in range(7))
    assert refused == 7
    assert second.lane_index is None
    stats = first.stats()
    assert stats["dropped_no_lane"] == 7 and stats["dropped"] == 7
    w.check_invariant(stats)
    c = first.consumer()
    assert c.producers() == [{"lane": 0, "pid": os.getpid(), "alive": True}]
    first.close()  # hands the lane back once drained
    assert c.producers() == [{"lane": 0, "pid": os.getpid(), "alive": False}]
    assert c.reap() == 0  # not drained yet
    assert c.read() == [b"first"]
    c.ack()
    c.reap()
    assert c.producers() == []
    # The refused producer retries its claim (at most every 50 ms) and gets the lane.
    deadline = time.monotonic() + 10
    while not second.write(b"second"):
        refused += 1
        assert time.monotonic() < deadline, "the handed-back lane was never claimed"
        time.sleep(0.005)
    assert second.lane_index == 0
    assert c.read() == [b"second"]
    c.ack()
    stats = second.stats()
    assert stats["dropped_no_lane"] == refused
    assert stats["in_flight"] == 0
    w.check_invariant(stats)
    c.close()
    second.close()


def test_set_meta_moves_to_a_new_lane_and_meta_travels(ring_name: str) -> None:
    ring = Ring.create(ring_name, 4 * 4096, lanes=4, max_record=1024)
    ring.set_meta(b"resource-1")
    assert ring.write(b"a")
    lane1 = ring.lane_index
    ring.set_meta(bytearray(b"resource-2"))
    assert ring.lane_index is None
    assert ring.write(b"b")
    lane2 = ring.lane_index
    assert lane2 is not None and lane2 != lane1
    with ring.consumer() as c:
        got = {lane: (meta, recs) for lane, meta, recs in c.read_lanes()}
        assert got == {lane1: (b"resource-1", [b"a"]), lane2: (b"resource-2", [b"b"])}
        c.ack()
        c.reap()
        assert [p["lane"] for p in c.producers()] == [lane2]
    with pytest.raises(TypeError, match="meta must be bytes"):
        ring.set_meta("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        ring.set_meta(b"m" * 8193)
    ring.close()


def test_read_limits_and_lane_grouping(ring_name: str) -> None:
    ring = Ring.create(ring_name, 4 * 4096, lanes=4, max_record=1024)
    other = Ring.open(ring_name)
    for i in range(5):
        assert ring.write(b"a%d" % i)
        assert other.write(b"b%d" % i)
    assert ring.lane_index != other.lane_index
    lanes = sorted(
        [
            (ring.lane_index, [b"a%d" % i for i in range(5)]),
            (other.lane_index, [b"b%d" % i for i in range(5)]),
        ]
    )
    # Lanes are read in index order, each oldest first.
    expected = lanes[0][1] + lanes[1][1]
    c = ring.consumer()
    assert c.backlog() == 10 * 16
    assert c.read(3) == expected[:3]
    assert c.read_lanes(4) == [(lanes[0][0], b"", expected[3:5]), (lanes[1][0], b"", expected[5:7])]
    assert c.read_lanes() == [(lanes[1][0], b"", expected[7:])]
    assert c.read() == []
    assert c.backlog() == 0
    c.close()
    other.close()
    ring.close()


def test_threads_share_one_lane_without_tearing(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 20, lanes=2, max_record=1024)
    c = ring.consumer()
    got: list[bytes] = []
    falses = [0] * 4

    def produce(t: int) -> None:
        for seq in range(5000):
            falses[t] += w.write_retry(ring, w.make_record(t, seq))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        got.extend(c.read(4096))
        c.ack()
    for t in threads:
        t.join()
    got.extend(drain(c))
    seqs: dict[int, list[int]] = {}
    for rec in got:
        producer, seq = w.parse_record(rec)
        seqs.setdefault(producer, []).append(seq)
    assert seqs == {t: list(range(5000)) for t in range(4)}
    stats = ring.stats()
    assert len(stats["lanes"]) == 1  # one lane per process, not per thread
    assert stats["dropped_full"] == sum(falses) and stats["in_flight"] == 0
    w.check_invariant(stats)
    c.close()
    ring.close()


# ---- consumer role in one process -----------------------------------------------------


def test_consumer_role_is_exclusive_and_close_gives_it_up(small: Ring, ring_name: str) -> None:
    c = small.consumer()
    with pytest.raises(RingBusy, match="already holds the consumer role"):
        small.consumer()
    other = Ring.open(ring_name)
    with pytest.raises(RingBusy):
        other.consumer()
    assert small.stats()["consumer"]["pid"] == os.getpid()
    epoch = small.stats()["consumer"]["epoch"]
    c.close()
    assert c.closed
    c.close()  # idempotent
    assert small.stats()["consumer"]["pid"] is None
    with pytest.raises(RingError, match="consumer is closed"):
        c.read()
    with other.consumer() as c2:
        assert small.stats()["consumer"]["epoch"] == epoch + 1
        assert c2.read() == []
    assert small.stats()["consumer"]["pid"] is None
    other.close()


def test_heartbeat_advances_on_read_and_ack(small: Ring) -> None:
    c = small.consumer()
    beats = [small.stats()["consumer"]["heartbeat_ns"]]
    for op in (c.read, c.ack, c.read):
        time.sleep(0.002)
        op()
        beats.append(small.stats()["consumer"]["heartbeat_ns"])
    assert beats == sorted(beats) and len(set(beats)) == 4, beats
    c.close()


def test_unacked_records_are_read_again_by_the_next_consumer(small: Ring) -> None:
    for i in range(10):
        assert small.write(b"%d" % i)
    c = small.consumer()
    assert c.read(4) == [b"0", b"1", b"2", b"3"]
    c.ack()
    assert c.read(3) == [b"4", b"5", b"6"]
    c.close()  # without ack
    c = small.consumer()
    assert c.read() == [b"%d" % i for i in range(4, 10)]
    c.ack()
    stats = small.stats()
    assert stats["acked"] == 10 and stats["in_flight"] == 0
    w.check_invariant(stats)
    c.close()


def test_consumer_outlives_its_closed_ring(small: Ring) -> None:
    c = small.consumer()
    assert small.write(b"x")
    small.close()
    assert c.read() == [b"x"]
    c.ack()
    c.close()
    with pytest.raises(RingError, match="closed"):
        small.stats()


def test_closed_ring_refuses_use(small: Ring) -> None:
    assert small.write(b"x")
    small.close()
    small.close()
    assert small.closed
    with pytest.raises(RingError, match="closed"):
        small.write(b"y")
    with pytest.raises(RingError, match="closed"):
        small.consumer()
    assert small.pending() == 0 and small.lane_index is None
    assert "closed" in repr(small)


def test_stats_shape(small: Ring) -> None:
    assert small.write(b"abc")
    stats = small.stats()
    assert stats["name"] == small.name
    assert stats["lane_count"] == 1 and stats["lane_size"] == 4096
    assert stats["max_record"] == 1024 and stats["layout_version"] == 2
    assert stats["creator_pid"] == os.getpid()
    (lane,) = stats["lanes"]
    assert lane["owner_pid"] == os.getpid() and lane["alive"] and not lane["released"]
    assert lane["occupancy"] == 16 and lane["capacity"] == 4096
    assert lane["bytes_written"] == 3


# ---- bad arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("data", ["text", 42, None, 3.5, [1, 2], object()])
def test_write_rejects_non_bytes(small: Ring, data: object) -> None:
    with pytest.raises(TypeError):
        small.write(data)  # type: ignore[arg-type]
    assert small.stats()["written"] == 0


def test_write_rejects_non_contiguous_buffer(small: Ring) -> None:
    with pytest.raises(BufferError):
        small.write(memoryview(b"abcdef")[::2])
    assert small.stats()["written"] == 0


@pytest.mark.parametrize("name", [b"bytes-name", 42, 1.0, ["x"]])
def test_bad_name_types(name: object) -> None:
    for call in (Ring.create, Ring.open, Ring.unlink):
        with pytest.raises(TypeError, match="ring name must be a str"):
            call(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        *("", "a/b", "/lead", "sp ace", "x" * 201, "ümlaut", "nul\x00", "new\nline"),
        w.name_prefix() + "-trailing-newline\n",
    ],
)
def test_invalid_names(name: str) -> None:
    try:
        for call in (Ring.open, Ring.unlink):
            with pytest.raises(ValueError, match="invalid ring name"):
                call(name)
        with pytest.raises(ValueError, match="invalid ring name"):
            Ring.create(name, 4096, lanes=1, max_record=1024)
    finally:
        if name and "/" not in name and "\x00" not in name and w.SHM_DIR.is_dir():
            # A name wrongly accepted must not leave a segment behind.
            (w.SHM_DIR / name).unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"size": "65536"}, TypeError, "size must be an int"),
        ({"size": 65536.0}, TypeError, "size must be an int"),
        ({"size": None}, TypeError, "size must be an int"),
        ({"size": True}, TypeError, "size must be an int"),
        ({"lanes": "4"}, TypeError, "lanes must be an int"),
        ({"max_record": 1.5}, TypeError, "max_record must be an int"),
        ({"size": 0}, ValueError, "too small"),
        ({"size": -4096}, ValueError, "too small"),
        ({"size": 4095, "lanes": 1}, ValueError, "too small"),
        ({"size": 8 * 4096, "lanes": 16}, ValueError, "too small"),
        ({"lanes": 0}, ValueError, "lanes must be between"),
        ({"lanes": MAX_LANES + 1}, ValueError, "lanes must be between"),
        ({"max_record": 0}, ValueError, "max_record must be between"),
        ({"max_record": (16 << 20) + 1}, ValueError, "max_record must be between"),
        ({"size": 4096, "lanes": 1, "max_record": 4096}, ValueError, "too small"),
        ({"size": 1 << 40, "lanes": 1}, ValueError, "too large"),
    ],
)
def test_bad_sizes(ring_name: str, kwargs: dict[str, object], exc: type, match: str) -> None:
    args: dict[str, object] = {"size": 1 << 16, "lanes": 4, "max_record": 1024} | kwargs
    with pytest.raises(exc, match=match):
        Ring.create(ring_name, **args)  # type: ignore[arg-type]
    with pytest.raises(RingNotFound):
        Ring.open(ring_name)  # nothing was left behind


def test_bad_read_arguments(small: Ring) -> None:
    with small.consumer() as c:
        for bad in ("1", 1.0, None, True):
            with pytest.raises(TypeError, match="max_records must be an int"):
                c.read(bad)  # type: ignore[arg-type]
        for bad_n in (0, -1):
            with pytest.raises(ValueError, match="at least 1"):
                c.read_lanes(bad_n)


def test_classes_are_not_constructed_directly() -> None:
    with pytest.raises(TypeError, match=r"Ring\.create"):
        Ring()
    with pytest.raises(TypeError, match=r"ring\.consumer"):
        Consumer()


# ---- segments: existence, owner, mode -----------------------------------------------


def test_open_missing_ring(ring_name: str) -> None:
    with pytest.raises(RingNotFound, match="no ring named") as info:
        Ring.open(ring_name)
    assert isinstance(info.value, FileNotFoundError)
    Ring.unlink(ring_name)  # unlinking a missing ring is not an error


def test_create_existing_raises_and_exist_ok_attaches(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024)
    with pytest.raises(RingExists, match=rf"created by pid {os.getpid()}, alive") as info:
        Ring.create(ring_name)
    assert isinstance(info.value, FileExistsError)
    same = Ring.create(ring_name, 1 << 22, lanes=8, exist_ok=True)
    assert (same.lanes, same.size, same.max_record) == (4, 1 << 16, 1024)
    assert same.write(b"through the attached ring")
    with ring.consumer() as c:
        assert c.read() == [b"through the attached ring"]
    same.close()
    ring.close()


def test_segment_is_owner_only(ring_name: str) -> None:
    Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024).close()
    if w.SHM_DIR.is_dir():
        assert (w.SHM_DIR / ring_name).stat().st_mode & 0o777 == 0o600


@needs_shm
@pytest.mark.parametrize("mode", [0o644, 0o660, 0o606, 0o640])
def test_group_or_other_bits_are_refused(ring_name: str, mode: int) -> None:
    Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024).close()
    os.chmod(w.SHM_DIR / ring_name, mode)
    with pytest.raises(RingPermissionError, match=f"has mode {mode:o}") as info:
        Ring.open(ring_name)
    assert isinstance(info.value, PermissionError)
    with pytest.raises(RingPermissionError):
        Ring.create(ring_name, exist_ok=True)


@needs_shm
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_segment_of_another_user_is_refused(ring_name: str) -> None:
    Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024).close()
    os.chown(w.SHM_DIR / ring_name, 65534, 65534)
    with pytest.raises(RingPermissionError, match="belongs to uid 65534"):
        Ring.open(ring_name)
    with pytest.raises(RingPermissionError):
        Ring.create(ring_name, exist_ok=True)
    with pytest.raises(RingExists, match="cannot be used"):
        Ring.create(ring_name)


# ---- damaged headers ------------------------------------------------------------------


def _damage(name: str, off: int, fmt: str, value: int) -> None:
    seg = w.Segment(name)
    if fmt == "I":
        seg.u32(off, value)
    else:
        seg.u64(off, value)
    seg.close()


@needs_shm
@pytest.mark.parametrize(
    ("off", "fmt", "value", "exc", "match"),
    [
        (0, "Q", 0x1122334455667788, RingCorrupt, "wrong magic number"),
        (0, "Q", 0, RingCorrupt, "wrong magic number"),
        (w.H_VERSION, "I", 3, RingVersionError, "layout version 3"),
        (w.H_VERSION, "I", 0, RingVersionError, "layout version 0"),
        (w.H_HEADER_SIZE, "I", 8192, RingCorrupt, "inconsistent header"),
        (w.H_SEGMENT_SIZE, "Q", 12345, RingCorrupt, "inconsistent header"),
        (w.H_LANE_COUNT, "I", 0, RingCorrupt, "inconsistent header"),
        (w.H_LANE_COUNT, "I", 5, RingCorrupt, "inconsistent header"),
        (w.H_LANE_COUNT, "I", 1 << 20, RingCorrupt, "inconsistent header"),
        (w.H_META_SIZE, "I", 8191, RingCorrupt, "inconsistent header"),
        (w.H_META_SIZE, "I", 0, RingCorrupt, "inconsistent header"),
        (w.H_LANE_SIZE, "Q", 12288, RingCorrupt, "inconsistent header"),
        (w.H_LANE_SIZE, "Q", 2048, RingCorrupt, "inconsistent header"),
        (w.H_LANE_SIZE, "Q", 1 << 62, RingCorrupt, "inconsistent header"),
        (w.H_MAX_RECORD, "I", 0, RingCorrupt, "inconsistent header"),
        (w.H_MAX_RECORD, "I", 8192, RingCorrupt, "inconsistent header"),
    ],
)
def test_damaged_header_is_refused(
    ring_name: str, off: int, fmt: str, value: int, exc: type[Exception], match: str
) -> None:
    Ring.create(ring_name, 4 * 4096, lanes=4, max_record=1024).close()
    _damage(ring_name, off, fmt, value)
    with pytest.raises(exc, match=match):
        Ring.open(ring_name)
    with pytest.raises(exc):
        Ring.create(ring_name, exist_ok=True)


def test_version_error_is_a_corrupt_error() -> None:
    assert issubclass(RingVersionError, RingCorrupt)


@needs_shm
@pytest.mark.parametrize("keep", [0, 100, 4095, 4096, 4096 + 4096, -1])
def test_truncated_segment_is_refused(ring_name: str, keep: int) -> None:
    Ring.create(ring_name, 4 * 4096, lanes=4, max_record=1024).close()
    path = w.SHM_DIR / ring_name
    os.truncate(path, path.stat().st_size + keep if keep < 0 else keep)
    with pytest.raises(RingCorrupt, match="truncated"):
        Ring.open(ring_name)


@needs_shm
def test_segment_of_a_creator_that_died_mid_creation(ring_name: str) -> None:
    # The creator died after sizing the segment and before writing the magic.
    fd = os.open(w.SHM_DIR / ring_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 1 << 20)
    os.close(fd)
    remove = f"Ring.unlink('{ring_name}')"
    with pytest.raises(RingCorrupt, match="died while creating it") as info:
        Ring.open(ring_name)
    assert remove in str(info.value)
    with pytest.raises(RingCorrupt) as info:
        Ring.create(ring_name, exist_ok=True)
    assert remove in str(info.value)
    with pytest.raises(RingError) as err:
        Ring.create(ring_name)
    assert remove in str(err.value)
    # Following the advice works.
    Ring.unlink(ring_name)
    Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024).close()


_FULL_SHM_SCRIPT = """
import errno, os
from emp_fastbuf.ring._ring import Ring
try:
    Ring.create("too-big", 4 << 20, lanes=4, max_record=1024)
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
else:
    raise AssertionError("a 4 MiB ring was created in a 1 MiB /dev/shm")
assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
"""


def _can_unshare_mounts() -> bool:
    if not w.SHM_DIR.is_dir() or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/dev/shm"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs root and mount namespaces")
def test_create_without_room_in_shm_raises_instead_of_crashing() -> None:
    # A private 1 MiB /dev/shm (as in a container with a small --shm-size): pre-faulting
    # pages tmpfs cannot provide would kill the process with SIGBUS.
    script = (
        f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} -c '{_FULL_SHM_SCRIPT}'"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"


# ---- damaged lanes (each in its own process: a crash must not take pytest down) -------


@needs_shm
@pytest.mark.parametrize("case", w.CORRUPTIONS)
def test_damaged_lane_is_skipped_and_counted(ring_name: str, case: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "support.ring_workers", "corrupt", ring_name, case],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
