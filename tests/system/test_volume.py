"""Volume through the real agent at real rates: a paced worker process at 200,000 log
records/s, four at 50,000/s, a burst at full speed, a tight loop of 20 lanes' worth. Every
record must arrive, in the store (zero configuration, the auto-spawned agent) and at a
real OTLP/HTTP receiver (gzip), and the workers must count no drop. The rates are what the
workers offer; nothing here asserts how long anything took."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc
from support.volume import assert_all_once_or_more, finish, start_worker, store_seqs


def assert_no_drop(result: dict[str, object]) -> None:
    stats = result["stats"]
    assert isinstance(stats, dict)
    assert stats["dropped"] == 0, stats["dropped_by_reason"]
    assert result["flushed"] is True
    assert "dropped" not in str(result["stderr"])  # no drop warning either


def receiver_seqs(rx: OTLPReceiver) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {}
    for _res, rec in rx.logs():
        a = attrs_dict(rec.attributes)
        if "seq" in a:
            out.setdefault(str(a["tag"]), Counter())[int(a["seq"])] += 1
    return out


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
