"""``fastbuf status`` as a real process: with a real agent whose endpoint refuses its token,
the human view shows the endpoint (without its query string), the last export error, the
dead letters waiting and the records producers dropped, and never the token; with no
agent (nothing at all, only a ring, or the status file of an agent that is gone) it
exits 3."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf import Ring
from emp_fastbuf.agent.status import shown_url
from emp_fastbuf.testing.receiver import OTLPReceiver, Response
from support.agent import AgentProc

TOKEN = "auth_st4tus-t0ken-never-shown-99"
QUERY_SECRET = "qs3cret-in-the-url"

# Fills a one-lane ring with no agent draining it: the rest of the records are dropped.
OVERFLOW = r"""
import json, sys
import emp_fastbuf as fastbuf
fastbuf.configure(service="overflow-svc", worker_id="w-over", ring=sys.argv[1], agent="external")
for i in range(3000):
    fastbuf.emit("tick", seq=i)
print(json.dumps(fastbuf.stats()["dropped_by_reason"]))
"""


def status(home: Path, ring: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "status", "--ring", ring, *args],
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def sidecars(home: Path) -> int:
    return len(list((home / "dead-letter").glob("*.json")))


def test_the_human_view_shows_endpoint_last_error_dead_letters_and_drops(
    env_clean: Path, receiver: OTLPReceiver, ring_name: str
) -> None:
    home = env_clean
    Ring.create(ring_name, 8192, lanes=1, max_record=1024).close()
    overflow = subprocess.run(
        [sys.executable, "-c", OVERFLOW, ring_name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
    )
    assert overflow.returncode == 0, overflow.stderr
    dropped = json.loads(overflow.stdout)["full"]
    assert dropped > 1000
    receiver.default = Response(401, body=f"token {TOKEN} is not valid".encode())
    endpoints = {
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT": (
            f"{receiver.url}/v1/{signal}?key={QUERY_SECRET}"
        )
        for signal in ("traces", "metrics", "logs")
    }
    agent = AgentProc(ring_name, home, env={**endpoints, "DASH0_AUTH_TOKEN": TOKEN})
    status_file = home / f"status-{ring_name}.json"

    def exported_error() -> dict[str, Any]:
        try:
            return json.loads(status_file.read_text()).get("export") or {}
        except (OSError, ValueError):
            return {}

    try:
        deadline = time.monotonic() + 60
        while not (sidecars(home) and exported_error().get("last_error")):
            assert time.monotonic() < deadline, "the refusal did not reach the status file"
            time.sleep(0.1)
        before = sidecars(home)
        human = status(home, ring_name)
        js = status(home, ring_name, "--json")
        after = sidecars(home)
    finally:
        assert agent.stop() == 0, agent.output()
    assert human.returncode == 0, human.stdout + human.stderr
    lines = human.stdout.splitlines()
    assert f"endpoint: {receiver.url} (traces, metrics, logs)" in lines
    (error,) = [ln for ln in lines if ln.startswith("last export error")]
    assert "HTTP 401: token <redacted> is not valid" in error
    (dead,) = [ln for ln in lines if ln.startswith("dead letters: ")]
    shown = int(re.match(r"dead letters: (\d+) in ", dead).group(1))  # type: ignore[union-attr]
    assert before <= shown <= after and str(home / "dead-letter") in dead
    assert "fastbuf deadletter list" in dead
    drops = f"dropped: {dropped} records (ring full {dropped}, no lane 0, too large 0)"
    assert f"{drops}; spool evicted 0" in lines
    assert "overflow-svc" in human.stdout  # the producer that dropped them
    for out in (human, js):
        assert TOKEN not in out.stdout + out.stderr
        assert QUERY_SECRET not in out.stdout + out.stderr
    st = json.loads(js.stdout)
    assert js.returncode == 0 and st["running"] is True
    assert st["endpoints"] == {s: f"{receiver.url}/v1/{s}" for s in ("traces", "metrics", "logs")}
    assert before <= st["dead_letter"]["count"] <= after
    assert st["dropped"] == {
        "records": dropped,
        "full": dropped,
        "no_lane": 0,
        "too_large": 0,
        "evicted": 0,
    }
    assert "HTTP 401" in st["export"]["last_error"] and st["export"]["last_error_ns"] > 0

    # The agent is gone: its last status is shown, and the exit is 3.
    gone = status(home, ring_name)
    assert gone.returncode == 3, gone.stdout + gone.stderr
    assert gone.stdout.startswith(f"no agent runs (pid {agent.proc.pid} is gone")
    assert "dead letters: " in gone.stdout and f"dropped: {dropped} records" in gone.stdout
    gone_js = status(home, ring_name, "--json")
    assert gone_js.returncode == 3 and json.loads(gone_js.stdout)["running"] is False


def test_no_agent_at_all_is_exit_3(fastbuf_home: Path, ring_name: str) -> None:
    human = status(fastbuf_home, ring_name)
    assert human.returncode == 3
    assert f"no agent runs: no ring {ring_name!r} and no agent status" in human.stderr
    assert human.stdout.startswith("no agent runs\n")
    js = status(fastbuf_home, ring_name, "--json")
    assert js.returncode == 3
    st = json.loads(js.stdout)
    assert st["running"] is False and st["agent"] == {"alive": False, "ring": ring_name}
    assert st["dead_letter"]["count"] == 0 and st["dropped"]["records"] == 0


def test_a_ring_without_an_agent_is_exit_3(fastbuf_home: Path, ring_name: str) -> None:
    Ring.create(ring_name, 1 << 20).close()
    human = status(fastbuf_home, ring_name)
    assert human.returncode == 3 and human.stderr == ""
    assert human.stdout.startswith("no agent runs\n") and "ring: written 0" in human.stdout
    js = status(fastbuf_home, ring_name, "--json")
    st = json.loads(js.stdout)
    assert js.returncode == 3 and st["running"] is False and st["ring"]["name"] == ring_name


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ingress.example.com:4318/v1/logs", "https://ingress.example.com:4318/v1/logs"),
        ("https://u:pw@h.example/v1/logs?api_key=s3cr3t#frag", "https://h.example/v1/logs"),
        ("http://<redacted>@h:4318/otlp/v1/traces?<redacted>", "http://h:4318/otlp/v1/traces"),
        ("http://[::1]:4318/v1/metrics", "http://[::1]:4318/v1/metrics"),
        ("ftp://h/x", "(unreadable)"),
        ("http://h:99999/", "(unreadable)"),
        (42, "(unreadable)"),
        (None, None),
    ],
)
def test_endpoints_are_shown_without_credentials(url: object, shown: str | None) -> None:
    assert shown_url(url) == shown
