"""Redaction end to end: real producer processes put secrets into attributes (of logs,
events, spans, metrics and the resource), URLs and log bodies; one real agent exports to
a real OTLP receiver on 127.0.0.1 and keeps a local copy in its store. No secret reaches
the receiver's requests or the store, the rest of every record arrives, and ``fastbuf
status`` counts what was replaced. ``EMP_FASTBUF_REDACT`` changes the rules (``off``
lets the secrets through: the checks can fail), and a bad value stops the agent at start
(exit 2)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf.agent.redact import MARKER
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc, fastbuf_cli, run_script, seqs

pytestmark = pytest.mark.slow

N = 3000  # log records per producer: a real batch, several requests
SECRET = "S3CR3T"  # in every secret value, never in anything else

# A producer: ``n`` logs, each with a secret-keyed attribute, a URL with credentials and an
# Authorization header in its body; an event and a span with secret-keyed attributes; a
# counter with one; and its resource (OTEL_RESOURCE_ATTRIBUTES) holds one.
WORKER = r"""
import sys
import emp_fastbuf as fastbuf
ring, n, tag, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fastbuf.configure(service="redact-svc", worker_id=tag, ring=ring, agent="external")
with fastbuf.context(job_id="job-" + tag):
    with fastbuf.span("job", tag=tag, token=f"{secret}-span", session_id=f"{secret}-sess",
                      card_pin=f"{secret}-pin", token_count=7):
        for i in range(n):
            fastbuf.log.info(
                f"calling the API with Authorization: Bearer {secret}-hdr-{i}",
                seq=i, tag=tag, api_key=f"{secret}-key-{i}",
                dsn=f"postgres://bob:{secret}-pw-{i}@db.internal:5432/jobs",
            )
        fastbuf.emit("job.done", tag=tag, cookie=f"{secret}-cookie")
        fastbuf.metrics.counter("calls").inc(1, tag=tag, secret=f"{secret}-metric")
"""


def run_producer(ring: str, n: int, tag: str) -> None:
    resource = f"db.password={SECRET}-resource,team=a"
    run_script(WORKER, ring, str(n), tag, SECRET, env={"OTEL_RESOURCE_ATTRIBUTES": resource})


def wire(rx: OTLPReceiver) -> bytes:
    """Every request the receiver accepted, as protobuf bytes."""
    return b"".join(request.SerializeToString() for _path, _headers, request in rx.requests)


def store_dump(home: Path) -> str:
    """Every row of the agent's store, as SQL text."""
    db = sqlite3.connect(f"file:{home / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def status_json(agent: AgentProc) -> dict[str, Any]:
    try:
        return dict(json.loads(agent.status_path.read_text()))
    except (OSError, ValueError):
        return {}


def run_agent(home: Path, ring: str, rx: OTLPReceiver, env: dict[str, str]) -> AgentProc:
    return AgentProc(
        ring,
        home,
        "--endpoint",
        rx.url,
        "--local-copy",
        env={"OTEL_METRIC_EXPORT_INTERVAL": "200", **env},
    )


def delivered(rx: OTLPReceiver, agent: AgentProc, producers: int) -> None:
    """Until every producer's logs, spans, events and counter reached the receiver."""
    assert rx.wait_for(
        lambda r: len(seqs(r)) == N and sum(seqs(r).values()) == N * producers, 60
    ), agent.output()[-3000:]
    assert rx.wait_for(lambda r: len(r.spans()) == producers, 30), agent.output()[-3000:]
    assert rx.wait_for(lambda r: any(m.name == "calls" for _a, m in r.metrics()), 30)


def test_secrets_never_reach_the_receiver_and_status_counts_them(
    env_clean: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    run_producer(agent_ring, N, "a")
    run_producer(agent_ring, N, "b")
    agent = run_agent(
        env_clean, agent_ring, receiver, {"EMP_FASTBUF_REDACT": "session_id,*_pin,!token_count"}
    )
    try:
        delivered(receiver, agent, 2)
        want = {"urls": 2 * N, "headers": 2 * N}

        def counted(sink: str) -> dict[str, int]:
            got = (status_json(agent).get(sink) or {}).get("redacted") or {}
            return {k: got.get(k, 0) for k in want}

        deadline = time.monotonic() + 30
        while counted("export") != want or counted("store") != want:
            assert time.monotonic() < deadline, (counted("export"), counted("store"))
            time.sleep(0.1)
        status = status_json(agent)
        human = fastbuf_cli(env_clean, "status", "--ring", agent_ring)
    finally:
        assert agent.stop() == 0

    # Nothing secret on the wire, and every record's other content intact.
    assert SECRET.encode() not in wire(receiver)
    logs = [
        (res, attrs_dict(rec.attributes), rec.body.string_value) for res, rec in receiver.logs()
    ]
    assert len(logs) == 2 * N + 2  # and the two job.done events
    res, attrs, body = next(item for item in logs if "seq" in item[1])
    assert res["db.password"] == MARKER and res["team"] == "a"
    assert attrs["api_key"] == MARKER
    assert attrs["dsn"] == f"postgres://{MARKER}@db.internal:5432/jobs"
    assert body == f"calling the API with Authorization: {MARKER}"
    span = attrs_dict(receiver.spans()[0][1].attributes)
    assert span["token"] == span["session_id"] == span["card_pin"] == MARKER
    assert span["token_count"] == 7  # holds the word "token", but is kept by "!token_count"
    events = [a for _r, a, _b in logs if "cookie" in a]
    assert [e["cookie"] for e in events] == [MARKER, MARKER]
    points = [
        attrs_dict(p.attributes)
        for _a, m in receiver.metrics()
        if m.name == "calls"
        for p in m.sum.data_points
    ]
    assert points and all(p["secret"] == MARKER for p in points)

    # Nor in the store, which has every record.
    dump = store_dump(env_clean)
    assert SECRET not in dump
    assert dump.count(f"postgres://{MARKER}@db.internal") == 2 * N

    # Status: per sink, at least one value per key-matched attribute (2 per log, 5 per
    # span and its event, 1 per metric record, the resource once per batch).
    for sink in ("export", "store"):
        counts = status[sink]["redacted"]
        assert counts["urls"] == counts["headers"] == 2 * N
        assert counts["attributes"] >= 2 * N + 2 * 5
    assert status["agent"]["config"]["redaction"]["added"] == ["session_id"]
    assert human.returncode == 0, human.stderr
    line = next(ln for ln in human.stdout.splitlines() if ln.startswith("redaction"))
    assert "on (11 key words; added: session_id; patterns: *_pin; kept: token_count)" in line
    assert f"{2 * N} URL credentials, {2 * N} Authorization values" in line
    assert "before export" in line and "before the store" in line


def test_redaction_off_lets_secrets_through(
    env_clean: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    run_producer(agent_ring, N, "off")
    agent = run_agent(env_clean, agent_ring, receiver, {"EMP_FASTBUF_REDACT": "off"})
    try:
        delivered(receiver, agent, 1)
        human = fastbuf_cli(env_clean, "status", "--ring", agent_ring)
        status = status_json(agent)
    finally:
        assert agent.stop() == 0
    sent = wire(receiver)
    assert f"{SECRET}-key-{N - 1}".encode() in sent
    assert f"bob:{SECRET}-pw-0@".encode() in sent
    assert f"Bearer {SECRET}-hdr-0".encode() in sent
    assert MARKER.encode() not in sent
    assert f"{SECRET}-key-0" in store_dump(env_clean)
    assert status["export"]["redacted"] is None and status["store"]["redacted"] is None
    assert "redaction: off" in human.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a,,b", "an entry is empty"),
        ("off,token", "'off' turns redaction off and stands alone"),
        ("!a*", "'!' takes one key, not a pattern"),
        ("x" * 300, "longer than 255 bytes"),
    ],
)
def test_bad_redact_values_stop_the_agent_at_start(
    env_clean: Path, agent_ring: str, value: str, message: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", agent_ring],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean), "EMP_FASTBUF_REDACT": value},
    )
    assert out.returncode == 2, out.stderr
    assert "EMP_FASTBUF_REDACT" in out.stderr and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
