"""Model-based test of the ring in one process: random record sizes and random
interleavings of write, read, ack, consumer close and retake, producer close and reopen,
set_meta and reap, checked step by step against a byte-exact model of the lanes.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import support.ring_workers as w
from emp_fastbuf.errors import RecordTooLarge
from emp_fastbuf.ring._ring import Consumer, Ring

pytestmark = pytest.mark.native

LANES = 3
LANE_SIZE = 4096
PRODUCERS = 2


def align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Lane:
    """What the model knows of one lane: byte positions and the records in it."""

    head: int = 0
    tail: int = 0
    owner: int | None = None  # index of the producer writing into it
    released: bool = False
    meta: bytes = b""
    # (end position, payload) of every accepted record not yet acknowledged, oldest first
    records: list[tuple[int, bytes]] = field(default_factory=list)
    read: int = 0  # how many of ``records`` the current consumer has read
    written: int = 0
    accepted: int = 0
    dropped_full: int = 0
    dropped_too_large: int = 0
    acked: int = 0

    def place(self, n: int) -> int | None:
        """Where a record of ``n`` bytes goes (its new head), or None if it is dropped."""
        need = align8(8 + n)
        off = self.head % LANE_SIZE
        to_end = LANE_SIZE - off
        free = LANE_SIZE - (self.head - self.tail)
        if min(to_end, free) >= need:
            return self.head + need
        if off and free - to_end >= need:  # padding to the lane's end, record at 0
            return self.head + to_end + need
        return None


class RingMachine(RuleBasedStateMachine):
    """Two producers (separate Ring objects, so separate lanes) and one consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"{w.name_prefix()}-hyp-{uuid.uuid4().hex[:8]}"
        self.ring: Ring | None = None
        self.consumer: Consumer | None = None
        self.producers: list[Ring] = []
        self.lane_of: list[int | None] = []  # producer -> lane it writes into
        self.meta_of: list[bytes] = []  # producer -> meta its next lane gets
        self.claim_failed: list[bool] = []  # producer -> a claim failed (50 ms back-off)
        # producer -> (lane, head) of the lanes it handed back: pending() counts them
        # until they are acknowledged
        self.released_of: list[list[tuple[int, int]]] = []
        self.lanes = [Lane() for _ in range(LANES)]
        self.no_lane = 0
        self.counter = 0

    @initialize(max_record=st.sampled_from([1, 56, 1000, 2040]))
    def create(self, max_record: int) -> None:
        self.max_record = max_record
        self.ring = Ring.create(self.name, LANES * LANE_SIZE, lanes=LANES, max_record=max_record)
        for _ in range(PRODUCERS):
            self.producers.append(Ring.open(self.name))
            self.lane_of.append(None)
            self.meta_of.append(b"")
            self.claim_failed.append(False)
            self.released_of.append([])
        self.consumer = self.ring.consumer()

    def teardown(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        for p in self.producers:
            p.close()
        if self.ring is not None:
            self.ring.close()
        Ring.unlink(self.name)

    # ---- producers ----------------------------------------------------------------

    def _claim(self, p: int) -> None:
        """A producer without a lane writes: it claims the first free lane from pid % n."""
        free = [
            (os.getpid() + k) % LANES
            for k in range(LANES)
            if self.lanes[(os.getpid() + k) % LANES].owner is None
        ]
        got = self.producers[p].lane_index
        if got is None:
            # Only allowed when no lane is free, or within the back-off of a failed claim.
            assert not free or self.claim_failed[p], (free, self.claim_failed[p])
            self.claim_failed[p] = True
            return
        assert free and got == free[0], (got, free)
        lane = self.lanes[got]
        lane.owner, lane.released, lane.meta = p, False, self.meta_of[p]
        self.lane_of[p] = got
        self.claim_failed[p] = False

    @rule(p=st.integers(0, PRODUCERS - 1), data=st.data())
    def write(self, p: int, data: st.DataObject) -> None:
        # Tiny, large, and a little over the maximum (RecordTooLarge) now and then.
        m = self.max_record
        sizes = st.one_of(st.integers(0, 16), st.integers(m // 2, m), st.integers(0, m + 16))
        self._write(p, data.draw(sizes, label="size"))

    @rule(p=st.integers(0, PRODUCERS - 1), data=st.data())
    def write_burst(self, p: int, data: st.DataObject) -> None:
        sizes = st.lists(st.integers(0, self.max_record // 3), min_size=1, max_size=30)
        for size in data.draw(sizes, label="sizes"):
            self._write(p, size)

    def _write(self, p: int, size: int) -> None:
        self.counter += 1
        payload = random.Random(self.counter).randbytes(size)
        had_lane = self.lane_of[p] is not None
        if size > self.max_record:
            with pytest.raises(RecordTooLarge):
                self.producers[p].write(payload)
            if not had_lane:
                self._claim(p)
            i = self.lane_of[p]
            if i is None:
                self.no_lane += 1
            else:
                self.lanes[i].written += 1
                self.lanes[i].dropped_too_large += 1
            return
        ok = self.producers[p].write(payload)
        if not had_lane:
            self._claim(p)
        i = self.lane_of[p]
        if i is None:
            assert not ok
            self.no_lane += 1
            return
        lane = self.lanes[i]
        lane.written += 1
        new_head = lane.place(size)
        assert ok == (new_head is not None), (size, lane.head, lane.tail)
        if new_head is None:
            lane.dropped_full += 1
        else:
            lane.head = new_head
            lane.accepted += 1
            lane.records.append((new_head, payload))

    def _release(self, p: int) -> None:
        i = self.lane_of[p]
        if i is not None:
            self.lanes[i].released = True
            self.released_of[p].append((i, self.lanes[i].head))
        self.lane_of[p] = None

    @rule(p=st.integers(0, PRODUCERS - 1))
    def producer_reopen(self, p: int) -> None:
        self.producers[p].close()
        self._release(p)
        self.producers[p] = Ring.open(self.name)
        self.released_of[p] = []  # the new Ring object has written nothing yet
        self.producers[p].set_meta(self.meta_of[p])
        self.claim_failed[p] = False

    @rule(p=st.integers(0, PRODUCERS - 1), meta=st.binary(max_size=40))
    def set_meta(self, p: int, meta: bytes) -> None:
        self.producers[p].set_meta(meta)
        self.meta_of[p] = meta
        self._release(p)

    # ---- consumer -----------------------------------------------------------------

    @rule(max_records=st.integers(1, 40))
    def read(self, max_records: int) -> None:
        assert self.consumer is not None
        expected = []
        left = max_records
        for i, lane in enumerate(self.lanes):
            if left == 0:
                break
            recs = [r for _, r in lane.records[lane.read : lane.read + left]]
            if recs:
                expected.append((i, lane.meta, recs))
                lane.read += len(recs)
                left -= len(recs)
        assert self.consumer.read_lanes(max_records) == expected

    def _reapable(self) -> list[int]:
        return [
            i
            for i, lane in enumerate(self.lanes)
            if lane.owner is not None and lane.released and lane.head == lane.tail
        ]

    def _freed(self, i: int) -> None:
        lane = self.lanes[i]
        lane.owner, lane.released, lane.meta = None, False, b""

    @rule(max_records=st.integers(1, 40))
    def read_and_ack(self, max_records: int) -> None:
        self.read(max_records)
        self.ack()

    @rule()
    def ack(self) -> None:
        assert self.consumer is not None
        self.consumer.ack()
        for lane in self.lanes:
            if lane.read:
                lane.tail = lane.records[lane.read - 1][0]
                lane.acked += lane.read
                del lane.records[: lane.read]
                lane.read = 0
        # ack() also reaps, at most every 0.5 s: whether it did is read back.
        owners = {lane["lane"]: lane["owner_pid"] for lane in self.ring_stats()["lanes"]}
        for i in self._reapable():
            if owners.get(i) is None:
                self._freed(i)

    @rule()
    def reap(self) -> None:
        assert self.consumer is not None
        expected = self._reapable()
        assert self.consumer.reap() == len(expected)
        for i in expected:
            self._freed(i)

    @rule()
    def consumer_retake(self) -> None:
        assert self.consumer is not None and self.ring is not None
        self.consumer.close()
        self.consumer = self.ring.consumer()
        for lane in self.lanes:
            lane.read = 0  # read but not acknowledged: read again

    # ---- checks -------------------------------------------------------------------

    def ring_stats(self) -> dict[str, Any]:
        assert self.ring is not None
        return self.ring.stats()

    @invariant()
    def counters_match(self) -> None:
        if self.ring is None:
            return
        stats = self.ring.stats()
        w.check_invariant(stats)
        lanes = {lane["lane"]: lane for lane in stats["lanes"]}
        for i, model in enumerate(self.lanes):
            real = lanes.get(i)
            if real is None:
                assert model.written == 0 and model.owner is None
                continue
            got = {
                k: real[k]
                for k in ("written", "accepted", "dropped_full", "dropped_too_large", "acked")
            }
            want = {k: getattr(model, k) for k in got}
            assert got == want, (i, got, want)
            assert real["occupancy"] == model.head - model.tail
            assert (real["owner_pid"] is None) == (model.owner is None), (i, real)
        assert stats["dropped_no_lane"] == self.no_lane
        for p, ring in enumerate(self.producers):
            i = self.lane_of[p]
            assert ring.lane_index == i
            current = 0 if i is None else self.lanes[i].head - self.lanes[i].tail
            handed_back = sum(max(0, head - self.lanes[j].tail) for j, head in self.released_of[p])
            assert ring.pending() == current + handed_back

    @invariant()
    def backlog_matches(self) -> None:
        if self.consumer is None:
            return
        unread = 0
        for lane in self.lanes:
            start = lane.records[lane.read - 1][0] if lane.read else lane.tail
            unread += lane.head - start
        assert self.consumer.backlog() == unread


TestRingModel = RingMachine.TestCase
TestRingModel.settings = settings(
    max_examples=100,
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
