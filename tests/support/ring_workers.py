"""Helpers for the ring tests: a self-checking payload format, a raw view of a ring
segment in /dev/shm, and the functions that spawned child processes run.

Every function a child runs is importable from here (the ``spawn`` start method pickles
it by module and name). Children report through small JSON files or exit codes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import os
import random
import signal
import struct
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emp_fastbuf.errors import RingBusy
from emp_fastbuf.ring._ring import Ring

SHM_DIR = Path("/dev/shm")

# ---- payloads -----------------------------------------------------------------------
# producer id (u32), sequence number (u64), body length (u32), body, crc32 of all before.
_HEAD = struct.Struct("<IQI")
_CRC = struct.Struct("<I")
_BLOCK = random.Random(0x5EED).randbytes(8192)


def make_record(producer: int, seq: int, size: int | None = None) -> bytes:
    """A record that names its producer and sequence number and checks itself."""
    n = (seq * 7 + producer) % 57 if size is None else size
    off = (seq * 31 + producer * 17) % 4096
    body = _BLOCK[off : off + n] if n <= 4096 else (_BLOCK * (n // 8192 + 1))[:n]
    head = _HEAD.pack(producer, seq, n)
    return head + body + _CRC.pack(zlib.crc32(body, zlib.crc32(head)))


def parse_record(rec: bytes) -> tuple[int, int]:
    """``(producer, seq)`` of a record made by ``make_record``; AssertionError if damaged."""
    assert len(rec) >= _HEAD.size + _CRC.size, f"short record: {rec!r}"
    producer, seq, n = _HEAD.unpack_from(rec)
    assert len(rec) == _HEAD.size + n + _CRC.size, f"bad record length {len(rec)} for body {n}"
    (crc,) = _CRC.unpack_from(rec, len(rec) - _CRC.size)
    assert crc == zlib.crc32(rec[: len(rec) - _CRC.size]), f"bad checksum in {producer}/{seq}"
    return producer, seq


# ---- raw segment access -------------------------------------------------------------

H_VERSION = 8
H_HEADER_SIZE = 12
H_SEGMENT_SIZE = 16
H_LANE_COUNT = 24
H_META_SIZE = 28
H_LANE_SIZE = 32
H_MAX_RECORD = 40
L_OWNER = 0
L_META_LEN = 24
L_HEAD = 64
L_TAIL = 128
PAD = 0x80000000


def _page(n: int) -> int:
    return (n + 4095) & ~4095


class Segment:
    """The bytes of ``/dev/shm/<name>`` through open() + mmap, for corrupting them."""

    def __init__(self, name: str) -> None:
        with open(SHM_DIR / name, "r+b") as f:
            self.mm = mmap.mmap(f.fileno(), 0)
        self.lanes, self.meta_size = struct.unpack_from("<II", self.mm, H_LANE_COUNT)
        (self.lane_size,) = struct.unpack_from("<Q", self.mm, H_LANE_SIZE)
        meta_off = _page(4096 + self.lanes * 256)
        self.data_off = _page(meta_off + self.lanes * self.meta_size)

    def u32(self, off: int, value: int | None = None) -> int:
        """Read (or, with ``value``, write) a u32 at ``off``."""
        if value is not None:
            struct.pack_into("<I", self.mm, off, value)
        return int(struct.unpack_from("<I", self.mm, off)[0])

    def u64(self, off: int, value: int | None = None) -> int:
        """Read (or, with ``value``, write) a u64 at ``off``."""
        if value is not None:
            struct.pack_into("<Q", self.mm, off, value)
        return int(struct.unpack_from("<Q", self.mm, off)[0])

    def desc(self, lane: int, field: int) -> int:
        """Offset of a lane descriptor field."""
        return 4096 + lane * 256 + field

    def data(self, lane: int, pos: int = 0) -> int:
        """Offset in the segment of byte position ``pos`` of ``lane``."""
        return self.data_off + lane * self.lane_size + (pos & (self.lane_size - 1))

    def frames(self, lane: int) -> list[tuple[int, int]]:
        """``(position, length)`` of each frame between the lane's tail and head."""
        pos = self.u64(self.desc(lane, L_TAIL))
        head = self.u64(self.desc(lane, L_HEAD))
        out = []
        while pos < head:
            tag = self.u32(self.data(lane, pos))
            if tag == PAD:
                pos += self.lane_size - (pos & (self.lane_size - 1))
                continue
            out.append((pos, tag))
            pos += (8 + tag + 7) & ~7
        return out

    def close(self) -> None:
        """Unmap."""
        self.mm.close()


def shm_names(prefix: str) -> set[str]:
    """Names in /dev/shm that start with ``prefix`` (empty where there is no /dev/shm)."""
    if not SHM_DIR.is_dir():
        return set()
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)}


def name_prefix() -> str:
    """The prefix of every ring name this test process creates (see conftest's ring_name)."""
    return f"emp-fastbuf-test-{os.getpid()}"


def check_invariant(stats: dict[str, Any]) -> None:
    """``written == acked + dropped + in_flight``, in total and per lane."""
    assert stats["written"] == stats["acked"] + stats["dropped"] + stats["in_flight"], stats
    assert stats["in_flight"] == stats["accepted"] - stats["acked"], stats
    for lane in stats["lanes"]:
        dropped = lane["dropped_full"] + lane["dropped_too_large"]
        assert lane["written"] == lane["accepted"] + dropped, lane
        assert lane["acked"] <= lane["accepted"], lane


def wait_for(pred: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def is_zombie_or_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (rename), so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def write_retry(ring: Ring, rec: bytes) -> int:
    """Write ``rec``, retrying while the lane is full. Returns the number of False returns."""
    falses = 0
    while not ring.write(rec):
        falses += 1
        time.sleep(0.0002)
    return falses


# ---- functions run by child processes ------------------------------------------------


def produce(name: str, producer: int, count: int, result: str) -> None:
    """Write ``count`` records, retrying when full; report lane and False count."""
    ring = Ring.open(name)
    falses = 0
    for seq in range(count):
        falses += write_retry(ring, make_record(producer, seq))
    write_json(result, {"falses": falses, "lane": ring.lane_index})
    ring.close()


def produce_forever(name: str, producer: int) -> None:
    """Write records with increasing sequence numbers until killed."""
    ring = Ring.open(name)
    seq = 0
    while True:
        write_retry(ring, make_record(producer, seq))
        seq += 1


def produce_and_wait(name: str, producer: int, count: int, ready: str) -> None:
    """Write ``count`` records, signal ``ready``, then wait to be killed."""
    ring = Ring.open(name)
    for seq in range(count):
        assert ring.write(make_record(producer, seq))
    write_json(ready, {"lane": ring.lane_index})
    time.sleep(600)


def hold_consumer(name: str, ready: str) -> None:
    """Take the consumer role, signal ``ready``, then wait to be killed."""
    ring = Ring.open(name)
    consumer = ring.consumer()
    write_json(ready, {"pid": os.getpid()})
    time.sleep(600)
    consumer.close()


def try_consumer(name: str, result: str) -> None:
    """Try to take the consumer role once; report whether it worked."""
    ring = Ring.open(name)
    try:
        consumer = ring.consumer()
    except RingBusy as exc:
        write_json(result, {"took": False, "error": str(exc)})
    else:
        consumer.close()
        write_json(result, {"took": True})
    ring.close()


def read_ack_part(name: str, n_ack: int, ready: str) -> None:
    """Read everything, ack only the first ``n_ack`` records, signal, wait to be killed."""
    ring = Ring.open(name)
    consumer = ring.consumer()
    first = consumer.read(n_ack)
    consumer.ack()
    rest = consumer.read(1_000_000)
    write_json(
        ready,
        {
            "acked": [parse_record(r)[1] for r in first],
            "unacked": [parse_record(r)[1] for r in rest],
        },
    )
    time.sleep(600)


def consume_logging(name: str, log: str, seed: int) -> None:
    """Consume until killed: log each record's (producer, seq) before acking it."""
    rnd = random.Random(seed)
    ring = Ring.open(name)
    consumer = ring.consumer()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        recs = consumer.read(rnd.randint(1, 500))
        if recs:
            os.write(fd, b"".join(struct.pack("<IQ", *parse_record(r)) for r in recs))
        if rnd.random() < 0.7:
            consumer.ack()
        if not recs:
            time.sleep(0.001)


def read_log(path: str) -> list[tuple[int, int]]:
    """The (producer, seq) pairs a ``consume_logging`` process logged."""
    if not os.path.exists(path):
        return []
    data = Path(path).read_bytes()
    return [struct.unpack_from("<IQ", data, i) for i in range(0, len(data) - len(data) % 12, 12)]


def create_and_die(name: str, count: int) -> None:
    """Create the ring, write ``count`` records, then SIGKILL this process (a crash)."""
    ring = Ring.create(name, 1 << 16, lanes=4, max_record=1024)
    for seq in range(count):
        assert ring.write(make_record(1, seq))
    os.kill(os.getpid(), signal.SIGKILL)


def _fork(kind: str) -> int:
    if kind == "os":
        return os.fork()
    # A fork made from C: Python's own at-fork hooks do not run, pthread_atfork does.
    libc = ctypes.CDLL(None, use_errno=True)
    pid = int(libc.fork())
    assert pid >= 0, os.strerror(ctypes.get_errno())
    return pid


def fork_producer(name: str, before: int, after: int, kind: str, result: str) -> None:
    """Write ``before`` records as producer 1, fork; the child writes ``after`` records as
    producer 2, the parent ``after`` more as producer 1. Reports both lanes."""
    ring = Ring.open(name)
    for seq in range(before):
        assert ring.write(make_record(1, seq))
    parent_lane = ring.lane_index
    child_result = f"{result}.child"
    pid = _fork(kind)
    if pid == 0:
        code = 1
        try:
            info: dict[str, Any] = {"lane_before": ring.lane_index, "pending": ring.pending()}
            falses = 0
            for seq in range(after):
                falses += write_retry(ring, make_record(2, seq))
            info.update(lane=ring.lane_index, falses=falses, pid=os.getpid())
            write_json(child_result, info)
            ring.close()
            code = 0
        finally:
            os._exit(code)
    falses = 0
    for seq in range(before, before + after):
        falses += write_retry(ring, make_record(1, seq))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"forked child failed: {status}"
    with open(child_result) as f:
        child = json.load(f)
    write_json(
        result,
        {
            "parent_lane": parent_lane,
            "parent_lane_after": ring.lane_index,
            "parent_falses": falses,
            "child": child,
        },
    )
    ring.close()


def fork_with_consumer(name: str, result: str) -> None:
    """Take the consumer role, fork; the child drops its copy of the Consumer and exits.
    Reports who holds the lease afterwards and what the child saw."""
    ring = Ring.open(name)
    consumer = ring.consumer()
    child_result = f"{result}.child"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            info: dict[str, Any] = {}
            try:
                consumer.read()
            except Exception as exc:
                info["read_error"] = type(exc).__name__
            try:
                ring.consumer()
            except Exception as exc:
                info["take_error"] = type(exc).__name__
            del consumer
            gc.collect()
            write_json(child_result, info)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(child_result) as f:
        child = json.load(f)
    lease = ring.stats()["consumer"]
    write_json(
        result,
        {
            "me": os.getpid(),
            "lease_pid": lease["pid"],
            "child": child,
            "child_status": os.waitstatus_to_exitcode(status),
        },
    )
    # Hold the role until the test has checked that nobody else can take it.
    time.sleep(600)


# ---- corruption cases (run in a subprocess: a crash must not kill pytest) -------------

CORRUPTIONS = (
    "check_word",
    "length_beyond_lane",
    "length_over_max_record",
    "length_beyond_head",
    "pad_beyond_head",
    "bad_pad_tag",
    "garbage_lane",
    "zeroed_lane",
    "head_backwards",
    "head_too_far",
    "head_forward",
    "head_misaligned",
    "tail_too_far",
    "meta_length",
    "owner_garbage",
)


def _drain(consumer: Any, rounds: int = 3) -> list[tuple[int, bytes, list[bytes]]]:
    out = []
    for _ in range(rounds):
        out.extend(consumer.read_lanes(100_000))
    consumer.ack()
    return out


def _by_producer(groups: Iterable[tuple[int, bytes, list[bytes]]]) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for _lane, _meta, recs in groups:
        for rec in recs:
            producer, seq = parse_record(rec)
            seen.setdefault(producer, []).append(seq)
    return seen


def corruption_case(name: str, case: str) -> None:
    """Corrupt lane A of a ring one way, then check that the consumer neither crashes nor
    returns damaged records, counts exactly one skip, drains lane B fully, and that both
    producers' records written after the skip are delivered."""
    ring = Ring.create(name, 4 * 4096, lanes=4, max_record=1024)
    a = Ring.open(name)
    b = Ring.open(name)
    a.set_meta(b"meta-a")
    for seq in range(12):
        assert a.write(make_record(1, seq, 40))
        assert b.write(make_record(2, seq, 40))
    la, lb = a.lane_index, b.lane_index
    assert la is not None and lb is not None and la != lb
    seg = Segment(name)
    consumer = ring.consumer()
    frames = seg.frames(la)
    assert len(frames) == 12
    head_off = seg.desc(la, L_HEAD)
    head = seg.u64(head_off)
    # Records of A that must still come out (those before the damage), in order.
    keep = 5
    b_left = list(range(12))
    if case in ("head_backwards", "tail_too_far"):
        # Damage found after the consumer has read everything.
        first = _by_producer(_drain(consumer))
        assert first == {1: list(range(12)), 2: list(range(12))}, first
        keep = 0
        b_left = []
    pos5 = seg.data(la, frames[5][0])
    if case == "check_word":
        seg.u32(pos5 + 4, seg.u32(pos5 + 4) ^ 0x10)
    elif case == "length_beyond_lane":
        seg.u32(pos5, seg.lane_size)
        seg.u32(pos5 + 4, ~seg.lane_size & 0xFFFFFFFF)
    elif case == "length_over_max_record":
        seg.u32(pos5, 1025)
        seg.u32(pos5 + 4, ~1025 & 0xFFFFFFFF)
    elif case == "length_beyond_head":
        keep = 11
        last = seg.data(la, frames[11][0])
        seg.u32(last, 200)
        seg.u32(last + 4, ~200 & 0xFFFFFFFF)
    elif case == "pad_beyond_head":
        # A padding frame is always followed by a record in the same commit, so a pad
        # that reaches past the head is damage.
        seg.u32(pos5, PAD)
        seg.u32(pos5 + 4, ~PAD & 0xFFFFFFFF)
    elif case == "bad_pad_tag":
        seg.u32(pos5, PAD | 16)
        seg.u32(pos5 + 4, ~(PAD | 16) & 0xFFFFFFFF)
    elif case == "garbage_lane":
        keep = 0
        start = seg.data(la)
        seg.mm[start : start + seg.lane_size] = random.Random(7).randbytes(seg.lane_size)
    elif case == "zeroed_lane":
        keep = 0
        start = seg.data(la)
        seg.mm[start : start + seg.lane_size] = bytes(seg.lane_size)
    elif case == "head_backwards":
        seg.u64(head_off, head - 200)
    elif case == "head_too_far":
        keep = 0
        seg.u64(head_off, head + 10 * seg.lane_size)
    elif case == "head_forward":
        keep = 12
        seg.u64(head_off, head + 64)
    elif case == "head_misaligned":
        keep = 12
        seg.u64(head_off, head + 3)
    elif case == "tail_too_far":
        seg.u64(seg.desc(la, L_TAIL), head + 5 * seg.lane_size)
    elif case == "meta_length":
        seg.u64(seg.desc(la, L_META_LEN), 1 << 40)
    elif case == "owner_garbage":
        seg.u64(seg.desc(la, L_OWNER), (1 << 63) + 12345)
    else:
        raise ValueError(case)
    # A consumer that takes over after the damage must cope just as well.
    consumer.close()
    consumer = ring.consumer()
    groups = _drain(consumer)
    seen = _by_producer(groups)
    counted = case not in ("meta_length", "owner_garbage")
    if case in ("meta_length", "owner_garbage"):
        keep = 12
        metas = {lane: meta for lane, meta, _ in groups}
        expected_meta = b"" if case == "meta_length" else b"meta-a"
        assert metas.get(la) == expected_meta, metas
    assert seen.get(2, []) == b_left, f"lane B was not drained intact: {seen}"
    assert seen.get(1, []) == list(range(keep)), f"lane A before the damage: {seen}"
    skipped = ring.stats()["corrupt_skipped"]
    assert skipped == (1 if counted else 0), f"corrupt_skipped {skipped} after one damage"
    # Polling again must not count the same damage again.
    for _ in range(5):
        consumer.read()
    consumer.ack()
    skipped = ring.stats()["corrupt_skipped"]
    assert skipped == (1 if counted else 0), (
        f"corrupt_skipped grew to {skipped} by polling a lane damaged once"
    )
    # Both live producers go on: their new records are delivered.
    for seq in range(100, 110):
        assert b.write(make_record(2, seq, 40))
    falses = [seq for seq in range(100, 110) if not a.write(make_record(1, seq, 40))]
    seen = _by_producer(_drain(consumer))
    assert seen.get(2) == list(range(100, 110)), f"lane B after the damage: {seen}"
    assert not falses and seen.get(1) == list(range(100, 110)), (
        f"producer A's lane did not recover after the skip: writes {falses} returned "
        f"False, delivered {seen.get(1)}"
    )
    stats = ring.stats()
    assert stats["written"] == stats["acked"] + stats["dropped"] + stats["in_flight"], stats
    consumer.close()
    seg.close()
    a.close()
    b.close()
    ring.close()
    Ring.unlink(name)


if __name__ == "__main__":  # python -m support.ring_workers corrupt NAME CASE
    if sys.argv[1] == "corrupt":
        corruption_case(sys.argv[2], sys.argv[3])


def write_three_and_die(name: str) -> None:
    """Write three records and exit without closing, like a killed worker."""
    ring = Ring.open(name)
    for i in range(3):
        assert ring.write(b"r%d" % i)
    os._exit(0)
