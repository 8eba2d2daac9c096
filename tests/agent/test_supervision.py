"""The agent supervises itself: a full spool disk, a spool file whose delivery keeps
failing, a failing destination and a stalled loop never stop delivery silently. Real
agents, a real loopback receiver, a real small tmpfs for the spool where the machine
allows one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.agent.config import AgentConfig
from emp_fastbuf.agent.runner import Agent
from emp_fastbuf.records import LOG, LaneChunk, Record, Resource
from emp_fastbuf.records.reference import encode_record, encode_resource
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc
from support.volume import can_mount_tmpfs, finish, start_worker, store_seqs, worker_env


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a private mount namespace")
def test_a_full_spool_disk_keeps_records_in_the_ring_and_delivery_resumes(
    tmp_path: Path, ring_name: str
) -> None:
    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True, mode=0o700)
    fastbuf.Ring.create(ring_name, 64 << 20).close()
    with OTLPReceiver() as rx:
        rx.down()  # an outage: the spool fills its 256 KiB disk
        env = worker_env(home, ring_name)
        mount = f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {home / 'spool'}"
        agent_cmd = f"{sys.executable} -m emp_fastbuf agent --ring {ring_name} --endpoint {rx.url}"
        log = open(home / "agent-test.log", "wb")  # noqa: SIM115 - closed below
        agent = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f"{mount} && exec {agent_cmd}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            # 20k records/s for 5 s: batches of about 1 s (about 100 KB compressed, each
            # fits the disk), all of them together several times the disk.
            status_path = home / f"status-{ring_name}.json"
            deadline = time.monotonic() + 60
            while not status_path.exists() and agent.poll() is None:
                assert time.monotonic() < deadline, "the agent did not start"
                time.sleep(0.05)
            worker = start_worker(home, ring_name, "d", 20_000, 5.0, EMP_FASTBUF_AGENT="external")
            total = 100_000
            deadline = time.monotonic() + 60
            health: dict[str, Any] = {}
            while time.monotonic() < deadline:
                try:
                    health = json.loads(status_path.read_text()).get("health") or {}
                except (OSError, ValueError):
                    health = {}
                if health.get("spool_error"):
                    break
                time.sleep(0.2)
            assert health.get("spool_error"), "the full disk was not reported"
            assert "No space left" in health["spool_error"]["message"]
            assert agent.poll() is None  # still up
            status = subprocess.run(
                [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert status.returncode == 3 and "spool cannot be written" in status.stdout
            ring = fastbuf.Ring.open(ring_name)
            assert ring.stats()["in_flight"] > 0  # the rest waits in the ring, unacknowledged
            ring.close()
            rx.up()  # the outage ends: delivery frees the disk, the agent resumes by itself

            def all_arrived(r: OTLPReceiver) -> bool:
                seen = {attrs_dict(rec.attributes).get("seq") for _res, rec in r.logs()}
                return len(seen - {None}) >= total

            assert rx.wait_for(all_arrived, 120), "not everything arrived after the outage"
            result = finish(worker)
            assert result["stats"]["dropped"] == 0  # type: ignore[index]
        finally:
            agent.terminate()
            code = agent.wait(timeout=60)
            log.close()
        assert code == 0, (home / "agent-test.log").read_text()
        text = (home / "agent-test.log").read_text()
        assert "cannot write the spool" in text and "writable again" in text
        assert "Traceback" not in text


# ---- one spool file, one destination ------------------------------------------------------


def _agent(home: Path, ring_name: str) -> Agent:
    env = {"EMP_FASTBUF_HOME": str(home)}
    return Agent(AgentConfig.from_env(env, {}), ring_name)


def _batch(tag: str, n: int) -> list[LaneChunk]:
    meta = encode_resource(Resource(attributes={"service.name": "sup", "emp.worker_id": tag}))
    recs = [
        encode_record(
            Record(
                kind=LOG,
                time_unix_nano=time.time_ns(),
                body="step",
                severity_number=9,
                context={"job_id": f"job-{tag}"},
                attributes={"seq": i},
            )
        )
        for i in range(n)
    ]
    return [LaneChunk(meta, recs)]


def test_a_spool_file_that_keeps_failing_is_quarantined_and_the_rest_goes_out(
    tmp_path: Path, ring_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(tmp_path / "home", ring_name)
    ids = [agent.spool.write(_batch(tag, 10)) for tag in ("bad", "a", "b")]
    real = agent._deliver

    # A fault that belongs to the first file only (the poison of one batch).
    def deliver(file_id: str) -> bool:
        if file_id == ids[0]:
            raise RuntimeError("this batch cannot be delivered")
        return real(file_id)

    monkeypatch.setattr(agent, "_deliver", deliver)
    assert agent._deliver_pending(None) is True  # the others went out
    for _ in range(2):
        agent.spool.write(_batch("more", 1))
        agent._deliver_pending(None)
    assert ids[0] not in agent.spool.pending()
    assert agent.spool.stats()["quarantined_files"] == 1
    assert agent.health()["agent_errors"] == 3 if hasattr(agent, "health") else True
    assert agent.agent_errors == 3
    assert agent.counters.store_records == 22
    for sink in agent.sinks:
        sink.close()


def test_a_failing_destination_never_costs_a_file(
    tmp_path: Path, ring_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(tmp_path / "home", ring_name)
    ids = [agent.spool.write(_batch(tag, 5)) for tag in ("a", "b", "c")]

    def deliver(file_id: str) -> bool:
        raise OSError("the store's disk went away")  # every file: the destination

    monkeypatch.setattr(agent, "_deliver", deliver)
    for _ in range(5):
        with pytest.raises(OSError):
            agent._deliver_pending(None)
    assert agent.spool.pending() == ids  # nothing quarantined, order kept
    assert agent.spool.stats()["quarantined_files"] == 0
    for sink in agent.sinks:
        sink.close()


# ---- sinks: one that is down never holds another back ------------------------------------


def _copying_agent(home: Path, ring_name: str) -> tuple[Agent, Any, Any]:
    """An agent that exports (to an address nobody is asked: export is replaced) and
    keeps a local copy; returns it with its store and OTLP sinks."""
    env = {"EMP_FASTBUF_HOME": str(home)}
    config = AgentConfig.from_env(env, {"endpoint": "http://127.0.0.1:9", "local_copy": True})
    agent = Agent(config, ring_name)
    sinks = {sink.name: sink for sink in agent.sinks}
    assert [sink.name for sink in agent.sinks] == ["store", "export"]
    return agent, sinks["store"], sinks["export"]


def test_an_endpoint_that_is_down_never_holds_the_store_back(
    tmp_path: Path, ring_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emp_fastbuf.agent.otlp.http import ExportResult

    agent, _store, otlp = _copying_agent(tmp_path / "home", ring_name)
    ids = [agent.spool.write(_batch(tag, 4)) for tag in ("a", "b", "c")]
    sent: list[str] = []
    up = False

    def export(signal: str, payload: bytes, dataset: str | None = None) -> ExportResult:
        sent.append(signal)
        return ExportResult("ok") if up else ExportResult("retry_later", message="down")

    monkeypatch.setattr(otlp.exporter, "export", export)
    assert agent._deliver_pending(None) is True
    assert agent.counters.store_records == 12  # every file reached the store
    assert sent == ["logs"]  # the endpoint was asked once, then sat the round out
    assert agent.spool.pending() == ids  # each stays for the export
    up = True
    agent._deliver_pending(None)
    assert agent.spool.pending() == []
    assert sent == ["logs"] * 4
    assert agent.counters.store_records == 12  # stored once
    for sink in agent.sinks:
        sink.close()


def test_a_store_that_is_down_never_holds_the_export_back_across_rounds(
    tmp_path: Path, ring_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emp_fastbuf.agent.otlp.http import ExportResult

    agent, store, otlp = _copying_agent(tmp_path / "home", ring_name)
    sent: list[bytes] = []

    def export(signal: str, payload: bytes, dataset: str | None = None) -> ExportResult:
        sent.append(payload)
        return ExportResult("ok")

    monkeypatch.setattr(otlp.exporter, "export", export)
    store_down = True
    monkeypatch.setattr(store, "retry_in", lambda: 5.0 if store_down else 0.0)
    read: list[str] = []
    real_read = agent.spool.read

    def spool_read(file_id: str) -> list[LaneChunk]:
        read.append(file_id)
        return real_read(file_id)

    monkeypatch.setattr(agent.spool, "read", spool_read)
    first = [agent.spool.write(_batch(tag, 3)) for tag in ("a", "b")]
    assert agent._deliver_pending(None) is True
    assert len(sent) == 2 and read == first
    # A later file goes out although the older ones still wait for the store, and those
    # are not even read again while the store backs off.
    later = agent.spool.write(_batch("c", 3))
    assert agent._deliver_pending(None) is True
    assert len(sent) == 3 and read == [*first, later]
    assert agent.spool.pending() == [*first, later]
    store_down = False
    agent._deliver_pending(None)
    assert agent.spool.pending() == []
    assert agent.counters.store_records == 9 and len(sent) == 3
    for sink in agent.sinks:
        sink.close()


def test_a_sink_can_be_driven_without_an_agent(tmp_path: Path) -> None:
    """What bench does: a batch read from the spool, handed to the store sink."""
    from emp_fastbuf.agent.batch import Batch
    from emp_fastbuf.agent.sinks.store import StoreSink
    from emp_fastbuf.agent.spool import Spool
    from emp_fastbuf.store import Store

    sink = StoreSink(Store(tmp_path / "store.sqlite"))
    spool = Spool(tmp_path / "spool", destinations=sink.destinations)
    chunks = _batch("d", 5)
    chunks[0].records.append(chunks[0].records[0][:-3])  # one corrupt record
    file_id = spool.write(chunks)
    assert sink.retry_in() == 0.0
    batch = Batch.read(spool, file_id)
    delivery = sink.deliver(batch)
    assert (delivery.done, delivery.taken, delivery.later) == (("store",), True, False)
    assert (delivery.records, delivery.corrupt) == (5, 1)
    for destination in delivery.done:
        spool.mark_done(file_id, destination)
    assert spool.pending() == []
    assert sink.tick(stopping=True) == [] and sink.status()["write_failures"] == 0
    sink.close()


# ---- liveness -------------------------------------------------------------------------------


def _write_status(home: Path, ring: str, **health: Any) -> None:
    now = time.time_ns()
    status = {
        "agent": {"pid": os.getpid(), "ring": ring, "updated_ns": now - 40 * 10**9},
        "health": {
            "loops": {
                "drain": {"last_beat_ns": now - 40 * 10**9},
                "delivery": {"last_beat_ns": now - 40 * 10**9},
            },
            "agent_errors": 2,
            "problems": [],
            **health,
        },
    }
    (home / f"status-{ring}.json").write_text(json.dumps(status))


def test_status_reports_a_stalled_loop_as_unhealthy_and_exits_3(
    tmp_path: Path, ring_name: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    # A live agent (this process's pid) whose drain loop last came round 40 s ago.
    _write_status(home, ring_name)
    env = worker_env(home, ring_name)
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "200"},
    )
    assert out.returncode == 3, out.stderr
    assert "unhealthy" in out.stdout and "drain loop is stalled" in out.stdout
    assert "drain stalled, last round" in out.stdout and "delivery last round" in out.stdout
    assert "2 caught at the loops" in out.stdout
    js = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert js.returncode == 3
    health = json.loads(js.stdout)["health"]
    assert health["healthy"] is False and health["loops"]["drain"]["stalled"] is True
    assert health["loops"]["delivery"]["stalled"] is False  # 40 s is within its 300 s


def test_a_healthy_agent_reports_its_loops(tmp_path: Path, ring_name: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    agent = AgentProc(ring_name, home)
    agent.wait_ready()
    try:
        result = finish(start_worker(home, ring_name, "h", 0, 0, 1000))
        assert result["flushed"] is True
        out = subprocess.run(
            [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring_name, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=worker_env(home, ring_name),
        )
    finally:
        assert agent.stop() == 0
    assert out.returncode == 0, out.stdout
    health = json.loads(out.stdout)["health"]
    assert health["healthy"] is True and health["agent_errors"] == 0
    assert set(health["loops"]) == {"drain", "delivery"}
    assert Counter(h["stalled"] for h in health["loops"].values()) == Counter({False: 2})


# ---- planted symlinks, the agent's ring size ----------------------------------------------


def test_planted_symlinks_never_overwrite_their_targets(tmp_path: Path, ring_name: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # The old temporary name of the status file, and the agent's log.
    (home / f"status-{ring_name}.tmp").symlink_to(victim)
    (home / "agent.log").symlink_to(victim)
    code = "import emp_fastbuf as f; f.emit('x'); print(f.flush(60))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=worker_env(home, ring_name, EMP_FASTBUF_AGENT_IDLE_EXIT="1"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"  # the spawned agent took the record
    assert "agent.log was a symlink" in out.stderr
    deadline = time.monotonic() + 30
    while not (home / f"status-{ring_name}.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim.read_text() == "precious"
    assert not (home / "agent.log").is_symlink()
    assert (home / f"status-{ring_name}.json").stat().st_mode & 0o777 == 0o600


def test_the_agent_creates_its_ring_at_emp_fastbuf_ring_size(
    tmp_path: Path, ring_name: str
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    agent = AgentProc(ring_name, home, env={"EMP_FASTBUF_RING_SIZE": str(8 << 20)})
    agent.wait_ready()
    try:
        ring = fastbuf.Ring.open(ring_name)
        size = ring.stats()["size"]
        ring.close()
    finally:
        assert agent.stop() == 0
    assert size == 8 << 20


# Holds the store's write lock until told on stdin (at most 60 s).
HOLD_WRITE_LOCK = r"""
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
select.select([sys.stdin], [], [], 60)
conn.execute("ROLLBACK")
"""


def test_a_locked_store_never_holds_the_export_back(tmp_path: Path, ring_name: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with OTLPReceiver() as rx:
        agent = AgentProc(ring_name, home, "--endpoint", rx.url, "--local-copy")
        agent.wait_ready()
        try:
            locker = subprocess.Popen(
                [sys.executable, "-c", HOLD_WRITE_LOCK, str(home / "store.sqlite")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            # While another process holds the store's write lock, the endpoint gets it all.
            result = finish(start_worker(home, ring_name, "x", 0, 0, 2000))
            assert result["flushed"] is True

            def exported(r: OTLPReceiver) -> bool:
                seen = {attrs_dict(rec.attributes).get("seq") for _res, rec in r.logs()}
                return len(seen - {None}) == 2000

            assert rx.wait_for(exported, 50), "the export waited for the locked store"
            assert locker.poll() is None  # the lock was still held meanwhile
            assert locker.stdin is not None
            locker.stdin.write("release\n")
            locker.stdin.close()
            assert locker.wait(timeout=60) == 0
            locker.stdout.close()
            # Then the store gets every record too, from the spool.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if sum(store_seqs(home, "x").values()) >= 2000:
                        break
                except sqlite3.OperationalError:
                    pass
                time.sleep(0.2)
            assert set(store_seqs(home, "x")) == set(range(2000))
        finally:
            assert agent.stop() == 0, agent.output()


@pytest.mark.stress
def test_sigterm_at_any_moment_stops_the_agent(tmp_path: Path, ring_name: str) -> None:
    """The signal handler takes no lock: a SIGTERM that lands while the main thread is
    inside an Event's wait (its lock held) once deadlocked the agent in Event.set()."""
    import random
    import signal

    rng = random.Random()
    for k in range(12):
        home = tmp_path / f"home-{k}"
        home.mkdir(mode=0o700)
        agent = AgentProc(ring_name, home)
        agent.wait_ready()
        time.sleep(rng.uniform(0, 0.3))
        agent.proc.send_signal(signal.SIGTERM)
        try:
            code = agent.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
            code = -1
        agent.log.close()
        assert code == 0, f"stop {k} did not finish: {agent.output()[-3000:]}"
