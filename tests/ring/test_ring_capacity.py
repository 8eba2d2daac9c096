"""Capacity: the ring sized from one number, a small /dev/shm, hundreds of short-lived
producers, the block policy, drops made visible, and SIGKILL of the agent in the middle of
a group commit. Real shared memory, real processes, a real agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec, api
from emp_fastbuf.ring._ring import DEFAULT_SIZE, MAX_LANES, Ring, layout_for
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc
from support.volume import (
    assert_all_once_or_more,
    can_mount_tmpfs,
    finish,
    start_worker,
    store_seqs,
    worker_env,
)

pytestmark = pytest.mark.native

MiB = 1 << 20


# ---- the size is enough to ask for ------------------------------------------------------


@pytest.mark.parametrize("size", [1 * MiB, 8 * MiB, 64 * MiB, 256 * MiB])
def test_any_size_from_1_mib_makes_a_ring_that_round_trips(ring_name: str, size: int) -> None:
    ring = Ring.create(ring_name, size)
    lay = layout_for(size)
    st = ring.stats()
    assert (st["lane_count"], st["lane_size"]) == (lay["lanes"], lay["lane_size"])
    assert st["lane_count"] * st["lane_size"] <= size and st["chain"] is True
    assert os.stat(f"/dev/shm/{ring_name}").st_size == lay["segment_size"]
    c = ring.consumer()
    records = [os.urandom(n % 400) for n in range(2000)]  # ~400 KB: fits even 1 MiB
    assert all(ring.write(r) for r in records)
    got: list[bytes] = []
    while batch := c.read(512):
        got.extend(batch)
    assert got == records
    c.ack()
    assert ring.flush(1.0)
    c.close()
    ring.close()


def test_the_sizing_rule() -> None:
    # Lanes of 256 KiB (two 64 KiB records), as many as fit, up to 1024; then they grow.
    assert layout_for(1 * MiB)["lanes"] == 4
    assert layout_for(64 * MiB)["lanes"] == 256
    assert layout_for(DEFAULT_SIZE)["lanes"] >= 256  # the default holds 256 processes
    big = layout_for(512 * MiB)
    assert (big["lanes"], big["lane_size"]) == (MAX_LANES, 512 << 10)
    # Explicit lanes still work, and keep one lane per producer unless asked.
    assert layout_for(8 * MiB, lanes=16)["lane_size"] == 512 << 10
    # A small max_record makes smaller lanes.
    assert layout_for(1 * MiB, max_record=1024)["lane_size"] == 4096


@pytest.mark.parametrize("size", [2**69, 2**64, (1 << 40) + 1])
def test_a_huge_size_is_a_clear_error_at_once(ring_name: str, size: int) -> None:
    with pytest.raises(ValueError, match="too large"):
        Ring.create(ring_name, size)
    with pytest.raises(ValueError, match="too large"):
        fastbuf.configure(ring=ring_name, ring_size=size, agent="external")


def test_a_bad_ring_size_variable_warns_and_uses_the_default(
    tmp_path: Path, ring_name: str
) -> None:
    code = "from emp_fastbuf.producer import api; api.emit('x'); print(api.ring().stats()['size'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(
            tmp_path, ring_name, EMP_FASTBUF_RING_SIZE=str(2**69), EMP_FASTBUF_AGENT="external"
        ),
    )
    Ring.unlink(ring_name)
    assert out.returncode == 0, out.stderr
    assert "EMP_FASTBUF_RING_SIZE" in out.stderr and "default" in out.stderr
    assert (
        int(out.stdout) == layout_for(DEFAULT_SIZE)["lanes"] * layout_for(DEFAULT_SIZE)["lane_size"]
    )


# ---- a small /dev/shm ---------------------------------------------------------------------

SMALL_SHM = r"""
import json, sqlite3, sys, time
import emp_fastbuf as fastbuf
from emp_fastbuf.producer import api
with fastbuf.context(job_id="job-c"):
    for i in range(100_000):
        fastbuf.log.info("step", seq=i, tag="c", loss=0.25, ok=True)
st = api.ring().stats()
print(json.dumps({"flushed": fastbuf.flush(120), "stats": fastbuf.stats(),
                  "segment": st["segment_size"], "lanes": st["lane_count"]}))
"""


def test_a_64_mb_dev_shm_gets_a_smaller_ring_and_one_warning_never_disabled_telemetry(
    tmp_path: Path, ring_name: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = worker_env(home, ring_name, EMP_FASTBUF_AGENT_IDLE_EXIT="1")
    if can_mount_tmpfs():
        # A container's /dev/shm: a 64 MB tmpfs in a mount namespace of its own. The worker,
        # and the agent it spawns, see only that.
        script = tmp_path / "worker.py"
        script.write_text(SMALL_SHM)
        mount = "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm"
        cmd = ["unshare", "-m", "sh", "-c", f"{mount} && exec {sys.executable} {script}"]
    else:  # the test hook: /dev/shm reports 64 MiB free
        env["EMP_FASTBUF_SHM_FREE"] = str(64 * MiB)
        cmd = [sys.executable, "-c", SMALL_SHM]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    warnings = [ln for ln in out.stderr.splitlines() if "/dev/shm has" in ln]
    assert len(warnings) == 1 and "--shm-size" in warnings[0], out.stderr
    assert result["segment"] <= 32 * MiB and result["lanes"] >= 64
    assert result["stats"]["disabled"] is False
    # The burst of 100,000 still fits and arrives.
    assert result["stats"]["dropped"] == 0 and result["flushed"] is True
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (home / "store.sqlite").exists() and sum(store_seqs(home, "c").values()) >= 100_000:
            break
        time.sleep(0.2)
    assert_all_once_or_more(store_seqs(home, "c"), 100_000)


def test_no_room_at_all_turns_telemetry_off_with_one_warning(
    tmp_path: Path, ring_name: str
) -> None:
    code = "import emp_fastbuf as f; f.emit('x'); print(f.stats()['disabled'], f.flush(0.1))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(
            tmp_path, ring_name, EMP_FASTBUF_SHM_FREE="100000", EMP_FASTBUF_AGENT="external"
        ),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]  # off, and flush() says so
    assert out.stderr.count("telemetry is off") == 1 and "--shm-size" in out.stderr


# ---- hundreds of processes ----------------------------------------------------------------

LAUNCHER = r"""
import os, sys
import emp_fastbuf as fastbuf
ring, count, wave, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
started = 0
while started < count:
    pids = []
    for _ in range(min(wave, count - started)):
        n = started
        started += 1
        pid = os.fork()
        if pid == 0:
            # A short-lived producer: configure, write, exit normally (exit handlers run).
            fastbuf.configure(ring=ring, worker_id=f"short-{n}", agent="external")
            for i in range(per):
                fastbuf.emit("tick", proc=n, seq=i)
            sys.exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
"""


def test_300_short_lived_producers_on_one_ring_none_dropped_for_lack_of_a_lane(
    ring_name: str,
) -> None:
    ring = Ring.create(ring_name, 16 * MiB)  # 64 lanes: 300 processes must reuse them
    assert ring.lanes == 64
    c = ring.consumer()
    got: Counter[int] = Counter()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            batch = c.read(4096)
            for rec in batch:
                got[len(rec)] += 1
            c.ack()
            if not batch:
                time.sleep(0.002)

    drainer = threading.Thread(target=drain)
    drainer.start()
    per = 50
    try:
        out = subprocess.run(
            [sys.executable, "-c", LAUNCHER, ring_name, "300", "40", str(per)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
        )
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 30
        while sum(got.values()) < 300 * per and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        drainer.join()
    st = ring.stats()
    assert st["dropped_no_lane"] == 0 and st["dropped"] == 0, st
    assert sum(got.values()) == 300 * per
    assert "dropped" not in out.stderr
    c.close()
    ring.close()


# ---- the block policy -------------------------------------------------------------------


@pytest.fixture
def tiny_ring(ring_name: str, monkeypatch: pytest.MonkeyPatch) -> Ring:
    """This process on a one-lane 4 KiB ring nobody drains, with the block policy."""
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    Ring.create(ring_name, 4096, lanes=1, max_record=1024).close()
    fastbuf.configure(service="block-svc", ring=ring_name, on_full="block:300")
    _codec.reset_counters()
    r = api.ring()
    assert r is not None and r.block_ns == 300_000_000
    yield r
    api.shutdown()
    api._state.block_ns = 0


def test_block_policy_waits_then_drops_and_other_threads_run_meanwhile(tiny_ring: Ring) -> None:
    ticks = 0
    stop = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=ticker)
    t.start()
    try:
        while fastbuf.stats()["dropped"] == 0:
            before = ticks
            fastbuf.emit("fill", payload="x" * 100)
            during = ticks - before
    finally:
        stop.set()
        t.join()
    # The emit that found no room waited (the GIL released: the other thread kept
    # counting), then dropped the record and counted it.
    assert fastbuf.stats()["dropped_by_reason"]["full"] == 1
    assert during > 1000
    assert fastbuf.flush(0.01) is False  # a drop since the previous flush


def test_block_policy_takes_the_record_when_room_appears(tiny_ring: Ring) -> None:
    c = tiny_ring.consumer()
    # Fill the lane until a write is dropped (at once: the drop policy for now).
    tiny_ring.block_ns = 0
    n = 0
    while fastbuf.stats()["dropped"] == 0:
        fastbuf.emit("fill", seq=n)
        n += 1
    got = [rec for rec in c.read(1000)]
    tiny_ring.block_ns = 300_000_000
    _codec.reset_counters()

    def free_room() -> None:
        time.sleep(0.05)
        c.ack()  # what was read is durable now: the producer may reuse the space

    t = threading.Thread(target=free_room)
    t.start()
    for k in range(5):  # the lane is full: the first waits for the ack, then all fit
        fastbuf.emit("after", seq=k)
    t.join()
    assert fastbuf.stats()["dropped"] == 0
    got = c.read(1000)
    c.ack()
    assert len(got) == 5
    c.close()


def test_on_full_values_are_checked(ring_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    for bad in ("block", "block:0", "block:-5", "block:abc", "wait:5", "block:100000"):
        with pytest.raises(ValueError, match="on_full must be"):
            fastbuf.configure(ring=ring_name, on_full=bad)
    with pytest.raises(TypeError):
        fastbuf.configure(ring=ring_name, on_full=5)  # type: ignore[arg-type]
    assert api.parse_on_full("block:2.5") == 2_500_000 and api.parse_on_full("drop") == 0


def test_a_bad_on_full_variable_warns_and_drops(tmp_path: Path, ring_name: str) -> None:
    code = "from emp_fastbuf.producer import api; api.emit('x'); print(api.ring().block_ns)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(
            tmp_path, ring_name, EMP_FASTBUF_ON_FULL="sometimes", EMP_FASTBUF_AGENT="external"
        ),
    )
    Ring.unlink(ring_name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0" and "EMP_FASTBUF_ON_FULL" in out.stderr


# ---- over capacity, visibly -----------------------------------------------------------------

OVERFLOW = r"""
import json, sys
import emp_fastbuf as fastbuf
fastbuf.configure(service="overflow-svc", worker_id="w-over", ring=sys.argv[1], agent="external")
first = fastbuf.flush(0.01)
for i in range(5000):
    fastbuf.emit("tick", seq=i)
st = fastbuf.stats()
second = fastbuf.flush(0.01)  # records were dropped since the previous flush
third = fastbuf.flush(0.01)   # none since: the drops were reported once (still unacked: False)
print(json.dumps({"stats": st, "flushes": [first, second, third]}))
"""


def test_drops_are_visible_in_stderr_status_flush_and_the_agents_metrics(
    tmp_path: Path, ring_name: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    Ring.create(ring_name, 8192, lanes=1, max_record=1024).close()  # room for ~100 records
    out = subprocess.run(
        [sys.executable, "-c", OVERFLOW, ring_name],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(home, ring_name),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    dropped = result["stats"]["dropped_by_reason"]["full"]
    assert dropped > 4000
    assert result["flushes"] == [True, False, False]
    # One line on stderr for the first drop, not one per record.
    lines = [ln for ln in out.stderr.splitlines() if "dropped" in ln]
    assert len(lines) == 1 and "fastbuf status" in lines[0], out.stderr
    with OTLPReceiver() as rx:
        agent = AgentProc(ring_name, home, "--endpoint", rx.url)
        agent.wait_ready()
        time.sleep(1.5)  # at least one status write after the first read
        status = subprocess.run(
            [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=worker_env(home, ring_name),
        )
        human = subprocess.run(
            [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name],
            capture_output=True,
            text=True,
            timeout=60,
            env={**worker_env(home, ring_name), "COLUMNS": "200"},
        )
        assert agent.stop() == 0, agent.output()
        producers = json.loads(status.stdout)["producers"]
        (over,) = [p for p in producers if p["dropped"]]
        assert over["dropped_full"] == dropped and over["service"] == "overflow-svc"
        assert over["worker_id"] == "w-over" and over["alive"] is False
        assert "dropped records" in human.stdout and "overflow-svc" in human.stdout
        points = {}
        for _res, metric in rx.metrics():
            if metric.name == "fastbuf.ring.dropped":
                for dp in metric.gauge.data_points:
                    points[attrs_dict(dp.attributes)["reason"]] = dp.as_int
        assert points == {"full": dropped, "no_lane": 0, "too_large": 0}


# ---- SIGKILL of the agent in the middle of a group commit --------------------------------


@pytest.mark.parametrize("destination", ["store", "otlp"])
def test_sigkill_of_the_agent_mid_group_commit_loses_nothing(
    tmp_path: Path, ring_name: str, destination: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    spool = home / "spool"
    rate, seconds = 50_000, 6.0
    total = int(rate * seconds)
    rx = OTLPReceiver() if destination == "otlp" else None
    if rx is not None:
        rx.up()
    args = ["--endpoint", rx.url] if rx is not None else []
    agent = AgentProc(ring_name, home, *args)
    agent.wait_ready()
    worker = start_worker(home, ring_name, "k", rate, seconds, EMP_FASTBUF_AGENT="external")
    kills, mid_commit = 0, 0
    try:
        while kills < 3 and worker.poll() is None:
            # Kill the moment a group commit is under way: its temporary file exists.
            deadline = time.monotonic() + 3
            seen = False
            while time.monotonic() < deadline and not seen:
                try:
                    seen = any(name.endswith(".tmp") for name in os.listdir(spool))
                except FileNotFoundError:
                    pass
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(timeout=30)
            agent.log.close()
            kills += 1
            mid_commit += seen
            agent = AgentProc(ring_name, home, *args)
            agent.wait_ready()
        result = finish(worker)
        ring = Ring.open(ring_name)  # while the agent holds it (its creator is dead)
        reread = ring.stats()["reread"]
        ring.close()
    finally:
        assert agent.stop() == 0, agent.output()
        if rx is not None:
            rx.down()
    assert kills == 3 and mid_commit >= 1
    assert result["stats"]["dropped"] == 0  # type: ignore[index]
    if rx is None:
        seqs = store_seqs(home, "k")
    else:
        seqs = Counter(
            int(attrs_dict(rec.attributes)["seq"])
            for _res, rec in rx.logs()
            if attrs_dict(rec.attributes).get("tag") == "k"
        )
    assert_all_once_or_more(seqs, total)
    # Records read but not yet acknowledged when an agent died are read again by the next
    # one, which the ring counts; only those can arrive twice.
    duplicates = sum(n - 1 for n in seqs.values())
    assert duplicates <= reread, (duplicates, reread)
