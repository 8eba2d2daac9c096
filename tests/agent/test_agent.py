"""The agent end to end: real worker processes write into a real ring, a real agent
process drains it, and a real OTLP/HTTP receiver on 127.0.0.1 decodes what arrives with
the official protobuf classes. Faults are real too: the receiver goes down, throttles,
rejects; processes are SIGKILLed; spool files are corrupted by hand."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.ring._ring import process_alive
from emp_fastbuf.testing.receiver import OTLPReceiver, Response, attrs_dict
from support.agent import WORKER, AgentProc, run_worker, seqs

TOKEN = "auth_s3cr3t-token-value-0123456789"


@pytest.fixture
def ring(agent_ring: str) -> str:
    return agent_ring


def test_every_record_arrives_with_ids_attributes_resource_and_headers(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    trace_id = run_worker(ring, 50, "w1")
    agent = AgentProc(
        ring,
        env_clean,
        "--endpoint",
        receiver.url,
        env={"DASH0_AUTH_TOKEN": TOKEN, "DASH0_DATASET": "ds-1"},
    )
    try:
        assert receiver.wait_for(lambda r: len(seqs(r)) == 50 and len(r.spans()) == 1, 30)
        assert receiver.wait_for(
            lambda r: any(m.name == "jobs.completed" for _a, m in r.metrics()), 30
        )
    finally:
        assert agent.stop() == 0
    logs = receiver.logs()
    step = [(res, rec) for res, rec in logs if rec.body.string_value == "step"]
    assert len(step) == 50
    res, rec = step[0]
    assert res["service.name"] == "worker-svc"
    assert res["emp.machine_id"] == "m-1" and res["emp.worker_id"] == "w1"
    assert "service.instance.id" in res and "host.name" in res and "process.pid" in res
    a = attrs_dict(rec.attributes)
    assert a["emp.job_id"] == "job-w1" and a["tag"] == "w1"
    assert rec.severity_number == 9 and rec.severity_text == "INFO"
    assert rec.trace_id.hex() == trace_id and len(rec.span_id) == 8
    assert abs(rec.time_unix_nano - time.time_ns()) < 600 * 10**9
    events = [rec for _res, rec in logs if rec.event_name == "job.completed"]
    assert len(events) == 1
    ((_sres, span),) = receiver.spans()
    assert span.name == "job" and span.trace_id.hex() == trace_id
    assert span.end_time_unix_nano >= span.start_time_unix_nano
    assert attrs_dict(span.attributes)["emp.job_id"] == "job-w1"
    metric = next(m for _a, m in receiver.metrics() if m.name == "jobs.completed")
    assert metric.sum.is_monotonic and metric.sum.data_points[0].as_int == 1
    for path, headers, _req in receiver.requests:
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["dash0-dataset"] == "ds-1"
        assert headers["content-encoding"] == "gzip"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["user-agent"].startswith("emp-fastbuf/")
        assert path in ("/v1/logs", "/v1/traces", "/v1/metrics")
    # The token never shows in the agent's log or in `status`.
    assert TOKEN not in agent.output()
    status = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "status", "--json", "--ring", ring],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean)},
        timeout=60,
    )
    # The agent has stopped: status exits 3 and shows its last status.
    assert status.returncode == 3, status.stderr
    assert TOKEN not in status.stdout + status.stderr
    st = json.loads(status.stdout)
    assert st["running"] is False
    assert st["drained"]["records"] >= 53
    assert st["export"]["requests"] >= 3


def test_zstd_compression(env_clean: Path, receiver: OTLPReceiver, ring: str) -> None:
    run_worker(ring, 20, "z")
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url, "--compression", "zstd")
    try:
        assert receiver.wait_for(lambda r: len(seqs(r)) == 20, 30)
    finally:
        assert agent.stop() == 0
    assert all(h["content-encoding"] == "zstd" for _p, h, _r in receiver.requests)


def test_sigterm_drains_and_delivers_everything(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    time.sleep(1.0)
    run_worker(ring, 300, "t")
    assert agent.stop() == 0  # right away: the final drain and delivery happen on the way out
    assert seqs(receiver, "t") == Counter(range(300))


def test_the_final_drain_is_delivered_before_the_agent_exits(env_clean: Path, ring: str) -> None:
    """SIGTERM right after a worker wrote: the records the final drain spools (the worker's
    and the agent's last machine metrics) reach the store before the agent exits, though
    the receivers take a while to close first; no spool file waits for the next agent."""
    listen = {
        "EMP_FASTBUF_OTLP_LISTEN": "127.0.0.1:0",
        "EMP_FASTBUF_OTLP_GRPC_LISTEN": "127.0.0.1:0",
    }
    agent = AgentProc(ring, env_clean, env=listen)
    agent.wait_ready()
    run_worker(ring, 200, "F")
    assert agent.stop() == 0
    status = json.loads(agent.status_path.read_text())
    assert status["spool"]["files"] == 0, status["spool"]
    assert list((env_clean / "spool").glob("*.spool")) == []
    db = sqlite3.connect(f"file:{env_clean / 'store.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT json_extract(attributes, '$.seq') FROM records WHERE job_id = 'job-F'"
            " AND json_extract(attributes, '$.seq') IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    assert Counter(int(r[0]) for r in rows) == Counter(range(200))


def test_receiver_down_then_up_loses_nothing(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.down()
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        run_worker(ring, 200, "d")
        time.sleep(5.0)
        assert seqs(receiver) == Counter()
        receiver.up()
        assert receiver.wait_for(lambda r: len(seqs(r, "d")) == 200, 60)
    finally:
        assert agent.stop() == 0
    assert seqs(receiver, "d") == Counter(range(200))  # each exactly once


def test_503_with_retry_after_is_honoured(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.script(Response(503, headers={"Retry-After": "2"}))
    run_worker(ring, 10, "r")
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "r")) == 10, 30)
    finally:
        assert agent.stop() == 0
    times = receiver.attempt_times("/v1/logs")
    assert len(times) >= 2 and times[1] - times[0] >= 2.0
    assert seqs(receiver, "r") == Counter(range(10))


def test_bursts_of_429_then_delivered_once(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.script(*[Response(429) for _ in range(4)])
    run_worker(ring, 30, "b")
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "b")) == 30, 60)
    finally:
        assert agent.stop() == 0
    assert seqs(receiver, "b") == Counter(range(30))


def test_400_goes_to_dead_letter_and_is_not_retried(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.script(Response(400, body=b"bad request body"))
    run_worker(ring, 5, "x")
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        dead = env_clean / "dead-letter"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(dead.glob("*.json")):
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        assert agent.stop() == 0
    sidecars = list((env_clean / "dead-letter").glob("*.json"))
    assert len(sidecars) == 1
    meta = json.loads(sidecars[0].read_text())
    assert meta["status"] == 400 and "bad request body" in json.dumps(meta)
    assert oct(sidecars[0].stat().st_mode & 0o777) == "0o600"
    log_attempts = [a for a in receiver.attempts if a.path == "/v1/logs"]
    assert len(log_attempts) == 1  # never retried


def test_receiver_slower_than_timeout_is_retried(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.script(Response(200, delay_s=3.0))
    run_worker(ring, 10, "s")
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url, "--timeout", "1000")
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "s")) == 10, 60)
    finally:
        assert agent.stop() == 0
    # The slow answer may have been processed too: a duplicate there is at-least-once.
    assert set(seqs(receiver, "s")) == set(range(10))


def test_agent_sigkilled_mid_export_and_restarted(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.down()
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    run_worker(ring, 500, "k")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((env_clean / "spool").glob("*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    receiver.up()
    agent2 = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        assert receiver.wait_for(lambda r: set(seqs(r, "k")) == set(range(500)), 60)
    finally:
        assert agent2.stop() == 0
    got = seqs(receiver, "k")
    assert set(got) == set(range(500))
    dups = sum(got.values()) - 500
    assert dups >= 0  # duplicates only because the agent crashed (at-least-once)


@pytest.mark.stress
def test_producer_sigkilled_mid_stream_what_it_wrote_is_delivered(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, ring, "100000", "p", "0.0005"],
            env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
            stdout=subprocess.DEVNULL,
        )
        assert receiver.wait_for(lambda r: len(seqs(r, "p")) > 50, 60)
        proc.kill()
        proc.wait()
        ring_obj = fastbuf.Ring.open(ring)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = ring_obj.stats()
                if st["in_flight"] == 0:
                    break
                time.sleep(0.1)
            accepted = st["accepted"]
        finally:
            ring_obj.close()
        # Everything the killed worker completed (the log records of the ring, minus
        # nothing: its span never ended) reaches the receiver, each once.
        assert receiver.wait_for(lambda r: sum(seqs(r, "p").values()) == accepted, 60)
    finally:
        assert agent.stop() == 0
    got = seqs(receiver, "p")
    assert set(got) == set(range(len(got)))  # a prefix, no gaps
    assert max(got.values()) == 1


def test_corrupt_spool_file_is_quarantined_and_the_rest_goes_out(
    env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    receiver.down()
    agent = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    run_worker(ring, 40, "c1")
    time.sleep(2.5)
    run_worker(ring, 40, "c2")
    time.sleep(2.5)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    files = sorted(p for p in (env_clean / "spool").iterdir() if not p.name.endswith(".done"))
    data_files = [p for p in files if "." not in p.name or p.suffix == ".spool"]
    assert len(data_files) >= 2, files
    victim = data_files[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    receiver.up()
    agent2 = AgentProc(ring, env_clean, "--endpoint", receiver.url)
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "c1")) + len(seqs(r, "c2")) > 0, 30)
        time.sleep(2.0)
    finally:
        assert agent2.stop() == 0
    quarantined = list((env_clean / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert "quarantine" in agent2.output()
    # The other files still went out.
    assert len(seqs(receiver, "c1")) + len(seqs(receiver, "c2")) > 0


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--endpoint", "not a url"], {}, "url"),
        (["--endpoint", "ftp://example.com"], {}, "http"),
        (["--headers", "novalue"], {}, "header"),
        (["--endpoint", "http://example.com:4318"], {"DASH0_AUTH_TOKEN": TOKEN}, "http"),
        ([], {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "compression"),
        ([], {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "timeout"),
    ],
)
def test_bad_configuration_exits_2_with_a_clear_error(
    env_clean: Path, ring: str, args: list[str], env: dict[str, str], needle: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean), **env},
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr.lower()
    assert TOKEN not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1


def test_unknown_compression_flag_is_a_usage_error(env_clean: Path, ring: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring, "--compression", "lz5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2


def test_local_store_without_endpoint(env_clean: Path, ring: str) -> None:
    trace_id = run_worker(ring, 25, "L")
    agent = AgentProc(ring, env_clean)
    time.sleep(2.0)
    assert agent.stop() == 0
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", "job-L", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    steps = [r for r in lines if r["kind"] == "log"]
    assert sorted(r["attributes"]["seq"] for r in steps) == list(range(25))
    assert {r["trace_id"] for r in steps} == {trace_id}


def test_zero_config_spawns_an_agent_that_delivers_and_exits(
    env_clean: Path, ring_name: str
) -> None:
    code = f"""
import emp_fastbuf as fastbuf
fastbuf.configure(ring={ring_name!r}, service="auto")
with fastbuf.context(job_id="job-auto"):
    for i in range(20):
        fastbuf.log.info("auto", seq=i)
assert fastbuf.flush(timeout=30), "the spawned agent did not take the records"
"""
    env = {
        **os.environ,
        "EMP_FASTBUF_HOME": str(env_clean),
        "EMP_FASTBUF_AGENT": "spawn",
        "EMP_FASTBUF_AGENT_IDLE_EXIT": "2",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=90
    )
    assert out.returncode == 0, out.stderr
    status_path = env_clean / f"status-{ring_name}.json"
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline:
        if status_path.exists():
            pid = json.loads(status_path.read_text())["agent"]["pid"]
            if not process_alive(pid):
                break
        time.sleep(0.2)
    assert pid is not None and not process_alive(pid), "agent did not exit"
    q = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", "job-auto", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean)},
        timeout=60,
    )
    assert q.returncode == 0, q.stderr
    assert len(q.stdout.splitlines()) == 20
