"""Volume through the real agent at real rates: a paced worker process at 200,000 log
records/s, four at 50,000/s, a burst at full speed, a tight loop of 20 lanes' worth. Every
record must arrive, in the store (zero configuration, the auto-spawned agent) and at a
real OTLP/HTTP receiver (gzip), and the workers must count no drop. The rates are what the
workers offer; nothing here asserts how long anything took."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from test_agent import AgentProc

# A worker: `rate` records/s for `seconds` (rate 0: as fast as the API allows), then
# flush; prints its stats as JSON. The records: a log with 4 attributes in a job context.
WORKER = r"""
import json, sys, time
import emp_fastbuf as fastbuf
tag, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
total = int(sys.argv[4]) if len(sys.argv) > 4 else int(rate * seconds)
log = fastbuf.log
i = 0
with fastbuf.context(job_id="job-" + tag):
    start = time.perf_counter()
    while i < total:
        due = total if rate == 0 else min(total, int((time.perf_counter() - start) * rate) + 64)
        while i < due:
            log.info("step", seq=i, tag=tag, loss=0.25, ok=True)
            i += 1
        if i < total:
            time.sleep(0.0002)
    elapsed = time.perf_counter() - start
flushed = fastbuf.flush(timeout=120)
print(json.dumps({"flushed": flushed, "offered_per_s": total / elapsed, "stats": fastbuf.stats()}))
"""


def can_mount_tmpfs() -> bool:
    """Whether this machine lets a test mount a tmpfs in a mount namespace of its own (a
    small /dev/shm or spool disk); root with ``unshare``."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def _env(home: Path, ring: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASH0_", "EMP_"))}
    env.update(EMP_FASTBUF_HOME=str(home), EMP_FASTBUF_RING=ring, EMP_MACHINE_ID="m-vol")
    env.update(extra)
    return env


def start_worker(
    home: Path,
    ring: str,
    tag: str,
    rate: float,
    seconds: float,
    total: int | None = None,
    **env: str,
) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", WORKER, tag, str(rate), str(seconds)]
    if total is not None:
        args.append(str(total))
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home, ring, **env)
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["stderr"] = err
    return result


def assert_no_drop(result: dict[str, object]) -> None:
    stats = result["stats"]
    assert isinstance(stats, dict)
    assert stats["dropped"] == 0, stats["dropped_by_reason"]
    assert result["flushed"] is True
    assert "dropped" not in str(result["stderr"])  # no drop warning either


def store_seqs(home: Path, tag: str) -> Counter[int]:
    db = sqlite3.connect(f"file:{home / 'store.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT json_extract(attributes, '$.seq') FROM records WHERE job_id = ?",
            (f"job-{tag}",),
        ).fetchall()
    finally:
        db.close()
    return Counter(int(r[0]) for r in rows)


def receiver_seqs(rx: OTLPReceiver) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {}
    for _res, rec in rx.logs():
        a = attrs_dict(rec.attributes)
        if "seq" in a:
            out.setdefault(str(a["tag"]), Counter())[int(a["seq"])] += 1
    return out


def assert_all_once_or_more(seqs: Counter[int], total: int) -> None:
    missing = [i for i in range(total) if seqs[i] == 0]
    assert not missing, f"{len(missing)} of {total} missing, first {missing[:5]}"
    assert set(seqs) == set(range(total))


def wait_spawned_agent_gone(home: Path, ring: str, timeout: float = 120) -> None:
    """The spawned agent exits by itself once idle (1 s here) with everything spooled and
    delivered; its status file names its pid."""
    status = home / f"status-{ring}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = json.loads(status.read_text())["agent"]["pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
            continue
        if not _alive(pid):
            return
        time.sleep(0.1)
    raise AssertionError("the spawned agent did not exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


def test_200k_per_second_for_5_s_reaches_the_store_with_zero_configuration(
    home: Path, ring_name: str
) -> None:
    # Zero configuration: the first emit creates the default ring and spawns the agent.
    rate, seconds = 200_000, 5.0
    worker = start_worker(home, ring_name, "z", rate, seconds, EMP_FASTBUF_AGENT_IDLE_EXIT="1")
    result = finish(worker)
    assert_no_drop(result)
    total = int(rate * seconds)
    wait_spawned_agent_gone(home, ring_name)
    assert_all_once_or_more(store_seqs(home, "z"), total)


def test_200k_per_second_for_5_s_reaches_an_otlp_receiver_over_gzip(
    home: Path, ring_name: str
) -> None:
    rate, seconds = 200_000, 5.0
    with OTLPReceiver() as rx:
        agent = AgentProc(ring_name, home, "--endpoint", rx.url, "--compression", "gzip")
        agent.wait_ready()
        try:
            result = finish(start_worker(home, ring_name, "g", rate, seconds))
        finally:
            assert agent.stop() == 0, agent.output()
        assert_no_drop(result)
        assert all(h.get("content-encoding") == "gzip" for _p, h, _m in rx.requests)
        assert_all_once_or_more(receiver_seqs(rx).get("g", Counter()), int(rate * seconds))


def test_four_producers_at_50k_per_second_each_lose_nothing(home: Path, ring_name: str) -> None:
    rate, seconds = 50_000, 4.0
    with OTLPReceiver() as rx:
        agent = AgentProc(ring_name, home, "--endpoint", rx.url)
        agent.wait_ready()
        try:
            workers = [start_worker(home, ring_name, f"p{k}", rate, seconds) for k in range(4)]
            results = [finish(w) for w in workers]
        finally:
            assert agent.stop() == 0, agent.output()
        got = receiver_seqs(rx)
        for k, result in enumerate(results):
            assert_no_drop(result)
            assert_all_once_or_more(got.get(f"p{k}", Counter()), int(rate * seconds))


def test_a_burst_of_100k_at_full_speed_arrives_with_the_default_ring(
    home: Path, ring_name: str
) -> None:
    # As fast as the API allows, from a cold start: the agent is spawned by the first
    # emit and only starts draining while (or after) the burst is written.
    result = finish(
        start_worker(home, ring_name, "b", 0, 0, 100_000, EMP_FASTBUF_AGENT_IDLE_EXIT="1")
    )
    assert_no_drop(result)
    wait_spawned_agent_gone(home, ring_name)
    assert_all_once_or_more(store_seqs(home, "b"), 100_000)


def test_a_tight_loop_of_20_lanes_worth_is_delivered_by_the_default_agent(
    home: Path, ring_name: str
) -> None:
    agent = AgentProc(ring_name, home)  # the default destination: the store
    agent.wait_ready()
    ring = fastbuf.Ring.open(ring_name)
    lane_size = ring.stats()["lane_size"]
    ring.close()
    # One record takes about 150 bytes in a lane.
    total = 20 * lane_size // 150
    try:
        result = finish(start_worker(home, ring_name, "t", 0, 0, total))
    finally:
        assert agent.stop() == 0, agent.output()
    assert_no_drop(result)
    assert_all_once_or_more(store_seqs(home, "t"), total)
