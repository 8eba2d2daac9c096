"""The ring across real processes: many producers, producers and consumers killed with
SIGKILL at random moments, fork in the middle of producing, the consumer lease, dead
lanes, a creator that crashed. Children are started with the "spawn" method (the fork
tests fork inside such a child) and run functions from ring_workers.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest

import support.ring_workers as w
from emp_fastbuf.errors import RingBusy, RingExists
from emp_fastbuf.ring._ring import Consumer, Ring

pytestmark = [pytest.mark.stress, pytest.mark.native]

CTX = mp.get_context("spawn")
LINUX_PROC = os.path.isdir("/proc/self")


@pytest.fixture
def children() -> Iterator[list[BaseProcess]]:
    """Processes a test started; any still running at the end are killed and reaped."""
    procs: list[BaseProcess] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


@pytest.fixture
def spawn(children: list[BaseProcess]) -> Callable[..., BaseProcess]:
    """Start ``target(*args)`` in a spawned child."""

    def start(target: Callable[..., None], *args: Any) -> BaseProcess:
        proc = CTX.Process(target=target, args=args, daemon=True)
        proc.start()
        children.append(proc)
        return proc

    return start


def read_json(path: Path, timeout: float = 30.0, proc: BaseProcess | None = None) -> Any:
    """Wait for a child's JSON report (failing early if the child died first)."""

    def ready() -> bool:
        if path.exists():
            return True
        assert proc is None or proc.is_alive() or path.exists(), (
            f"child exited with {proc.exitcode} before writing {path.name}"
        )
        return False

    w.wait_for(ready, timeout, f"report {path.name}")
    return json.loads(path.read_text())


def kill(proc: BaseProcess) -> None:
    """SIGKILL a child and reap it."""
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL


class Checker:
    """Consumes records made by ``make_record`` and checks each producer's stream: every
    sequence number exactly once, in order, from one lane, payload intact."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.lane: dict[int, int] = {}
        self.total = 0

    def take(self, groups: list[tuple[int, bytes, list[bytes]]]) -> int:
        n = 0
        for lane, _meta, recs in groups:
            for rec in recs:
                producer, seq = w.parse_record(rec)
                expected = self.next.get(producer, 0)
                assert seq == expected, f"producer {producer}: got seq {seq}, expected {expected}"
                self.next[producer] = seq + 1
                assert self.lane.setdefault(producer, lane) == lane, (
                    f"producer {producer} moved from lane {self.lane[producer]} to {lane}"
                )
                n += 1
        self.total += n
        return n

    def drain(self, consumer: Consumer) -> int:
        """Read until nothing is left, acking each batch."""
        n = 0
        while True:
            got = self.take(consumer.read_lanes(10_000))
            consumer.ack()
            if not got:
                return n
            n += got


# ---- many producers -----------------------------------------------------------------


def test_four_producers_100k_records_each(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    producers, count = 4, 100_000
    ring = Ring.create(ring_name, 8 << 20, lanes=8, max_record=1024)
    consumer = ring.consumer()
    results = [tmp_path / f"p{i}.json" for i in range(producers)]
    procs = [spawn(w.produce, ring_name, i, count, str(results[i])) for i in range(producers)]
    check = Checker()
    deadline = time.monotonic() + 120
    while check.total < producers * count:
        assert time.monotonic() < deadline, f"only {check.total} records after 120 s"
        got = check.take(consumer.read_lanes(8192))
        consumer.ack()
        if not got:
            assert any(p.is_alive() for p in procs) or consumer.backlog(), (
                f"producers exited ({[p.exitcode for p in procs]}) after {check.total} records"
            )
            time.sleep(0.001)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert check.drain(consumer) == 0  # nothing beyond what was written
    assert check.next == {i: count for i in range(producers)}
    reports = [json.loads(r.read_text()) for r in results]
    assert {i: reports[i]["lane"] for i in range(producers)} == check.lane
    assert len(set(check.lane.values())) == producers
    falses = sum(r["falses"] for r in reports)
    stats = ring.stats()
    assert stats["accepted"] == stats["acked"] == producers * count
    assert stats["dropped_full"] == falses
    assert stats["written"] == producers * count + falses
    assert stats["in_flight"] == 0 and stats["dropped_no_lane"] == 0
    w.check_invariant(stats)
    consumer.close()
    ring.close()


# ---- producers killed ---------------------------------------------------------------


def test_producers_killed_at_random_moments(
    ring_name: str, spawn: Callable[..., BaseProcess], children: list[BaseProcess]
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    # Four 64 KiB lanes and three producers per round: later rounds get lanes only if
    # the dead producers' lanes are reaped; small lanes make them wrap and fill.
    ring = Ring.create(ring_name, 4 << 16, lanes=4, max_record=1024)
    consumer = ring.consumer()
    check = Checker()
    accepted_before = 0
    for rnd_no in range(4):
        ids = [rnd_no * 10 + j for j in range(3)]
        start = time.monotonic()
        procs = {spawn(w.produce_forever, ring_name, i): start + rnd.uniform(0.1, 0.8) for i in ids}
        round_total = check.total
        while procs:
            check.take(consumer.read_lanes(rnd.randint(1, 4000)))
            if rnd.random() < 0.8:
                consumer.ack()
            now = time.monotonic()
            for p, at in list(procs.items()):
                if now >= at:
                    kill(p)
                    del procs[p]
        check.drain(consumer)
        consumer.reap()
        stats = ring.stats()
        assert consumer.producers() == [], f"dead lanes not reaped (seed {seed})"
        assert stats["dropped_no_lane"] == 0, f"a producer found no lane (seed {seed})"
        assert stats["in_flight"] == 0
        assert stats["accepted"] - accepted_before == check.total - round_total, (
            f"records accepted and delivered differ (seed {seed})"
        )
        accepted_before = stats["accepted"]
        w.check_invariant(stats)
    assert check.total > 0
    assert all(c.exitcode == -signal.SIGKILL for c in children)
    consumer.close()
    ring.close()


def test_dead_producer_lane_is_reaped_after_drain(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    ring = Ring.create(ring_name, 2 * 4096, lanes=2, max_record=1024)
    consumer = ring.consumer()
    ready = tmp_path / "ready.json"
    proc = spawn(w.produce_and_wait, ring_name, 7, 50, str(ready))
    lane = read_json(ready, proc=proc)["lane"]
    assert consumer.producers() == [{"lane": lane, "pid": proc.pid, "alive": True}]
    assert consumer.reap() == 0  # alive
    kill(proc)
    assert consumer.producers() == [{"lane": lane, "pid": proc.pid, "alive": False}]
    assert consumer.reap() == 0  # dead, but its records are not delivered yet
    check = Checker()
    check.drain(consumer)
    assert check.next == {7: 50}
    consumer.reap()
    assert consumer.producers() == []
    (lane_stats,) = ring.stats()["lanes"]
    assert lane_stats["owner_pid"] is None and lane_stats["acked"] == 50
    consumer.close()
    ring.close()


def test_new_producer_takes_over_a_dead_drained_lane(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    ring = Ring.create(ring_name, 4096, lanes=1, max_record=1024)
    ready = tmp_path / "ready.json"
    proc = spawn(w.produce_and_wait, ring_name, 3, 10, str(ready))
    read_json(ready, proc=proc)
    assert not ring.write(b"no lane while the producer lives")
    consumer = ring.consumer()
    consumer.ack()  # reaps now (nothing to free), then not again for 0.5 s
    kill(proc)
    check = Checker()
    check.drain(consumer)
    assert check.next == {3: 10}
    # Drained and dead: a producer may take the lane over whether or not the consumer
    # has reaped it yet. The claim is retried at most every 50 ms.
    w.wait_for(lambda: ring.write(b"mine now"), 10, "the dead producer's lane")
    assert ring.lane_index == 0
    assert consumer.read() == [b"mine now"]
    consumer.ack()
    stats = ring.stats()
    assert stats["in_flight"] == 0 and stats["dropped_no_lane"] >= 1
    w.check_invariant(stats)
    consumer.close()
    ring.close()


# ---- consumers killed ---------------------------------------------------------------


def test_killed_consumer_unacked_records_are_read_again(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    ring = Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024)
    for seq in range(100):
        assert ring.write(w.make_record(1, seq))
    epoch = ring.stats()["consumer"]["epoch"]
    ready = tmp_path / "ready.json"
    proc = spawn(w.read_ack_part, ring_name, 40, str(ready))
    seen = read_json(ready, proc=proc)
    assert seen == {"acked": list(range(40)), "unacked": list(range(40, 100))}
    assert ring.stats()["acked"] == 40
    kill(proc)
    consumer = ring.consumer()
    assert ring.stats()["consumer"]["epoch"] == epoch + 2
    again = [w.parse_record(r)[1] for r in consumer.read(1000)]
    assert again == list(range(40, 100))
    consumer.ack()
    stats = ring.stats()
    assert stats["acked"] == 100 and stats["in_flight"] == 0
    w.check_invariant(stats)
    consumer.close()
    ring.close()


def test_consumers_killed_at_random_moments_lose_nothing(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    # One 64 KiB lane and a producer that never stops: it can only go on as consumers
    # acknowledge, so every consumer is killed under load.
    ring = Ring.create(ring_name, 1 << 16, lanes=1, max_record=1024)
    producer = spawn(w.produce_forever, ring_name, 1)
    sessions: list[list[int]] = []
    for k in range(4):
        log = tmp_path / f"consumer{k}.log"
        proc = spawn(w.consume_logging, ring_name, str(log), rnd.randrange(1 << 30))
        time.sleep(rnd.uniform(0.15, 0.5))
        kill(proc)
        logged = w.read_log(str(log))
        assert all(p == 1 for p, _ in logged)
        sessions.append([s for _, s in logged])
    kill(producer)
    consumer = ring.consumer()
    final: list[int] = []
    while batch := consumer.read(5000):
        final.extend(w.parse_record(r)[1] for r in batch)
        consumer.ack()
    sessions.append(final)
    assert final, f"the last consumer got nothing (seed {seed})"
    # Each session reads a contiguous run; the next one starts at or before the end of
    # the last (records read but not acked are read again), never after it.
    resume = 0
    for i, run in enumerate(sessions):
        if not run:
            continue
        assert run == list(range(run[0], run[0] + len(run))), f"session {i} (seed {seed})"
        assert run[0] <= resume, f"session {i} skipped {resume}..{run[0]} (seed {seed})"
        resume = max(resume, run[-1] + 1)
    stats = ring.stats()
    assert resume == stats["accepted"] == stats["acked"], f"lost records (seed {seed})"
    assert sum(1 for run in sessions if run) >= 3, f"consumers got too little (seed {seed})"
    assert stats["in_flight"] == 0
    w.check_invariant(stats)
    consumer.close()
    ring.close()


# ---- the consumer lease -------------------------------------------------------------


def test_consumer_lease_is_held_by_a_live_process_and_taken_over_after_kill(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    ring = Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024)
    ready = tmp_path / "ready.json"
    holder = spawn(w.hold_consumer, ring_name, str(ready))
    read_json(ready, proc=holder)
    with pytest.raises(RingBusy, match=f"held by live pid {holder.pid}"):
        ring.consumer()
    lease = ring.stats()["consumer"]
    assert lease["pid"] == holder.pid and lease["alive"]
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    if LINUX_PROC:
        # Not reaped (no join or is_alive, which would wait for it): a zombie holds nothing.
        w.wait_for(lambda: w.is_zombie_or_gone(holder.pid or 0), 10, "the holder to die")
    else:
        holder.join(10)
    consumer = ring.consumer()
    lease2 = ring.stats()["consumer"]
    assert lease2["pid"] == os.getpid() and lease2["epoch"] == lease["epoch"] + 1
    holder.join(10)
    # While this process holds the role another cannot take it; after close() it can.
    result = tmp_path / "try1.json"
    spawn(w.try_consumer, ring_name, str(result)).join(30)
    assert json.loads(result.read_text())["took"] is False
    consumer.close()
    result = tmp_path / "try2.json"
    spawn(w.try_consumer, ring_name, str(result)).join(30)
    assert json.loads(result.read_text()) == {"took": True}
    assert ring.stats()["consumer"]["pid"] is None
    ring.close()


# ---- fork ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["os", "c"])
def test_fork_while_producing(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess], kind: str
) -> None:
    before, after = 1000, 5000
    ring = Ring.create(ring_name, 4 << 16, lanes=4, max_record=1024)
    consumer = ring.consumer()
    result = tmp_path / "fork.json"
    proc = spawn(w.fork_producer, ring_name, before, after, kind, str(result))
    check = Checker()
    deadline = time.monotonic() + 60
    while proc.is_alive() or consumer.backlog():
        assert time.monotonic() < deadline, "fork test stuck"
        check.take(consumer.read_lanes(5000))
        consumer.ack()
        time.sleep(0.001)
    check.drain(consumer)
    assert proc.exitcode == 0
    info = json.loads(result.read_text())
    child = info["child"]
    # Both streams complete, each in order in its own lane.
    assert check.next == {1: before + after, 2: after}
    assert info["parent_lane"] == info["parent_lane_after"] == check.lane[1]
    assert child["lane_before"] is None and child["pending"] == 0
    assert child["lane"] == check.lane[2] != check.lane[1]
    stats = ring.stats()
    assert stats["accepted"] == stats["acked"] == before + 2 * after
    assert stats["dropped_full"] == info["parent_falses"] + child["falses"]
    assert stats["in_flight"] == 0
    w.check_invariant(stats)
    consumer.close()
    ring.close()


def test_forked_child_does_not_release_the_parents_consumer_role(
    ring_name: str, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    ring = Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024)
    result = tmp_path / "fork.json"
    proc = spawn(w.fork_with_consumer, ring_name, str(result))
    info = read_json(result, proc=proc)
    assert info["child_status"] == 0
    assert info["child"] == {"read_error": "RingError", "take_error": "RingBusy"}
    assert info["lease_pid"] == info["me"], (
        "the forked child released its parent's consumer lease when its copy of the "
        "Consumer was garbage-collected"
    )
    other = tmp_path / "try.json"
    spawn(w.try_consumer, ring_name, str(other)).join(30)
    assert json.loads(other.read_text())["took"] is False
    kill(proc)
    ring.close()


# ---- a crashed creator --------------------------------------------------------------


def test_segment_of_a_crashed_creator_is_reported_then_reused(
    ring_name: str, spawn: Callable[..., BaseProcess]
) -> None:
    proc = spawn(w.create_and_die, ring_name, 20)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    with pytest.raises(RingExists, match=f"created by pid {proc.pid}, no longer running"):
        Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024)
    ring = Ring.create(ring_name, 1 << 16, lanes=4, max_record=1024, exist_ok=True)
    assert ring.stats()["creator_pid"] == proc.pid
    consumer = ring.consumer()
    check = Checker()
    check.drain(consumer)
    assert check.next == {1: 20}
    consumer.reap()
    assert consumer.producers() == []
    consumer.close()
    ring.close()


L_WRITTEN, L_ACCEPTED = 72, 80  # lane descriptor offsets (docs/ring-layout.md)


@pytest.mark.stress
@pytest.mark.skipif(not w.SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")
def test_write_interrupted_by_death_is_reconciled_when_the_lane_is_reaped(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 20, lanes=4, max_record=1024)
    try:
        p = mp.get_context("spawn").Process(target=w.write_three_and_die, args=(ring_name,))
        p.start()
        p.join(60)
        c = ring.consumer()
        assert len(c.read(100)) == 3
        (lane,) = [x["lane"] for x in ring.stats()["lanes"] if x["written"]]
        # The producer died after counting a fourth record it never published.
        seg = w.Segment(ring_name)
        try:
            for field in (L_WRITTEN, L_ACCEPTED):
                off = seg.desc(lane, field)
                seg.u64(off, seg.u64(off) + 1)
        finally:
            seg.close()
        assert ring.stats()["accepted"] == 4
        c.ack()  # acknowledges the 3 real records and reaps the dead owner's lane
        st = ring.stats()
        assert (st["written"], st["accepted"], st["acked"], st["in_flight"]) == (3, 3, 3, 0)
        w.check_invariant(st)
        c.close()
    finally:
        ring.close()
